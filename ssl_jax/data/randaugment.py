"""timm's RandAugment (MAE fine-tuning's `--aa rand-m9-mstd0.5-inc1`) as stateless TF ops on uint8 images.

What `timm.data.create_transform(is_training=True, auto_augment=..., interpolation='bicubic')` builds
(timm/data/transforms_factory.py `transforms_imagenet_train`, timm/data/auto_augment.py
`rand_augment_transform`), after RandomResizedCrop and the flip, on the uint8 PIL image:

    for each of num_layers (n, 2) ops, drawn uniformly WITH replacement from the 15 ops of
    `_RAND_INCREASING_TRANSFORMS` (`RandAugment.__call__`: np.random.choice(replace=True)):
        with probability 0.5 (`AugmentOp.prob`):
            magnitude = clip(N(m, mstd), 0, 10)          (m 9, mstd 0.5; `AugmentOp.__call__`)
            image = op(image, level_to_arg(magnitude))  (the `_*_level_to_arg` of each op; the
                                                         signed ones negate with probability 0.5)

Geometric ops (rotate, shear, translate) resample bicubically (create_transform's `interpolation`)
and fill with `img_mean` = round(255 * normalisation mean); translations are relative
(`translate_pct` 0.45: transforms_imagenet_train sets no other for 'rand').

Every op reproduces Pillow's on uint8 images, arithmetic included (float32 blends, float64
geometry, truncation to uint8): `ImageOps` autocontrast / equalize / invert / posterize /
solarize, `ImageEnhance` Color / Contrast / Brightness / Sharpness (Image.blend, the SMOOTH
filter), `Image.transform(AFFINE, BICUBIC)` (Geometry.c: Pillow's a = -1 cubic, output pixel
centres, neighbours clamped at the border, `fillcolor` outside). Posterize keeping 0 bits gives
black, as the lut of the Pillow releases of MAE's time (Pillow >= 10 refuses bits=0).
Randomness is stateless (`tf.random.stateless_*`), as `ssl_jax.data.augment`.
"""
from __future__ import annotations

import functools
import math
import re

import tensorflow as tf

from ssl_jax.errors import UserError

MAX_LEVEL = 10.0  # timm _LEVEL_DENOM: magnitudes are clipped to [0, 10] and divided by it
OP_PROB = 0.5  # rand_augment_ops: AugmentOp(name, prob=0.5, ...)
TRANSLATE_PCT = 0.45  # _translate_rel_level_to_arg: hparams.get('translate_pct', 0.45)
SOLARIZE_ADD_THRESHOLD = 128  # solarize_add(img, add, thresh=128)
NUM_OPS = 15  # len(_RAND_INCREASING_TRANSFORMS)


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _f64(value) -> tf.Tensor:
    """float64 without a detour through float32 (tf.cast of a Python float makes a float32 first)."""
    return tf.cast(value, tf.float64) if tf.is_tensor(value) else tf.constant(value, tf.float64)


def _to_uint8(values: tf.Tensor) -> tf.Tensor:
    """C's `v <= 0 ? 0 : v >= 255 ? 255 : (UINT8) v` (truncation) of float values."""
    return tf.cast(tf.clip_by_value(tf.floor(values), 0.0, 255.0), tf.uint8)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
    """Image.blend(degenerate, image, factor) (Blend.c: float32 `in1 + alpha * (in2 - in1)`, truncated)."""
    alpha = tf.cast(factor, tf.float32)
    low = tf.cast(degenerate, tf.float32)
    return _to_uint8(low + alpha * (tf.cast(image, tf.float32) - low))


def _luma(image: tf.Tensor) -> tf.Tensor:
    """[H, W, 3] uint8 -> [H, W, 1] int32: Pillow's convert('L'), (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    rgb = tf.cast(image, tf.int32)
    weighted = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return tf.bitwise.right_shift(weighted, 16)[..., None]


# ---------------------------------------------------------------- pixel ops: [H, W, 3] uint8 -> uint8


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """ImageOps.autocontrast: per channel, int(v * 255 / (hi - lo) - lo * 255 / (hi - lo)) (float64)."""
    values = tf.cast(image, tf.float64)
    lo = tf.reduce_min(values, axis=[0, 1])
    hi = tf.reduce_max(values, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = _to_uint8(values * scale + -lo * scale)
    return tf.where(hi > lo, stretched, image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """ImageOps.equalize of one band [H, W]: lut[i] = (step // 2 + #pixels below i) // step,
    step = (#pixels - #pixels of the highest value) // 255; identity when step is 0."""
    pixels = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(pixels, [-1]), minlength=256, maxlength=256)
    highest = 255 - tf.argmax(tf.reverse(hist, [0]) > 0, output_type=tf.int32)
    step = (tf.reduce_sum(hist) - hist[highest]) // 255
    lut = (step // 2 + tf.cumsum(hist, exclusive=True)) // tf.maximum(step, 1)
    lut = tf.where(step > 0, tf.minimum(lut, 255), tf.range(256))  # point() clips the lut to 255
    return tf.cast(tf.gather(lut, pixels), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def invert(image: tf.Tensor) -> tf.Tensor:
    return 255 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """ImageOps.posterize: keep the `bits` (0..8) most significant bits (i & ~(2^(8-bits) - 1))."""
    mask = 256 - tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32))
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
    """ImageOps.solarize: 255 - v for v >= threshold."""
    values = tf.cast(image, tf.int32)
    return tf.cast(tf.where(values < tf.cast(threshold, tf.int32), values, 255 - values), tf.uint8)


def solarize_add(image: tf.Tensor, add) -> tf.Tensor:
    """timm solarize_add: min(255, v + add) for v < 128."""
    values = tf.cast(image, tf.int32)
    added = tf.minimum(values + tf.cast(add, tf.int32), 255)
    return tf.cast(tf.where(values < SOLARIZE_ADD_THRESHOLD, added, values), tf.uint8)


def color(image: tf.Tensor, factor) -> tf.Tensor:
    """ImageEnhance.Color: blend from the grey (convert('L')) image."""
    return _blend(tf.tile(_luma(image), [1, 1, 3]), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """ImageEnhance.Contrast: blend from the constant int(mean grey + 0.5)."""
    mean = tf.reduce_mean(tf.cast(_luma(image), tf.float64))
    return _blend(tf.fill(tf.shape(image), tf.floor(mean + 0.5)), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """ImageEnhance.Brightness: blend from black."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
    """ImageEnhance.Sharpness: blend from ImageFilter.SMOOTH ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13;
    Filter.c ImagingFilter3x3: float32 sums row by row from 0.5, truncated; border pixels kept)."""
    values = tf.cast(image, tf.float32)
    one, five = tf.constant(1.0) / 13.0, tf.constant(5.0) / 13.0

    def row(rows, weights):  # one kernel row over the interior columns: [H - 2, W - 2, 3]
        return rows[:, :-2] * weights[0] + rows[:, 1:-1] * weights[1] + rows[:, 2:] * weights[2]

    sums = 0.5 + row(values[2:], (one, one, one))
    sums = sums + row(values[1:-1], (one, five, one))
    sums = sums + row(values[:-2], (one, one, one))
    smooth = tf.pad(_to_uint8(sums), [[1, 1], [1, 1], [0, 0]])
    interior = tf.pad(tf.ones_like(sums, tf.bool), [[1, 1], [1, 1], [0, 0]])
    return _blend(tf.where(interior, smooth, image), image, factor)


# ---------------------------------------------------------------- geometric ops


def _cubic(v1, v2, v3, v4, d):
    """Pillow's BICUBIC macro (Geometry.c): the a = -1 cubic through v2 (d = 0) and v3 (d = 1)."""
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine(image: tf.Tensor, coeffs, fill: tuple[int, int, int]) -> tf.Tensor:
    """image.transform(size, Image.AFFINE, coeffs, Image.BICUBIC, fillcolor=fill).

    The output pixel (x, y) reads the input at (a x' + b y' + c, d x' + e y' + f), x' = x + 0.5,
    y' = y + 0.5 (float64); a point outside the image gets `fill`, one inside the bicubic value of
    the 4 x 4 neighbours (clamped to the border), truncated to uint8. [H, W, 3] -> [H, W, 3].
    """
    a, b, c, d, e, f = (_f64(v) for v in coeffs)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float64) + 0.5, tf.range(width, dtype=tf.float64) + 0.5,
                         indexing="ij")
    x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
    inside = ((x_in >= 0.0) & (x_in < tf.cast(width, tf.float64)) & (y_in >= 0.0)
              & (y_in < tf.cast(height, tf.float64)))
    x_in, y_in = x_in - 0.5, y_in - 0.5
    x0, y0 = tf.floor(x_in), tf.floor(y_in)
    taps = tf.range(-1, 3)
    cols = tf.clip_by_value(tf.cast(x0, tf.int32)[..., None] + taps, 0, width - 1)  # [H, W, 4]
    rows = tf.clip_by_value(tf.cast(y0, tf.int32)[..., None] + taps, 0, height - 1)
    grid = tf.broadcast_to(rows[..., :, None], tf.concat([shape[:2], [4, 4]], 0))
    index = tf.stack([grid, tf.broadcast_to(cols[..., None, :], tf.shape(grid))], axis=-1)
    pixels = tf.gather_nd(tf.cast(image, tf.float64), index)  # [H, W, 4 rows, 4 cols, 3]
    dx, dy = (x_in - x0)[..., None, None], (y_in - y0)[..., None]
    per_row = _cubic(pixels[..., 0, :], pixels[..., 1, :], pixels[..., 2, :], pixels[..., 3, :], dx)
    value = _cubic(per_row[..., 0, :], per_row[..., 1, :], per_row[..., 2, :], per_row[..., 3, :], dy)
    return tf.where(inside[..., None], _to_uint8(value), tf.constant(fill, tf.uint8))


def rotate(image: tf.Tensor, degrees, fill) -> tf.Tensor:
    """Image.rotate(degrees, BICUBIC, fillcolor=fill): counter-clockwise about (W / 2, H / 2)
    (Pillow's matrix, without its rounding of cos and sin to 15 decimals)."""
    shape = tf.cast(tf.shape(image), tf.float64)
    cx, cy = shape[1] / 2.0, shape[0] / 2.0
    angle = -(tf.math.floormod(_f64(degrees), 360.0) * (math.pi / 180.0))
    cos, sin = tf.cos(angle), tf.sin(angle)
    c = cos * -cx + sin * -cy + 0.0 + cx
    f = -sin * -cx + cos * -cy + 0.0 + cy
    return affine(image, (cos, sin, c, -sin, cos, f), fill)


def shear_x(image: tf.Tensor, factor, fill) -> tf.Tensor:
    return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image: tf.Tensor, factor, fill) -> tf.Tensor:
    return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x_rel(image: tf.Tensor, pct, fill) -> tf.Tensor:
    pixels = _f64(pct) * tf.cast(tf.shape(image)[1], tf.float64)
    return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y_rel(image: tf.Tensor, pct, fill) -> tf.Tensor:
    pixels = _f64(pct) * tf.cast(tf.shape(image)[0], tf.float64)
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


# ---------------------------------------------------------------- magnitude -> op argument
# timm's `_*_level_to_arg`, on a float64 magnitude in [0, 10]; `negate` is _randomly_negate's coin.


def _signed(value, negate):
    return tf.where(negate, -value, value)


def rotate_level(magnitude, negate):
    return _signed(magnitude / MAX_LEVEL * 30.0, negate)  # _rotate_level_to_arg: [-30, 30] degrees


def posterize_increasing_level(magnitude, negate):
    return 4 - tf.cast(tf.floor(magnitude / MAX_LEVEL * 4.0), tf.int32)  # 4 - int(level / 10 * 4) bits


def solarize_increasing_level(magnitude, negate):
    return 256 - tf.cast(tf.floor(magnitude / MAX_LEVEL * 256.0), tf.int32)  # 256 - int(level / 10 * 256)


def solarize_add_level(magnitude, negate):
    return tf.cast(tf.floor(magnitude / MAX_LEVEL * 110.0), tf.int32)  # int(level / 10 * 110)


def enhance_increasing_level(magnitude, negate):
    return tf.maximum(1.0 + _signed(magnitude / MAX_LEVEL * 0.9, negate), 0.1)  # [0.1, 1.9]


def shear_level(magnitude, negate):
    return _signed(magnitude / MAX_LEVEL * 0.3, negate)  # [-0.3, 0.3]


def translate_rel_level(magnitude, negate):
    return _signed(magnitude / MAX_LEVEL * TRANSLATE_PCT, negate)  # [-0.45, 0.45] of the side


def _no_arg(magnitude, negate):
    return None


def increasing_ops(fill: tuple[int, int, int]) -> dict:
    """timm's `_RAND_INCREASING_TRANSFORMS`, in order: name -> (op(image, arg), level_to_arg)."""
    def geometric(op):
        return functools.partial(op, fill=fill)

    return {
        "AutoContrast": (lambda image, _: auto_contrast(image), _no_arg),
        "Equalize": (lambda image, _: equalize(image), _no_arg),
        "Invert": (lambda image, _: invert(image), _no_arg),
        "Rotate": (geometric(rotate), rotate_level),
        "PosterizeIncreasing": (posterize, posterize_increasing_level),
        "SolarizeIncreasing": (solarize, solarize_increasing_level),
        "SolarizeAdd": (solarize_add, solarize_add_level),
        "ColorIncreasing": (color, enhance_increasing_level),
        "ContrastIncreasing": (contrast, enhance_increasing_level),
        "BrightnessIncreasing": (brightness, enhance_increasing_level),
        "SharpnessIncreasing": (sharpness, enhance_increasing_level),
        "ShearX": (geometric(shear_x), shear_level),
        "ShearY": (geometric(shear_y), shear_level),
        "TranslateXRel": (geometric(translate_x_rel), translate_rel_level),
        "TranslateYRel": (geometric(translate_y_rel), translate_rel_level),
    }


# ---------------------------------------------------------------- the transform


def parse(config_str: str) -> dict:
    """timm's rand_augment_transform config string -> {num_layers, magnitude, magnitude_std}.

    'rand' then '-'-separated sections: m<int> magnitude (default 10), n<int> ops per image
    (default 2), mstd<float> magnitude std (default 0), inc<int> the increasing ops (timm reads
    any value as true). Only the increasing op set is implemented (without `inc` timm uses
    `_RAND_TRANSFORMS`), and no weighted choice (w) or mmax.
    """
    sections = config_str.split("-")
    if sections[0] != "rand":
        raise UserError(f"randaugment {config_str!r} must start with 'rand' (timm's RandAugment string)")
    spec = {"num_layers": 2, "magnitude": MAX_LEVEL, "magnitude_std": 0.0}
    increasing = False
    for section in sections[1:]:
        parts = re.split(r"(\d.*)", section)
        if len(parts) < 2:
            continue  # timm skips a section without a number
        key, value = parts[:2]
        if key == "m":
            spec["magnitude"] = float(int(value))
        elif key == "n":
            spec["num_layers"] = int(value)
        elif key == "mstd":
            spec["magnitude_std"] = float(value)
        elif key == "inc":
            increasing = True
        else:
            raise UserError(f"randaugment {config_str!r}: section {section!r} is not supported "
                            "(m<int>, n<int>, mstd<float>, inc1)")
    if not increasing:
        raise UserError(f"randaugment {config_str!r}: only timm's increasing ops are implemented; add '-inc1'")
    if not 0.0 <= spec["magnitude_std"] <= 100.0:
        raise UserError(f"randaugment {config_str!r}: mstd must be in [0, 100] (timm's uniform mode is not "
                        "implemented)")
    return spec


def sample_layers(seed: tf.Tensor, num_layers: int, magnitude: float, magnitude_std: float):
    """RandAugment's draws for one image, each [num_layers]: the op index (uniform over the 15,
    with replacement), whether it is applied (probability 0.5), its magnitude (N(m, mstd) clipped
    to [0, 10], float64) and `_randomly_negate`'s coin (probability 0.5)."""
    draws = []
    for layer_seed in _split(seed, num_layers):
        choice_seed, apply_seed, magnitude_seed, sign_seed = _split(layer_seed, 4)
        noise = tf.random.stateless_normal([], magnitude_seed, dtype=tf.float64)
        draws.append((tf.random.stateless_uniform([], choice_seed, 0, NUM_OPS, dtype=tf.int32),
                      tf.random.stateless_uniform([], apply_seed) <= OP_PROB,  # timm skips when random() > prob
                      tf.clip_by_value(magnitude + magnitude_std * noise, 0.0, MAX_LEVEL),
                      tf.random.stateless_uniform([], sign_seed) > 0.5))  # timm: -v if random() > 0.5
    return tuple(tf.stack(values) for values in zip(*draws))


def _apply(op, to_arg, image, level, negate):
    return lambda: op(image, to_arg(level, negate))


def rand_augment(image: tf.Tensor, seed: tf.Tensor, *, num_layers: int, magnitude: float, magnitude_std: float,
                 fill: tuple[int, int, int]) -> tf.Tensor:
    """timm RandAugment of one image: [H, W, 3] uint8 -> [H, W, 3] uint8, a pure function of `seed` [2]."""
    ops = list(increasing_ops(fill).values())
    indices, applied, levels, negates = sample_layers(seed, num_layers, magnitude, magnitude_std)
    for layer in range(num_layers):
        branches = [_apply(op, to_arg, image, levels[layer], negates[layer]) for op, to_arg in ops]
        chosen = functools.partial(tf.switch_case, indices[layer], branches)
        image = tf.cond(applied[layer], chosen, functools.partial(tf.identity, image))
        image.set_shape([None, None, 3])
    return image
