"""On-device batch augmentations with soft targets: timm's Mixup/CutMix (MAE fine-tuning),
the instance-discrimination CutMix of Cao et al. (2022), label smoothing and random erasing.

Pure jax.numpy on normalised images [B, H, W, C]; every draw comes from the caller's rng, so a
step stays a function of (seed, step). One lambda and one box per batch (timm's mode='batch').

    targets = smoothed_one_hot(labels, C, s)            (1 - s + s / C) on the label, s / C elsewhere
    mixup:    x <- lam x + (1 - lam) x[partner],  targets <- lam t + (1 - lam) t[partner]
    cutmix:   x[box] <- x[partner][box], lam <- 1 - box area / image area
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def smoothed_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """labels [B] -> [B, C] float32: timm's `one_hot(..., on_value=1 - s + s / C, off_value=s / C)`."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """timm's SoftTargetCrossEntropy: mean over the batch of sum_c -targets log_softmax(logits)."""
    return jnp.mean(jnp.sum(-targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1))


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """timm's / Cao et al.'s `rand_bbox`: a (1 - lam)-area box of side int(side sqrt(1 - lam)),
    centre uniform over the image, clipped to it: [H, W] bool, True inside the box."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
    cy_rng, cx_rng = jax.random.split(rng)
    cy, cx = jax.random.randint(cy_rng, (), 0, height), jax.random.randint(cx_rng, (), 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside_rows = (rows >= jnp.clip(cy - cut_h // 2, 0, height)) & (rows < jnp.clip(cy + cut_h // 2, 0, height))
    inside_cols = (cols >= jnp.clip(cx - cut_w // 2, 0, width)) & (cols < jnp.clip(cx + cut_w // 2, 0, width))
    return inside_rows & inside_cols


def cutmix(rng: jax.Array, images: jax.Array, partner: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, C] with a box of partner[b]'s image pasted into image b ->
    (mixed images, lam corrected to the box's exact area: the weight of image b's own target)."""
    box = cutmix_box(rng, lam, images.shape[1], images.shape[2])
    mixed = jnp.where(box[None, :, :, None], images[partner], images)
    return mixed, 1.0 - jnp.mean(box.astype(jnp.float32))


def mix_targets(targets: jax.Array, partner: jax.Array, lam: jax.Array) -> jax.Array:
    """[B, C] soft targets -> lam targets + (1 - lam) targets[partner]."""
    return lam * targets + (1.0 - lam) * targets[partner]


def mixup_cutmix(rng: jax.Array, images: jax.Array, targets: jax.Array, *, mixup_alpha: float,
                 cutmix_alpha: float, switch_prob: float = 0.5, prob: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """timm's `Mixup(mode='batch', correct_lam=True)`: with probability `prob`, CutMix (chance
    `switch_prob` when both alphas are > 0) or mixup with lam ~ Beta(alpha, alpha), each image
    paired with the batch reversed (`x.flip(0)`). images [B, H, W, C], targets [B, C]."""
    partner = jnp.arange(images.shape[0])[::-1]
    apply_rng, switch_rng, lam_rng, box_rng = jax.random.split(rng, 4)
    use_cutmix = (jax.random.uniform(switch_rng) < switch_prob) if mixup_alpha > 0 and cutmix_alpha > 0 \
        else jnp.asarray(cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    lam = jnp.where(jax.random.uniform(apply_rng) < prob, lam, 1.0)
    cut_images, cut_lam = cutmix(box_rng, images, partner, lam)
    mixed = jnp.where(use_cutmix, cut_images, lam * images + (1.0 - lam) * images[partner])
    lam = jnp.where(use_cutmix, cut_lam, lam)
    return mixed.astype(images.dtype), mix_targets(targets, partner, lam)


def random_erasing(rng: jax.Array, images: jax.Array, prob: float, scale: tuple[float, float] = (0.02, 1 / 3),
                   log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)), attempts: int = 10) -> jax.Array:
    """timm's `RandomErasing(probability, mode='pixel', max_count=1)` per image of [B, H, W, C]:
    with probability `prob`, the first of `attempts` boxes (area fraction ~ U(scale), aspect
    exp(U(log_ratio)), h = round(sqrt(area aspect)), w = round(sqrt(area / aspect))) that fits
    strictly inside the image is filled with N(0, 1) noise per pixel and channel."""
    batch, height, width, _ = images.shape
    coin_rng, area_rng, ratio_rng, top_rng, left_rng, noise_rng = jax.random.split(rng, 6)
    area = jax.random.uniform(area_rng, (batch, attempts), minval=scale[0], maxval=scale[1]) * height * width
    aspect = jnp.exp(jax.random.uniform(ratio_rng, (batch, attempts), minval=log_ratio[0], maxval=log_ratio[1]))
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (h < height) & (w < width)
    first = jnp.argmax(fits, axis=1)  # the first attempt that fits
    h, w = jnp.take_along_axis(h, first[:, None], 1)[:, 0], jnp.take_along_axis(w, first[:, None], 1)[:, 0]
    erase = jnp.any(fits, axis=1) & (jax.random.uniform(coin_rng, (batch,)) < prob)
    top = jnp.floor(jax.random.uniform(top_rng, (batch,)) * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(left_rng, (batch,)) * (width - w + 1)).astype(jnp.int32)
    rows, cols = jnp.arange(height)[None, :, None], jnp.arange(width)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
           & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]) & erase[:, None, None])
    noise = jax.random.normal(noise_rng, images.shape, images.dtype)
    return jnp.where(box[..., None], noise, images)


def supervised_batch(rng: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, cfg) -> tuple[jax.Array, jax.Array]:
    """The training batch of DeiT / MAE fine-tuning (timm's transform and `Mixup`): random erasing
    per image with probability `cfg.reprob`, then Mixup/CutMix over the batch with label-smoothed
    targets. images [B, H, W, C], labels [B] -> (images, targets [B, num_classes]). `cfg` has
    reprob, label_smoothing, mixup, cutmix, mixup_switch_prob, mixup_prob."""
    erase_rng, mix_rng = jax.random.split(rng)
    if cfg.reprob:
        images = random_erasing(erase_rng, images, cfg.reprob)
    targets = smoothed_one_hot(labels, num_classes, cfg.label_smoothing)
    if cfg.mixup or cfg.cutmix:
        images, targets = mixup_cutmix(mix_rng, images, targets, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                                       switch_prob=cfg.mixup_switch_prob, prob=cfg.mixup_prob)
    return images, targets
