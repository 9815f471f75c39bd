"""DINO multi-crop augmentation as stateless TensorFlow ops.

This module mirrors ``DataAugmentationDINO`` from facebookresearch/dino
(``main_dino.py``): every crop is

    RandomResizedCrop(bicubic) -> RandomHorizontalFlip -> RandomApply(ColorJitter)
    -> RandomGrayscale -> GaussianBlur -> Solarization -> ToTensor + Normalize

with two global crops (blur probability 1.0 / 0.1, solarization 0.0 / 0.2) and
several small local crops (blur 0.5, no solarization).

Every random choice uses stateless TF ops (``tf.random.stateless_*``) with seeds
derived by ``stateless_split`` / ``stateless_fold_in`` from one explicit seed.
A view is therefore a pure function of ``(seed, example)``: the input pipeline
needs no random state in its checkpoint, so a resumed run sees exactly the views
an uninterrupted run would have seen, whatever the tf.data parallelism.

All functions work eagerly and in graph mode (inside ``tf.data.Dataset.map``).
Images are ``[H, W, 3]``; float images are in ``[0, 1]``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import tensorflow as tf

_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert('L').
_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params tries 10 boxes.
APPLIED_KEYS = ("flip", "color_jitter", "grayscale", "blur", "solarize")


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """Splits a `[2]` seed into `num` independent `[2]` seeds."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _coin(seed: tf.Tensor, prob: float) -> tf.Tensor:
    """Scalar tf.bool that is True with probability `prob` (exactly never/always at 0/1)."""
    return tf.random.stateless_uniform([], seed) < prob


def _randint(seed: tf.Tensor, maxval: tf.Tensor) -> tf.Tensor:
    """Scalar int32 uniform in `[0, maxval)`."""
    return tf.random.stateless_uniform([], seed, minval=0, maxval=maxval, dtype=tf.int32)


def _maybe(fire: tf.Tensor, fn, image: tf.Tensor) -> tf.Tensor:
    """`fn(image)` if `fire` else `image`; the skipped branch does no work."""
    return tf.cond(fire, lambda: fn(image), lambda: image)


# ----------------------------------------------------------------------------
# RandomResizedCrop
# ----------------------------------------------------------------------------


def _fallback_size(height, width, ratio):
    """torchvision's fallback crop size: whole image with aspect ratio clamped to `ratio`."""
    lo, hi = min(ratio), max(ratio)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    in_ratio = w_f / h_f
    h = tf.where(in_ratio < lo, tf.cast(tf.round(w_f / lo), tf.int32), height)
    w = tf.where(in_ratio > hi, tf.cast(tf.round(h_f * hi), tf.int32), width)
    return h, w


def _crop_box(height, width, seed, scale, ratio):
    """torchvision ``RandomResizedCrop.get_params`` with stateless randomness.

    Tries `_CROP_ATTEMPTS` boxes with area fraction ~ U[scale] and log-uniform
    aspect ratio in `ratio`, keeps the first that fits, else falls back to a
    centre crop.

    Returns:
        (top, left, h, w) int32 scalars.
    """
    area_seed, ratio_seed, top_seed, left_seed = _split(seed, 4)
    area = tf.cast(height * width, tf.float32)
    target_area = area * tf.random.stateless_uniform(
        [_CROP_ATTEMPTS], area_seed, minval=scale[0], maxval=scale[1])
    aspect = tf.exp(tf.random.stateless_uniform(
        [_CROP_ATTEMPTS], ratio_seed, minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    ws = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    hs = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    found = tf.reduce_any(fits)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    fallback_h, fallback_w = _fallback_size(height, width, ratio)
    h = tf.where(found, hs[first], fallback_h)
    w = tf.where(found, ws[first], fallback_w)
    top = tf.where(found, _randint(top_seed, height - h + 1), (height - h) // 2)
    left = tf.where(found, _randint(left_seed, width - w + 1), (width - w) // 2)
    return top, left, h, w


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, *, size: int,
                        scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bicubic") -> tf.Tensor:
    """Random crop (torchvision ``RandomResizedCrop``) resized bicubically (or `interpolation`
    'bilinear', torchvision's default, which SimMIM and I-JEPA keep).

    Args:
        image: `[H, W, 3]` float32 in `[0, 1]`.
        seed: `[2]` int32/int64 seed.
        size: output side length.
        scale: range of the crop's area as a fraction of the image area.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.

    Returns:
        `[size, size, 3]` float32 in `[0, 1]`.
    """
    shape = tf.shape(image)
    top, left, h, w = _crop_box(shape[0], shape[1], seed, scale, ratio)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([h, w, -1]))
    # antialias: PIL's bicubic resize (what the reference's torchvision transform runs)
    # low-pass filters when it shrinks; without it 224 px crops of large images alias.
    resized = tf.image.resize(crop, [size, size], method=interpolation, antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Colour ops (torchvision semantics)
# ----------------------------------------------------------------------------


def _luma(image: tf.Tensor) -> tf.Tensor:
    """`[H, W, 3]` -> `[H, W, 1]` ITU-R 601-2 luma."""
    return tf.reduce_sum(image * tf.constant(_LUMA_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """`[H, W, 3]` -> `[H, W, 3]` luma (0.299 R + 0.587 G + 0.114 B) in every channel."""
    return tf.tile(_luma(image), [1, 1, 3])


def _blend(image: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """`factor * image + (1 - factor) * other`, clipped to `[0, 1]` (torchvision ``_blend``)."""
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def _adjust_brightness(image, factor):
    return _blend(image, tf.zeros_like(image), factor)


def _adjust_contrast(image, factor):
    return _blend(image, tf.reduce_mean(_luma(image)), factor)


def _adjust_saturation(image, factor):
    return _blend(image, to_grayscale(image), factor)


def _adjust_hue(image, delta):
    # tf.image.adjust_hue's delta is a fraction of the hue circle, like torchvision's hue_factor.
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def _jitter_ops(brightness, contrast, saturation, hue):
    """Enabled `(op, low, high)` triples; factors are drawn from U[low, high].

    A strength of 0 disables its op, like torchvision's ``None``.
    """
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    candidates = (
        (_adjust_brightness, brightness, max(0.0, 1.0 - brightness), 1.0 + brightness),
        (_adjust_contrast, contrast, max(0.0, 1.0 - contrast), 1.0 + contrast),
        (_adjust_saturation, saturation, max(0.0, 1.0 - saturation), 1.0 + saturation),
        (_adjust_hue, hue, -hue, hue),
    )
    return [(op, low, high) for op, strength, low, high in candidates if strength]


def _jitter_params(seed: tf.Tensor, ops) -> tuple[tf.Tensor, tf.Tensor]:
    """`(order, factors)`: a uniformly random permutation of the ops (torchvision
    ``randperm``) and each op's factor, both `[len(ops)]`."""
    order_seed, factor_seed = _split(seed, 2)
    order = tf.argsort(tf.random.stateless_uniform([len(ops)], order_seed))
    low = tf.constant([lo for _, lo, _ in ops])
    high = tf.constant([hi for _, _, hi in ops])
    factors = low + (high - low) * tf.random.stateless_uniform([len(ops)], factor_seed)
    return order, factors


def color_jitter(image: tf.Tensor, seed: tf.Tensor, *, brightness: float, contrast: float,
                 saturation: float, hue: float) -> tf.Tensor:
    """torchvision ``ColorJitter``: four colour ops applied in a random order.

    Brightness multiplies by U[1-b, 1+b]; contrast blends with the mean luma by
    U[1-c, 1+c]; saturation blends with the grayscale image by U[1-s, 1+s]; hue is
    shifted by U[-h, h] turns of the hue circle. Each op clips to `[0, 1]`.

    Args:
        image: `[H, W, 3]` float32 in `[0, 1]`.
        seed: `[2]` int32/int64 seed.

    Returns:
        `[H, W, 3]` float32 in `[0, 1]`.
    """
    ops = _jitter_ops(brightness, contrast, saturation, hue)
    if not ops:
        return image
    order, factors = _jitter_params(seed, ops)
    for step in range(len(ops)):
        branches = [functools.partial(op, image, factors[k]) for k, (op, _, _) in enumerate(ops)]
        image = tf.switch_case(order[step], branches)
    return image


# ----------------------------------------------------------------------------
# Blur and solarization
# ----------------------------------------------------------------------------


def _gaussian_kernel(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """`[kernel_size]` Gaussian weights summing to 1 (torchvision ``_get_gaussian_kernel1d``)."""
    x = tf.range(kernel_size, dtype=tf.float32) - float(kernel_size // 2)
    weights = tf.exp(-0.5 * tf.square(x / sigma))
    return weights / tf.reduce_sum(weights)


def gaussian_blur(image: tf.Tensor, seed: tf.Tensor, *, sigma: tuple[float, float],
                  kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur with sigma ~ U[sigma[0], sigma[1]] and reflect padding.

    Args:
        image: `[H, W, 3]` float32 in `[0, 1]`, with `H, W > kernel_size // 2`.
        seed: `[2]` int32/int64 seed.
        sigma: range of the standard deviation, in pixels.
        kernel_size: odd kernel length.

    Returns:
        `[H, W, 3]` float32 in `[0, 1]`.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    weights = _gaussian_kernel(
        tf.random.stateless_uniform([], seed, minval=sigma[0], maxval=sigma[1]), kernel_size)
    pad = kernel_size // 2
    # Channels become the batch so one [k, 1, 1, 1] filter serves all of them.
    planes = tf.transpose(image, [2, 0, 1])[..., None]  # [3, H, W, 1]
    planes = tf.pad(planes, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    planes = tf.nn.conv2d(planes, tf.reshape(weights, [kernel_size, 1, 1, 1]), 1, "VALID")
    planes = tf.nn.conv2d(planes, tf.reshape(weights, [1, kernel_size, 1, 1]), 1, "VALID")
    return tf.clip_by_value(tf.transpose(planes[..., 0], [1, 2, 0]), 0.0, 1.0)


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Inverts pixels `>= threshold` to `1 - x` (PIL ``ImageOps.solarize(img, 128)``)."""
    return tf.where(image >= threshold, 1.0 - image, image)


# ----------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------


def augment_view(image: tf.Tensor, seed: tf.Tensor, *, size: int, scale: tuple[float, float],
                 flip_prob: float, jitter_prob: float, brightness: float, contrast: float,
                 saturation: float, hue: float, grayscale_prob: float, blur_prob: float,
                 blur_sigma: tuple[float, float], blur_kernel_size: int, solarize_prob: float,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 interpolation: str = "bicubic") -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """One DINO view: crop, flip, colour jitter, grayscale, blur, solarize, normalise.

    Args:
        image: `[H, W, 3]` uint8.
        seed: `[2]` int32/int64 seed; the view is a pure function of `(image, seed)`.

    Returns:
        `(view, applied)`: `view` is `[size, size, 3]` float32 normalised with
        `(x - mean) / std`; `applied` maps each of `APPLIED_KEYS` to a scalar tf.bool
        saying whether that random op fired.
    """
    (crop_seed, flip_seed, jitter_coin, jitter_seed, gray_seed, blur_coin, blur_seed,
     solarize_seed) = _split(seed, 8)
    view = random_resized_crop(tf.image.convert_image_dtype(image, tf.float32), crop_seed,
                               size=size, scale=scale, interpolation=interpolation)
    applied = {
        "flip": _coin(flip_seed, flip_prob),
        "color_jitter": _coin(jitter_coin, jitter_prob),
        "grayscale": _coin(gray_seed, grayscale_prob),
        "blur": _coin(blur_coin, blur_prob),
        "solarize": _coin(solarize_seed, solarize_prob),
    }
    view = _maybe(applied["flip"], tf.image.flip_left_right, view)
    view = _maybe(applied["color_jitter"], functools.partial(
        color_jitter, seed=jitter_seed, brightness=brightness, contrast=contrast,
        saturation=saturation, hue=hue), view)
    view = _maybe(applied["grayscale"], to_grayscale, view)
    view = _maybe(applied["blur"], functools.partial(
        gaussian_blur, seed=blur_seed, sigma=blur_sigma, kernel_size=blur_kernel_size), view)
    view = _maybe(applied["solarize"], solarize, view)
    view = (view - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    return view, applied


def _view_kwargs(cfg: Any, group: str, index: int) -> dict[str, Any]:
    """`augment_view` keyword arguments for crop `index` of `group` ("global" or "local")."""
    crops = cfg.global_crops if group == "global" else cfg.local_crops
    # blur_prob / solarize_prob are (global crop 1, global crop 2 and later, local crops).
    prob_index = min(index, 1) if group == "global" else 2
    jitter = cfg.color_jitter
    return dict(
        size=crops.size, scale=tuple(crops.scale), flip_prob=cfg.flip_prob,
        jitter_prob=jitter.prob, brightness=jitter.brightness, contrast=jitter.contrast,
        saturation=jitter.saturation, hue=jitter.hue, grayscale_prob=cfg.grayscale_prob,
        blur_prob=cfg.blur_prob[prob_index], blur_sigma=tuple(cfg.blur_sigma),
        blur_kernel_size=cfg.blur_kernel_size, solarize_prob=cfg.solarize_prob[prob_index],
        mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.get("interpolation", "bicubic"))


def multi_crop(image: tf.Tensor, seed: tf.Tensor,
               cfg: Any) -> tuple[dict[str, tf.Tensor], dict[str, dict[str, tf.Tensor]]]:
    """DINO multi-crop: `cfg.global_crops.number` global and `cfg.local_crops.number` local views.

    Crop `i` of a group is seeded with `stateless_fold_in(group_seed, i)`, so the
    global views do not change when the number of local crops does.

    Args:
        image: `[H, W, 3]` uint8.
        seed: `[2]` int32/int64 seed.
        cfg: augmentation config (e.g. an ``ml_collections.ConfigDict``) with
            `global_crops`/`local_crops` (`number`, `size`, `scale`), `flip_prob`,
            `color_jitter` (`prob`, `brightness`, `contrast`, `saturation`, `hue`),
            `grayscale_prob`, `blur_prob` and `solarize_prob` (3-tuples: global crop 1,
            global crop 2, local crops), `blur_sigma`, `blur_kernel_size`, `mean`, `std`.

    Returns:
        `(views, applied)`: `views["global"]` is `[G, S, S, 3]` and `views["local"]`
        `[L, s, s, 3]` float32 (absent when `L == 0`); `applied[group][key]` is a
        `[G]` / `[L]` bool vector for each of `APPLIED_KEYS`.
    """
    counts = {"global": cfg.global_crops.number, "local": cfg.local_crops.number}
    seed = tf.convert_to_tensor(seed)
    views, applied = {}, {}
    for group_seed, (group, number) in zip(_split(seed, 2), counts.items()):
        if number == 0:
            continue
        outs = [augment_view(image, tf.random.experimental.stateless_fold_in(group_seed, i),
                             **_view_kwargs(cfg, group, i))
                for i in range(number)]
        views[group] = tf.stack([view for view, _ in outs])
        applied[group] = {key: tf.stack([fired[key] for _, fired in outs]) for key in APPLIED_KEYS}
    return views, applied
