"""Labelled, lightly augmented training batches for the probes and fine-tuning (imports tensorflow).

RandomResizedCrop (bicubic, the pre-training pipeline's `augment.random_resized_crop`) to
`config.eval.crop` + horizontal flip, normalised like the eval images: the train
transform of DINO's eval_linear.py and MAE's main_linprobe.py. With `rand_augment` (a timm
string: the fine-tuning protocol's `randaugment`) the flipped crop, rounded to uint8 as PIL's
resize returns it, goes through `ssl_jax.data.randaugment` before normalisation: timm's
`create_transform` order for MAE's main_finetune.py. Each epoch reshuffles with seed
(seed, epoch); each image's crop is a pure function of (seed, epoch, index).
"""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssl_jax import sharding
from ssl_jax.data import augment, folder, pipeline, randaugment


def augmented_batches(config, split: str, global_batch: int, scale: tuple[float, float], seed: int,
                      mesh, rand_augment: str = "", labels: np.ndarray | None = None) -> Iterator[dict]:
    """Endless global batches {'image' [B, crop, crop, 3], 'label' [B]} of `split`, sharded on the mesh;
    `rand_augment`: a timm RandAugment string ('' for none). `labels` [N, P] (N: the split's size, in
    its order) replaces the split's labels: image i is trained on once with each label labels[i, j] >= 0
    (-1: none), so a subset, or an image under several labels (self-training's pseudo-labels)."""
    ra_spec = randaugment.parse(rand_augment) if rand_augment else None
    # timm transforms_imagenet_train: img_mean=tuple([min(255, round(255 * x)) for x in mean]) fills geometric ops
    fill = tuple(min(255, round(255 * x)) for x in config.augment.mean)
    dataset_cfg = pipeline.eval_dataset(config)
    local_batch = sharding.check_global_batch(global_batch, mesh, field="protocol batch_size")
    builder = pipeline.get_builder(dataset_cfg)
    # this process's shard in a fixed order, still encoded (decoded after the images not trained on are left out)
    base = pipeline._process_split(builder, split, dataset_cfg.image_key, encoded=True)
    read = pipeline._reader(builder)
    if labels is not None:
        table = tf.constant(labels, tf.int32)

        def copies(ex):
            row = tf.gather(table, ex[pipeline.INDEX_KEY])
            chosen = tf.boolean_mask(row, row >= 0)
            return tf.data.Dataset.from_tensor_slices(chosen).map(lambda label: {**ex, dataset_cfg.label_key: label})

        base = pipeline._with_split_index(base, builder, split).flat_map(copies)
    mean, std = tf.constant(config.augment.mean), tf.constant(config.augment.std)
    size = config.eval.crop

    def epoch_dataset(epoch):
        ds = base.shuffle(dataset_cfg.shuffle_buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
        return ds.enumerate().map(lambda index, ex: (tf.stack([epoch, index]), ex))

    def prepare(epoch_and_index, ex):
        key = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(seed, tf.int64), tf.constant(jax.process_index(), tf.int64)]), epoch_and_index[0])
        crop_seed, flip_seed, ra_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(key, epoch_and_index[1]), 3))
        image = tf.image.convert_image_dtype(folder.decode(read(ex[dataset_cfg.image_key])), tf.float32)
        image = augment.random_resized_crop(image, crop_seed, size=size, scale=tuple(scale))
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if ra_spec is not None:
            pixels = tf.cast(tf.round(image * 255.0), tf.uint8)
            image = tf.cast(randaugment.rand_augment(pixels, ra_seed, **ra_spec, fill=fill), tf.float32) / 255.0
        return {"image": (image - mean) / std, "label": tf.cast(ex[dataset_cfg.label_key], tf.int32)}

    ds = tf.data.Dataset.range(np.iinfo(np.int64).max).flat_map(epoch_dataset)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return (sharding.to_global_batch(batch, mesh) for batch in tfds.as_numpy(ds))
