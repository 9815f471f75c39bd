"""Every file a run reads or writes goes through here, on any filesystem.

Paths are `etils.epath.Path`s, the path type orbax uses: a local path, or a URL such as
gs://bucket/run (read and written through tf.io.gfile; orbax writes the checkpoint
arrays with TensorStore's GCS driver and, for GCS, needs `google-cloud-storage`).
Local paths are made absolute (orbax requires it); URLs are kept as they are.
"""
from __future__ import annotations

import json
import os

from etils import epath


def is_url(path) -> bool:
    """Whether `path` names a remote filesystem (gs://, s3://, ...) rather than a local one."""
    return "://" in os.fspath(path)


def resolve(path) -> epath.Path:
    """`path` as an epath.Path: a URL as given, a local path made absolute."""
    return epath.Path(path if is_url(path) else os.path.abspath(os.fspath(path)))


def write_atomically(path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename, so a crash never leaves half a file."""
    path = resolve(path)
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    with tmp.open("w") as f:
        f.write(text)
        if not is_url(path):  # on disk before the rename (an object store writes it whole on close)
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


def read_json(path):
    """The JSON document at `path`."""
    return json.loads(resolve(path).read_text())
