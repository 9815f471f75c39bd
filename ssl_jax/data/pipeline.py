"""tfds -> per-process shard -> multi-crop views -> per-process numpy batches.

Every training batch is a pure function of (seed, step): epoch e is the split in
the order of a shuffle seeded by (seed, e); a run that starts at step s skips to
its position inside its epoch *before* decoding (cheap: the records are still
encoded bytes), and each example's augmentation seed is derived from
(seed, process, epoch, index in epoch) with stateless TF random ops. So a resumed
run sees exactly the batches the uninterrupted run would have seen, and nothing
but the step has to be checkpointed for the data.

`config.dataset.name = "folder"` reads image files instead of a tfds dataset: a flat or
nested folder, class sub-folders when labels are wanted, or a text list of paths, on any
filesystem tf.io.gfile reads (`ssl_jax.data.folder` documents the layouts). An image that
cannot be decoded stops the run with a line naming its file (or its index), or is left out
with `dataset.on_corrupt="skip"` (folders).

Evaluation reads `eval_dataset(config)`: `config.eval.dataset` when its name is set (pretrain
on a folder, monitor kNN on tfds CIFAR-10), else the training dataset.

This module imports tensorflow; the train step does not.
"""
from __future__ import annotations

import os
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssl_jax.core.batch import batch_fields
from ssl_jax.data import augment, folder
from ssl_jax.errors import UserError, one_line

# Keep TensorFlow off any accelerator: it only feeds the host.
tf.config.set_visible_devices([], "GPU")


def data_dir(dataset_cfg) -> str | None:
    """config.dataset.data_dir, else $TFDS_DATA_DIR, else tfds' default (~/tensorflow_datasets)."""
    return dataset_cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or None


def get_builder(dataset_cfg):
    """The tfds builder of config.dataset.name, prepared (downloading it if allowed).

    With config.dataset.download (default) a dataset tfds can fetch itself (CIFAR-10)
    is downloaded and prepared once into the data dir; offline, or for datasets that
    need a manual download (ImageNet), the error says how to point tfds at a copy.
    """
    if dataset_cfg.name == "folder":
        return folder.Folder(dataset_cfg)
    directory = data_dir(dataset_cfg)
    try:
        builder = tfds.builder(dataset_cfg.name, data_dir=directory)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f"unknown tfds dataset name {dataset_cfg.name!r} (config.dataset.name); "
                        f"see `tfds.list_builders()` for the registered names") from None
    if tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        return builder
    where = directory or "tfds' default ~/tensorflow_datasets"
    fix = (f"Point tfds at a directory that holds {dataset_cfg.name}/<version>/ with "
           f"TFDS_DATA_DIR=/path/to/tfds or --config.dataset.data_dir=/path/to/tfds")
    if not dataset_cfg.get("download", True):
        raise UserError(f"dataset {dataset_cfg.name!r} is not prepared in {where} and "
                        f"config.dataset.download is off. {fix}.")
    if directory and not tf.io.gfile.isdir(directory):
        # An explicit data dir that does not exist is a typo far more often than a wish to
        # download there; failing at once also avoids minutes of retries when offline.
        raise UserError(f"the data dir {directory} (TFDS_DATA_DIR or config.dataset.data_dir) does "
                        f"not exist. {fix}, or create it to let tfds download {dataset_cfg.name!r} into it.")
    print(f"dataset {dataset_cfg.name!r} is not prepared in {where}: downloading it with tfds "
          f"(offline? {fix})", flush=True)
    try:
        builder.download_and_prepare()
    except Exception as e:  # network errors, manual-download datasets, ...
        raise UserError(f"dataset {dataset_cfg.name!r} is not prepared in {where} and could not be "
                        f"downloaded ({one_line(e)}). "
                        f"{fix}.") from None
    return builder


def num_examples(dataset_cfg, split: str, builder=None) -> int:
    """Number of examples in a split (all processes together); a clear error for an unknown split."""
    if dataset_cfg.name == "image_text":
        from ssl_jax.data import image_text

        return image_text.num_examples(dataset_cfg, split)
    builder = builder or get_builder(dataset_cfg)
    if isinstance(builder, folder.Folder):
        return builder.num_examples(split)
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        raise UserError(f"dataset {dataset_cfg.name!r} has no split {split!r}; its splits are "
                        f"{sorted(builder.info.splits)} (check config.dataset.train_split and config.eval.*_split)"
                        ) from None


def check_split(dataset_cfg, split: str, global_batch: int, field: str, builder=None) -> None:
    """Raises UserError when `split` cannot fill one global batch (empty split, wrong slice)."""
    count = num_examples(dataset_cfg, split, builder)
    if count < global_batch:
        raise UserError(f"split {split!r} of dataset {dataset_cfg.name!r} has {count} example(s), fewer than one "
                        f"batch of {global_batch}; check --config.{field} (and the dataset's files)")


def _process_split(builder, split: str, image_key: str = "image", encoded: bool = False) -> tf.data.Dataset:
    """This process's shard of `split`, in a fixed order, images decoded to uint8 [H, W, 3], or left as
    `encoded` references that `_reader(builder)` turns into bytes (a folder has no sub-splits: shard it)."""
    if isinstance(builder, folder.Folder):
        ds = builder.dataset(split).shard(jax.process_count(), jax.process_index())
        return ds if encoded else ds.map(lambda ex: {**ex, image_key: folder.decode(folder.read(ex[image_key]))})
    decoders = {image_key: tfds.decode.SkipDecoding()} if encoded else None
    return builder.as_dataset(split=tfds.split_for_jax_process(split), shuffle_files=False, decoders=decoders,
                              read_config=tfds.ReadConfig(try_autocache=False))


def _reader(builder):
    """What turns an encoded split's image field into the image's bytes: tfds records hold the bytes,
    a folder's hold the file's path (read as late as possible, after shuffling and skipping)."""
    return folder.read if isinstance(builder, folder.Folder) else tf.identity


def _name_of(example) -> tf.Tensor:
    """The example's file name where the dataset has one (a folder), else ''."""
    return example.get("image/filename", tf.constant(""))


def _naming_bad_images(batches: Iterator[dict], start_step: int, undecodable) -> Iterator[dict]:
    """Yields `batches`; a read or decode error becomes a UserError naming the files of that step's batch."""
    step = start_step
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise UserError(_bad_batch_message(step + 1, undecodable(step), e)) from None
        yield batch
        step += 1


def _bad_batch_message(step: int, bad: list[str], error: Exception) -> str:
    """One line: the undecodable files of the batch of `step` if any were found, else tf's own reason."""
    if bad:
        what = (f"cannot decode {len(bad)} image(s) of the batch of step {step}: {', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}; delete or replace them (JPEG/PNG/GIF/BMP)")
    else:
        what = f"reading the batch of step {step} failed ({one_line(error)})"
    return f"{what}, then run the same command again (checkpoints are untouched)"


INDEX_KEY = "_ssl_jax_index"  # the example's position in the train split (added when a batch field needs it)


def _with_split_index(ds: tf.data.Dataset, builder, split: str) -> tf.data.Dataset:
    """Adds INDEX_KEY: the example's position in the whole `split` (not just this process's shard),
    so it is the same in every epoch and for any number of processes."""
    count, process = jax.process_count(), jax.process_index()
    if isinstance(builder, folder.Folder):  # ds.shard(count, process): every count-th example
        position = lambda i: i * count + process  # noqa: E731
    else:  # tfds.split_for_jax_process: contiguous sub-splits
        offset = sum(builder.info.splits[s].num_examples for s in tfds.even_splits(split, n=count)[:process])
        position = lambda i: i + offset  # noqa: E731
    return ds.enumerate().map(lambda i, ex: {**ex, INDEX_KEY: position(i)})


def _labelled(index: tf.Tensor, fraction: float, seed: int) -> tf.Tensor:
    """Whether image `index` is in the labelled subset: a fixed pseudo-random `fraction` of the split
    (stateless in (seed, index), so the same images in every epoch, run and process count)."""
    draw = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64) + 7919, tf.cast(index, tf.int64)]))
    return draw < fraction


def labelled_only(dataset_cfg) -> bool:
    """Whether training reads the labelled subset alone (`dataset.labelled_only`: the supervised-only
    baseline of a semi-supervised run, on the same `labelled_fraction` of the split). An epoch keeps
    the whole split's length, so every schedule is the semi-supervised run's step for step; it
    passes over the labelled subset about 1 / labelled_fraction times, reshuffled each pass."""
    if not dataset_cfg.get("labelled_only", False):
        return False
    if dataset_cfg.get("labelled_fraction", 1.0) >= 1.0 or "label" not in tuple(dataset_cfg.get("fields", ())):
        raise UserError("dataset.labelled_only=True trains on the labelled subset of a semi-supervised split: "
                        "also set dataset.labelled_fraction below 1 and dataset.fields=('label',)")
    return True


def train_batches(config, start_step: int, steps_per_epoch: int, local_batch: int,
                  workdir: str | None = None) -> Iterator[dict]:
    """Yields per-process batches {'views': {'global': [b, G, S, S, 3], 'local': [b, L, s, s, 3]}}, plus
    'label' / 'index' [b] int32 when config.dataset.fields names them (`ssl_jax.core.batch`); image-caption
    data (`ssl_jax.data.image_text`, its tokenizer kept in `workdir`) adds 'text' [b, L] int32.

    The batch for step i depends only on (config.seed, i): see the module docstring.
    """
    dataset_cfg = config.dataset
    if dataset_cfg.name == "image_text":
        from ssl_jax.data import image_text

        return image_text.train_batches(config, start_step, steps_per_epoch, local_batch, workdir)
    builder = get_builder(dataset_cfg)
    check_split(dataset_cfg, dataset_cfg.train_split, config.batch_size, "dataset.train_split", builder)
    base = _process_split(builder, dataset_cfg.train_split, dataset_cfg.image_key, encoded=True)
    read = _reader(builder)
    fields = batch_fields(dataset_cfg)
    if fields:
        base = _with_split_index(base, builder, dataset_cfg.train_split)
    fraction = dataset_cfg.get("labelled_fraction", 1.0)
    if labelled_only(dataset_cfg):
        base = base.filter(lambda ex: _labelled(ex[INDEX_KEY], fraction, config.seed))
    examples_per_epoch = steps_per_epoch * local_batch
    process = jax.process_index()

    def extras(ex) -> dict:
        """The requested fields of one example; labels outside the labelled subset are -1."""
        out = {}
        if "label" in fields:
            label = tf.cast(ex[dataset_cfg.label_key], tf.int32)
            out["label"] = label if fraction >= 1.0 else tf.where(
                _labelled(ex[INDEX_KEY], fraction, config.seed), label, -1)
        if "index" in fields:
            out["index"] = tf.cast(ex[INDEX_KEY], tf.int32)
        return out

    def epoch_dataset(epoch):
        epoch = tf.cast(epoch, tf.int64)
        # A (filtered) shard shorter than the epoch wraps around in a fresh order (seeded, so a
        # resumed run skips to the same batch); a full shard is read once in the seed's order.
        ds = base.shuffle(dataset_cfg.shuffle_buffer, seed=config.seed * 1_000_003 + epoch,
                          reshuffle_each_iteration=True)
        ds = ds.repeat().take(examples_per_epoch).enumerate()
        return ds.map(lambda index, ex: (tf.stack([epoch, index]), ex[dataset_cfg.image_key], _name_of(ex),
                                         extras(ex)))

    def undecodable(step):
        """Names of the images of `step`'s batch that do not decode (eagerly, one by one)."""
        epoch, offset = divmod(step, steps_per_epoch)
        bad = []
        for epoch_and_index, image_bytes, name, _ in epoch_dataset(epoch).skip(offset * local_batch).take(local_batch):
            try:
                folder.decode(read(image_bytes))
            except tf.errors.OpError:
                bad.append(name.numpy().decode() or f"example {int(epoch_and_index[1])} of epoch {epoch}")
        return bad

    def make_views(epoch_and_index, image_bytes, name, example_fields):
        del name
        key = tf.stack([tf.constant(config.seed, tf.int64), tf.constant(process, tf.int64)])
        key = tf.random.experimental.stateless_fold_in(key, epoch_and_index[0])
        key = tf.random.experimental.stateless_fold_in(key, epoch_and_index[1])
        views, _ = augment.multi_crop(folder.decode(read(image_bytes)), key, config.augment)
        return {"views": views, **example_fields}

    first_epoch, offset = divmod(start_step, steps_per_epoch)
    ds = epoch_dataset(first_epoch).skip(offset * local_batch)
    ds = ds.concatenate(tf.data.Dataset.range(first_epoch + 1, np.iinfo(np.int64).max).flat_map(epoch_dataset))
    ds = ds.map(make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return _naming_bad_images(iter(tfds.as_numpy(ds)), start_step, undecodable)


def eval_preprocess(image: tf.Tensor, eval_cfg, augment_cfg) -> tf.Tensor:
    """uint8 [H, W, 3] -> normalised float32 [crop, crop, 3]: bicubic resize of the
    short side to `eval.resize`, then a central crop of `eval.crop` (DINO's kNN eval:
    Resize(256, bicubic) + CenterCrop(224) at ImageNet scale)."""
    image = tf.image.convert_image_dtype(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = eval_cfg.resize / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.clip_by_value(tf.image.resize(image, new_shape, method="bicubic"), 0.0, 1.0)
    image = tf.image.resize_with_crop_or_pad(image, eval_cfg.crop, eval_cfg.crop)
    return (image - tf.constant(augment_cfg.mean)) / tf.constant(augment_cfg.std)


def eval_dataset(config) -> ml_collections.ConfigDict:
    """The `dataset` section evaluation reads: config.eval.dataset when its name is set, else config.dataset.

    config.eval.dataset holds name, data_dir, image_key, label_key and num_classes (0: the
    number of class folders of a folder's eval.train_split); the rest follows config.dataset.
    """
    own = config.eval.get("dataset")
    if not own or not own.get("name"):
        return config.dataset
    return ml_collections.ConfigDict({**config.dataset.to_dict(), **own.to_dict(), "on_corrupt": "error"})


def eval_num_classes(config) -> int:
    """Classes of the eval dataset: a folder's class sub-folders, else its num_classes (or config.dataset's)."""
    dataset_cfg = eval_dataset(config)
    builder = get_builder(dataset_cfg)
    if isinstance(builder, folder.Folder):
        return len(builder.split(config.eval.train_split).classes)
    return dataset_cfg.get("num_classes") or config.dataset.num_classes


def knn_off_reason(config) -> str | None:
    """Why the kNN evaluation cannot run (the eval dataset is a folder without class sub-folders), or None
    after checking its splits. Raises UserError for a missing or empty split (before training starts)."""
    dataset_cfg = eval_dataset(config)
    builder = get_builder(dataset_cfg)
    if isinstance(builder, folder.Folder):
        for field in ("train_split", "test_split"):  # the train split first: a flat folder may have no other
            if not builder.split(config.eval[field]).labelled:
                return (f"split {config.eval[field]!r} (eval.{field}) of the folder dataset has no class sub-folders "
                        f"(no labels); to monitor kNN set e.g. --config.eval.dataset.name=cifar10 "
                        f"--config.eval.train_split='train[:10000]' --config.eval.test_split=test, or eval splits "
                        f"with <class>/ folders")
        train, test = builder.split(config.eval.train_split), builder.split(config.eval.test_split)
        if train.classes != test.classes:
            raise UserError(f"the kNN splits {config.eval.train_split!r} and {config.eval.test_split!r} have different "
                            f"class folders ({len(train.classes)} and {len(test.classes)}); give both the same ones")
    for field in ("train_split", "test_split"):
        check_split(dataset_cfg, config.eval[field], 1, f"eval.{field}", builder)
    return None


def eval_batches(config, split: str, local_batch: int, num_batches: int, raw: bool = False) -> Iterator[dict]:
    """Yields exactly `num_batches` per-process batches {'image', 'label', 'mask'} over `split` of
    `eval_dataset(config)`.

    The last batches are padded (mask 0) so every process yields the same count.
    With raw=True images stay uint8 at their stored size (for the raw-pixel baseline).
    """
    dataset_cfg = eval_dataset(config)
    builder = get_builder(dataset_cfg)
    ds = _process_split(builder, split, dataset_cfg.image_key)

    def prepare(ex):
        image = ex[dataset_cfg.image_key]
        if not raw:
            image = eval_preprocess(image, config.eval, config.augment)
        return {"image": image, "label": tf.cast(ex[dataset_cfg.label_key], tf.int32), "mask": tf.constant(1, tf.int32)}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat()
    ds = ds.concatenate(padding).take(num_batches * local_batch)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))
