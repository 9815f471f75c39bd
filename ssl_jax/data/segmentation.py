"""Semantic segmentation folders: image / label pairs for the dense evaluation.

    DIR/classes.txt                          optional: one class name per line, id = line index
    DIR/<split>/images/<stem>.jpg|.jpeg|.png RGB images
    DIR/<split>/labels/<stem>.png            8-bit label maps, values 0..C-1 and 255 = void (ignored)

ADE20k's and CamVid's layout (`/work/shared/data/camvid` is exactly this); image and label share
the stem, and every image needs its label. DIR may be a URL (gs://...): files are listed and read
through `etils.epath`, decoded with PIL.

Reading streams: `pairs` yields fixed-size batches read file by file, so a split is never held
as images in memory; the evaluation keeps only what it computes from them (the frozen patch
features and the labels at the protocol's resolution, `ssl_jax/eval/segmentation.py`).
The label maps of ADE20k's SceneParsing release (0 = "other", classes 1..150) are read with
mmseg's `reduce_zero_label` (0 -> 255, c -> c - 1; the protocol's `reduce_zero_label`).

No tfds dataset carries semantic masks in this layout: tfds' `voc/2012` has boxes only,
`scene_parse150` holds ADE20k's *instance* annotations (class and instance ids in RGB) and
`oxford_iiit_pet`'s masks are foreground / background / border trimaps; a tfds name is refused.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from ssl_jax import paths
from ssl_jax.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOID = 255


class Split(NamedTuple):
    """The sorted image and label files of one split (same stems, same order)."""

    images: list
    labels: list


def is_segmentation_folder(directory: str) -> bool:
    """Whether `directory` has a <split>/images/ and <split>/labels/ pair (this module's layout)."""
    root = paths.resolve(directory)
    return root.is_dir() and any((s / "images").is_dir() and (s / "labels").is_dir()
                                 for s in root.iterdir() if s.is_dir())


def list_split(directory: str, split: str) -> Split:
    """The pairs of DIR/<split>/; a missing folder, an image without its label (or the reverse)
    or a tfds name is one line naming the fix."""
    root = paths.resolve(directory)
    if not root.is_dir():
        raise UserError(f"segmentation data {directory!r} is not a directory: give a folder of "
                        f"<split>/images/ and <split>/labels/ (tfds has no semantic-mask dataset in this layout; "
                        f"see ssl_jax/data/segmentation.py)")
    images_dir, labels_dir = root / split / "images", root / split / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise UserError(f"{root / split} needs images/ and labels/ sub-folders (images/<stem>.jpg|png, "
                        f"labels/<stem>.png with values 0..C-1 and 255 = void)")
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() == ".png"}
    if not images or images.keys() != labels.keys():
        missing = sorted(images.keys() ^ labels.keys())[:3] or ["(no images)"]
        raise UserError(f"{root / split}: images/ and labels/ must hold the same stems, one PNG label per image; "
                        f"unpaired: {', '.join(missing)}")
    stems = sorted(images)
    return Split([images[s] for s in stems], [labels[s] for s in stems])


def class_names(directory: str, num_classes: int = 0) -> list[str]:
    """DIR/classes.txt's names (one per line), else '0', '1', ... up to `num_classes`; a file with
    another count than a given `num_classes`, or neither, is an error."""
    path = paths.resolve(directory) / "classes.txt"
    if path.exists():
        names = [n.strip() for n in path.read_text().splitlines() if n.strip()]
        if num_classes and len(names) != num_classes:
            raise UserError(f"{path} names {len(names)} classes but the protocol says num_classes={num_classes}")
        return names
    if not num_classes:
        raise UserError(f"{directory} has no classes.txt: add one (a class name per line) or set "
                        f"--protocol.segmentation.num_classes")
    return [str(c) for c in range(num_classes)]


def read_pair(image_path, label_path, size: tuple[int, int],
              reduce_zero_label: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [H, W, 3] resized bilinearly to size = (H, W), label uint8 [H, W] resized
    nearest (the reference's `Resize`: bilinear image, nearest label), label uint8 [h, w] as stored;
    with `reduce_zero_label` 0 becomes void and c becomes c - 1, mmseg's LoadAnnotations)."""
    with image_path.open("rb") as f:
        image = Image.open(f).convert("RGB")
    with label_path.open("rb") as f:
        label = Image.open(f)
        label.load()
    if label.mode not in ("L", "P") or label.size != image.size:
        raise UserError(f"{label_path}: a label map is one 8-bit channel the size of its image {image.size}; "
                        f"got mode {label.mode} size {label.size}")
    height, width = size
    resized = np.asarray(image.resize((width, height), Image.BILINEAR))
    labels = np.asarray(label.resize((width, height), Image.NEAREST)), np.asarray(label)
    if reduce_zero_label:
        labels = tuple(np.where((y == 0) | (y == VOID), VOID, y - 1).astype(np.uint8) for y in labels)
    return (resized,) + labels


def pairs(split: Split, size: tuple[int, int], batch_size: int, limit: int = 0,
          reduce_zero_label: bool = False) -> Iterator[tuple]:
    """Batches (images uint8 [b, H, W, 3], labels uint8 [b, H, W] at size, stored labels: a list of
    b arrays [h, w]) of the first `limit` pairs (0: all), read as they are needed."""
    count = min(limit, len(split.images)) if limit else len(split.images)
    for start in range(0, count, batch_size):
        end = min(start + batch_size, count)
        read = [read_pair(i, l, size, reduce_zero_label) for i, l in zip(split.images[start:end],
                                                                         split.labels[start:end])]
        yield np.stack([r[0] for r in read]), np.stack([r[1] for r in read]), [r[2] for r in read]
