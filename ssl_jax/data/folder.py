"""Images from a folder or from a list of files, labels optional (`config.dataset.name = "folder"`).

Layouts (DATA = config.dataset.data_dir, a local path or a URL such as gs://bucket/images;
everything is listed and read with tf.io.gfile):

    DATA/<split>/**/<image>            every image under the split's folder, flat or nested
    DATA/<split>/<class>/**/<image>    class sub-folders: label = position of <class> in sorted order
    <split> = lists/train.txt          a text file, one image path a line, relative to the file's
                                       folder or absolute (or a URL); the file itself is relative to
                                       DATA or absolute

A split is labelled when every one of its images lies in a class sub-folder (torchvision's
ImageFolder layout); otherwise, and for lists, its labels are -1 (pretraining needs none).
A tfds-style slice selects part of the sorted file list: "train[:1000]", "train[100:200]"; in
percent, the same share of each class's images (of all images when unlabelled), so that
"train[:80%]" and "train[80%:]" split every class: a class of n images gives images
[n * start // 100 : n * stop // 100] of its own, in sorted order.
Image files are those ending in IMAGE_EXTENSIONS (any case); other files are ignored.

`config.dataset.on_corrupt`: "error" (default) stops the run at the first batch holding an
image that does not decode, naming its files; "skip" decodes every image of the split once
when it is listed, names the ones that fail and leaves them out, so every batch is still a
pure function of (seed, step) and resuming stays exact.
"""
from __future__ import annotations

import dataclasses
import functools
import posixpath
import re

import tensorflow as tf

from ssl_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
ON_CORRUPT = ("error", "skip")
MAX_NAMED = 5  # files named in a message
_SLICE = re.compile(r"^(?P<name>.+?)\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\]$")


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image -> uint8 [H, W, 3] (grayscale and RGBA become RGB; the first frame of a GIF)."""
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def _named(files) -> str:
    return ", ".join(files[:MAX_NAMED]) + (f" (and {len(files) - MAX_NAMED} more)" if len(files) > MAX_NAMED else "")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's images in a fixed (sorted) order: `files` [N] paths, `labels` [N] (-1: unlabelled)."""

    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]  # class sub-folder names, () when unlabelled

    @property
    def labelled(self) -> bool:
        return bool(self.classes)


class Folder:
    """The folder dataset of a `config.dataset` section (name "folder"); splits as the module docstring says."""

    def __init__(self, dataset_cfg):
        self.root = dataset_cfg.get("data_dir") or ""
        self.image_key, self.label_key = dataset_cfg.image_key, dataset_cfg.label_key
        self.on_corrupt = dataset_cfg.get("on_corrupt", "error")
        if self.on_corrupt not in ON_CORRUPT:
            raise UserError(f"config.dataset.on_corrupt={self.on_corrupt!r}; choose one of {ON_CORRUPT}")

    def split(self, split: str) -> Split:
        """The images (and labels) of `split`, listed once per process (cached)."""
        return _list_split(self.root, split, self.on_corrupt)

    def num_examples(self, split: str) -> int:
        return len(self.split(split).files)

    def dataset(self, split: str) -> tf.data.Dataset:
        """{image_key: path, label_key: int64 label, 'image/filename': path} per image, in the split's order.
        The image stays a path: `read` gives its bytes, so shuffling and skipping touch no file."""
        listed = self.split(split)
        return tf.data.Dataset.from_tensor_slices({self.image_key: list(listed.files),
                                                   self.label_key: tf.constant(listed.labels, tf.int64),
                                                   "image/filename": list(listed.files)})


def read(path: tf.Tensor) -> tf.Tensor:
    """An image's path -> its encoded bytes."""
    return tf.io.read_file(path)


def _join(directory: str, path: str) -> str:
    """`path` if absolute or a URL, else relative to `directory` (a local path or a URL)."""
    return path if "://" in path or path.startswith("/") else posixpath.join(directory, path)


@functools.lru_cache(maxsize=None)
def _list_split(root: str, split: str, on_corrupt: str) -> Split:
    match = _SLICE.match(split)
    name = match["name"] if match else split
    if name.endswith(".txt"):
        listed = _list_file(_join(root, name) if root else name)
    else:
        listed = _list_folder(root, name)
    if match:
        listed = _sliced(listed, match["start"], match["stop"], split)
    if on_corrupt == "skip":
        listed = _without_undecodable(listed, split)
    if not listed.files:
        raise UserError(f"split {split!r} of the folder dataset ({root or 'no data_dir'}) holds no images; check the "
                        f"split (config.dataset.train_split / config.eval.*_split) and its files")
    return listed


def _sliced(listed: Split, start: str, stop: str, split: str) -> Split:
    """`listed`[start:stop] (bounds as written, "" for none): images, or percent of each class's images."""
    if "%" not in start + stop:
        part = slice(int(start) if start else None, int(stop) if stop else None)
        return Split(listed.files[part], listed.labels[part], listed.classes)
    if "%" not in (start or "%") or "%" not in (stop or "%"):
        raise UserError(f"split {split!r}: give both bounds of a slice in percent or both in images")
    keep = []
    for label in sorted(set(listed.labels)):
        members = [i for i, own in enumerate(listed.labels) if own == label]
        bound = lambda b: len(members) * int(b[:-1]) // 100 if b else None  # noqa: E731
        keep += members[bound(start):bound(stop)]
    keep.sort()
    return Split(tuple(listed.files[i] for i in keep), tuple(listed.labels[i] for i in keep), listed.classes)


def _list_folder(root: str, name: str) -> Split:
    """Every image under ROOT/<name>, sorted; labelled by class sub-folder when every image has one."""
    if not root or not tf.io.gfile.isdir(root):
        raise UserError(f"config.dataset.name='folder' reads images from --config.dataset.data_dir, which is "
                        f"{'not set' if not root else repr(root) + ', not a readable directory'}; point it at the "
                        f"folder that holds <split>/ (images, or <class>/ folders of images) or a list file")
    directory = posixpath.join(root, name)
    if not tf.io.gfile.isdir(directory):
        found = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(posixpath.join(root, d)))
        raise UserError(f"the folder dataset has no split {name!r}: {directory} is not a directory (the folders in "
                        f"{root} are {found}); set config.dataset.train_split / config.eval.*_split to one of them, "
                        f"or to a .txt list of images")
    files = sorted(posixpath.join(parent, f) for parent, _, names in tf.io.gfile.walk(directory)
                   for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {directory}; put the images there or point "
                        f"--config.dataset.data_dir at the folder that holds <split>/")
    tops = [posixpath.relpath(f, directory).split("/") for f in files]
    if any(len(parts) == 1 for parts in tops):  # an image directly in the split's folder: no class folders
        return Split(tuple(files), (-1,) * len(files), ())
    classes = tuple(sorted({parts[0] for parts in tops}))
    index = {c: i for i, c in enumerate(classes)}
    return Split(tuple(files), tuple(index[parts[0]] for parts in tops), classes)


def _list_file(list_path: str) -> Split:
    """The images a text file lists (one path a line; blank lines ignored), in the file's order."""
    try:
        lines = tf.io.gfile.GFile(list_path).read().splitlines()
    except tf.errors.OpError as e:
        raise UserError(f"cannot read the image list {list_path} ({type(e).__name__}); check the split name (a .txt "
                        f"file relative to config.dataset.data_dir, or absolute)") from None
    files = [_join(posixpath.dirname(list_path), line.strip()) for line in lines if line.strip()]
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise UserError(f"{len(missing)} of the {len(files)} images listed in {list_path} do not exist: "
                        f"{_named(missing)}; fix the list (paths relative to its folder, or absolute)")
    return Split(tuple(files), (-1,) * len(files), ())


def _without_undecodable(listed: Split, split: str) -> Split:
    """`listed` less the files that do not read or decode (on_corrupt="skip"), which are printed by name."""
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(listed.files)), list(listed.files)))
    ds = ds.map(lambda i, path: (i, tf.shape(decode(read(path)))), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    good = {int(i) for i, _ in ds.ignore_errors().as_numpy_iterator()}
    bad = [f for i, f in enumerate(listed.files) if i not in good]
    if bad:
        print(f"skipping {len(bad)} image(s) of split {split!r} that do not decode (dataset.on_corrupt='skip'): "
              f"{_named(bad)}", flush=True)
    keep = sorted(good)
    return Split(tuple(listed.files[i] for i in keep), tuple(listed.labels[i] for i in keep), listed.classes)
