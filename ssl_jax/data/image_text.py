"""Image-caption pairs for the image-text methods (`config.dataset.name = "image_text"`).

Layouts under DATA = config.dataset.data_dir (local or a URL; listed and read with tf.io.gfile):

    DATA/<split>/**/{key}.jpg + {key}.txt    img2dataset's "files" layout (flat or in shard folders);
                                             the .txt holds the image's captions, one a line
    DATA/<split>/*.tar                       webdataset shards of the same pairs (members {key}.jpg,
                                             {key}.txt), read with Python's tarfile into host memory
    config.dataset.tfds_name = "coco_captions"  a tfds image-caption dataset (`tfds_pairs`: its
                                             "image" and "captions"/"text" features), encoded images
                                             held in host memory (sized for Flickr/COCO-Karpathy)

A split name may carry a slice of the sorted keys: "train[:64]", "test[100:200]".

    batch = {"views": {"global": [B, G, S, S, 3]}, "text": [B, L] int32}

Every batch is a pure function of (seed, step), as `ssl_jax.data.pipeline.train_batches`: epoch e
visits this process's pairs in an order seeded by (seed, e); the views are `augment.multi_crop`'s,
seeded by (seed, process, epoch, index); one caption per image per step is drawn from the same key
folded with CAPTION_STREAM. Captions are tokenised once, when the split is read (`ssl_jax.text`).
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
import tarfile
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssl_jax.data import augment, folder
from ssl_jax.data.pipeline import data_dir, eval_preprocess
from ssl_jax.errors import UserError
from ssl_jax.text import tokenizer as tokenizer_lib

CAPTION_STREAM = 1  # folded into an example's augmentation key to draw its caption
_SLICE = re.compile(r"^(?P<name>[^\[]+)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """One split: `images` [N] file paths (encoded=False) or encoded bytes, `captions` [N] lists of strings."""

    images: tuple
    captions: tuple[tuple[str, ...], ...]
    encoded: bool

    def __len__(self) -> int:
        return len(self.images)

    def tokens(self, tokenizer, text_cfg) -> tuple[np.ndarray, np.ndarray]:
        """Every caption tokenised: ([N, C, L] int32, C = the most captions of an image, PAD rows after an
        image's own; counts [N] int32)."""
        counts = np.asarray([len(c) for c in self.captions], np.int32)
        out = np.zeros((len(self), max(counts.max(), 1), text_cfg.max_len), np.int32)
        flat = tokenizer.encode([text for caps in self.captions for text in caps], text_cfg.max_len,
                                text_cfg.sticky_eos)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for i, (start, count) in enumerate(zip(starts, counts)):
            out[i, :count] = flat[start:start + count]
        return out, counts


def _parse_split(split: str) -> tuple[str, slice]:
    match = _SLICE.match(split)
    if not match:
        raise UserError(f"cannot read split {split!r}; write e.g. 'train' or 'train[:1000]'")
    to_int = lambda s: int(s) if s else None  # noqa: E731
    return match["name"], slice(to_int(match["start"]), to_int(match["stop"]))


def _read_text(data: bytes) -> tuple[str, ...]:
    return tuple(line.strip() for line in data.decode("utf-8").splitlines() if line.strip())


def _files_pairs(directory: str) -> Pairs | None:
    """img2dataset's files layout: {key}.jpg beside {key}.txt, sorted by path."""
    images = sorted(tf.io.gfile.glob(posixpath.join(directory, "*.jpg"))
                    + tf.io.gfile.glob(posixpath.join(directory, "*", "*.jpg")))
    if not images:
        return None
    missing = [p for p in images[:1] + images[-1:] if not tf.io.gfile.exists(p[:-4] + ".txt")]
    if missing:
        raise UserError(f"{missing[0]} has no caption file {missing[0][:-4]}.txt (img2dataset's files layout)")
    captions = tuple(_read_text(tf.io.gfile.GFile(p[:-4] + ".txt", "rb").read()) for p in images)
    return Pairs(tuple(images), captions, encoded=False)


def _tar_pairs(directory: str) -> Pairs | None:
    """webdataset shards: each {key}.jpg with its {key}.txt, shards and keys in sorted order."""
    shards = sorted(tf.io.gfile.glob(posixpath.join(directory, "*.tar")))
    if not shards:
        return None
    images, captions = [], []
    for shard in shards:
        members = {}
        with tf.io.gfile.GFile(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    members[member.name] = tar.extractfile(member).read()
        for name in sorted(n for n in members if n.endswith(".jpg")):
            if name[:-4] + ".txt" not in members:
                raise UserError(f"{shard}: {name} has no {name[:-4]}.txt member (webdataset pairs)")
            images.append(members[name])
            captions.append(_read_text(members[name[:-4] + ".txt"]))
    return Pairs(tuple(images), tuple(captions), encoded=True)


def coco_example(example: dict) -> tuple[bytes, tuple[str, ...]]:
    """tfds coco_captions' features -> (encoded image, captions): 'image' and 'captions'/'text'."""
    texts = example["captions"]["text"]
    return example["image"], tuple(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts)


def tfds_pairs(dataset_cfg, split: str) -> Pairs:
    """A tfds image-caption dataset (config.dataset.tfds_name, e.g. coco_captions), images left encoded."""
    builder = tfds.builder(dataset_cfg.tfds_name, data_dir=data_dir(dataset_cfg))
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    images, captions = zip(*(coco_example(ex) for ex in tfds.as_numpy(ds)))
    return Pairs(images, captions, encoded=True)


def read_split(dataset_cfg, split: str) -> Pairs:
    """All pairs of `split` (every process's), in a fixed order; a clear error when there are none."""
    if dataset_cfg.get("tfds_name"):
        return tfds_pairs(dataset_cfg, split)
    name, part = _parse_split(split)
    directory = posixpath.join(dataset_cfg.data_dir, name)
    pairs = _files_pairs(directory) or _tar_pairs(directory)
    if pairs is None:
        raise UserError(f"no image-caption pairs in {directory} ({{key}}.jpg + {{key}}.txt files or .tar shards); "
                        f"check --config.dataset.data_dir and the split name")
    return Pairs(pairs.images[part], pairs.captions[part], pairs.encoded)


def num_examples(dataset_cfg, split: str) -> int:
    return len(read_split(dataset_cfg, split))


def _image_reader(pairs: Pairs):
    """index (tf int64 scalar) -> the image's encoded bytes."""
    if not pairs.encoded:
        paths = tf.constant(list(pairs.images))
        return lambda i: tf.io.read_file(tf.gather(paths, i))
    images = pairs.images
    return lambda i: tf.ensure_shape(tf.numpy_function(lambda j: images[int(j)], [i], tf.string), [])


def run_tokenizer(config, workdir: str | None):
    """The run's tokenizer (`ssl_jax.text.tokenizer.for_run`), trained on the train split's captions if needed."""
    def captions():
        return [t for caps in read_split(config.dataset, config.dataset.train_split).captions for t in caps]
    return tokenizer_lib.for_run(config.text, workdir, captions)


def train_batches(config, start_step: int, steps_per_epoch: int, local_batch: int,
                  workdir: str | None = None) -> Iterator[dict]:
    """Yields per-process batches {'views': {'global': [b, G, S, S, 3], ...}, 'text': [b, L] int32}."""
    dataset_cfg = config.dataset
    pairs = read_split(dataset_cfg, dataset_cfg.train_split)
    if len(pairs) < config.batch_size:
        raise UserError(f"split {dataset_cfg.train_split!r} has {len(pairs)} image-caption pairs, fewer than one "
                        f"batch of {config.batch_size}; check --config.dataset.train_split")
    tokens, counts = pairs.tokens(run_tokenizer(config, workdir), config.text)
    tokens, counts = tf.constant(tokens), tf.constant(counts)
    read = _image_reader(pairs)
    process = jax.process_index()
    base = tf.data.Dataset.range(len(pairs)).shard(jax.process_count(), process)

    def epoch_dataset(epoch):
        epoch = tf.cast(epoch, tf.int64)
        ds = base.shuffle(len(pairs), seed=config.seed * 1_000_003 + epoch, reshuffle_each_iteration=True)
        return ds.repeat().take(steps_per_epoch * local_batch).enumerate().map(
            lambda index, i: (tf.stack([epoch, index]), i))

    def make_example(epoch_and_index, i):
        key = tf.stack([tf.constant(config.seed, tf.int64), tf.constant(process, tf.int64)])
        key = tf.random.experimental.stateless_fold_in(key, epoch_and_index[0])
        key = tf.random.experimental.stateless_fold_in(key, epoch_and_index[1])
        views, _ = augment.multi_crop(folder.decode(read(i)), key, config.augment)
        caption = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(key, CAPTION_STREAM),
                                              minval=0, maxval=tf.gather(counts, i), dtype=tf.int32)
        return {"views": views, "text": tf.gather(tf.gather(tokens, i), caption)}

    first_epoch, offset = divmod(start_step, steps_per_epoch)
    ds = epoch_dataset(first_epoch).skip(offset * local_batch)
    ds = ds.concatenate(tf.data.Dataset.range(first_epoch + 1, np.iinfo(np.int64).max).flat_map(epoch_dataset))
    ds = ds.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return iter(tfds.as_numpy(ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)))


def eval_pairs(config, split: str, tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retrieval's test set: images [N, S, S, 3] float32 (`pipeline.eval_preprocess`), every caption's
    tokens [M, L] int32 and the image each caption belongs to [M] int32."""
    pairs = read_split(config.dataset, split)
    read = _image_reader(pairs)
    ds = tf.data.Dataset.range(len(pairs)).map(
        lambda i: eval_preprocess(folder.decode(read(i)), config.eval, config.augment),
        num_parallel_calls=tf.data.AUTOTUNE)
    images = np.stack(list(tfds.as_numpy(ds)))
    tokens, counts = pairs.tokens(tokenizer, config.text)
    owner = np.repeat(np.arange(len(pairs), dtype=np.int32), counts)
    flat = np.concatenate([tokens[i, :c] for i, c in enumerate(counts)])
    return images, flat, owner
