"""Every file a run reads or writes goes through here, on any filesystem.

Paths are `etils.epath.Path`s, the path type orbax uses: a local path, or a URL such as
gs://bucket/run (read and written through tf.io.gfile; orbax writes the checkpoint
arrays with TensorStore's GCS driver and, for GCS, needs `google-cloud-storage`).
Local paths are made absolute (orbax requires it); URLs are kept as they are.
"""
from __future__ import annotations

import json
import os
import sys

from etils import epath

from ssl_jax.errors import UserError


def is_url(path) -> bool:
    """Whether `path` names a remote filesystem (gs://, s3://, ...) rather than a local one."""
    return "://" in os.fspath(path)


def resolve(path) -> epath.Path:
    """`path` as an epath.Path: a URL as given, a local path made absolute."""
    if not is_url(path):
        return epath.Path(os.path.abspath(os.fspath(path)))
    try:
        return epath.Path(path)
    except KeyError:  # epath's registry of URL schemes has no entry for this one
        raise UserError(f"{os.fspath(path)}: unknown filesystem {os.fspath(path).split('://')[0]}://; "
                        f"pass a local path or a gs://, s3://, az:// or hf:// URL") from None


def filesystem_errors() -> tuple[type[Exception], ...]:
    """What creating or writing a path that cannot be written raises: OSError locally (and where epath
    translates its backend's errors), tf.errors.OpError from gfile (epath's backend for URLs when
    tensorflow is installed: no credentials, no access, a scheme tensorflow lacks), ImportError from
    fsspec (gcsfs or s3fs not installed), NotImplementedError (an operation a backend lacks)."""
    errors = (OSError, ImportError, NotImplementedError)
    tf = sys.modules.get("tensorflow")  # gfile imported it if it ran; never imported here
    return errors + (tf.errors.OpError,) if tf else errors


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
