"""ssl_jax.data.randaugment against timm's RandAugment ('rand-m9-mstd0.5-inc1', MAE fine-tuning's --aa).

References, independent of the module: each op is timm's op (timm/data/auto_augment.py) run by
Pillow on the same uint8 image; each magnitude -> argument mapping is timm's `_*_level_to_arg`
transcribed; the op-sampling statistics are those of `RandAugment.__call__` / `AugmentOp.__call__`
(2 ops drawn uniformly with replacement from the 15, each applied with probability 0.5, magnitude
N(9, 0.5) clipped to [0, 10]).

Tolerances: pixel ops are compared exactly. Geometric ops evaluate Pillow's own float64 formulas
(Geometry.c), so they agree exactly here too, but `rotate` leaves out Pillow's rounding of cos / sin
to 15 decimals, and cos / sin themselves may differ from libm's by an ulp: a sampling coordinate can
move by ~1e-15 px, which flips the truncation of a value lying on an integer or moves a point lying
exactly on the image border to the fill. So geometric ops may differ by at most 1 level, or be the
fill, on at most 1% of the values.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from ssl_jax.data import randaugment as ra
from ssl_jax.errors import UserError

FILL = (124, 116, 104)  # timm: tuple(min(255, round(255 * x)) for x in IMAGENET_DEFAULT_MEAN)
# timm/data/auto_augment.py _RAND_INCREASING_TRANSFORMS, transcribed
TIMM_INCREASING = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                   "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                   "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


# ---------------------------------------------------------------- timm, transcribed


def _negate(value, negate):  # _randomly_negate: -v if random.random() > 0.5 else v
    return -value if negate else value


def timm_level_to_arg(name, level, negate):
    """timm's LEVEL_TO_ARG[name](level, hparams) for the increasing ops (translate_pct 0.45, the default)."""
    if name == "Rotate":
        return _negate((level / 10.0) * 30.0, negate)
    if name == "PosterizeIncreasing":
        return 4 - int((level / 10.0) * 4)
    if name == "SolarizeIncreasing":
        return 256 - int((level / 10.0) * 256)
    if name == "SolarizeAdd":
        return int((level / 10.0) * 110)
    if name.endswith("Increasing"):  # _enhance_increasing_level_to_arg
        return max(0.1, 1.0 + _negate((level / 10.0) * 0.9, negate))
    if name in ("ShearX", "ShearY"):
        return _negate((level / 10.0) * 0.3, negate)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _negate((level / 10.0) * 0.45, negate)
    return None  # AutoContrast, Equalize, Invert


def timm_op(name, img: Image.Image, arg) -> Image.Image:
    """timm's NAME_TO_OP[name](img, arg, fillcolor=FILL, resample=BICUBIC) on a PIL image."""
    affine = dict(resample=Image.BICUBIC, fillcolor=FILL)
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(arg, **affine)
    if name == "PosterizeIncreasing":
        if arg >= 8:
            return img
        # ImageOps.posterize's lut; Pillow >= 10 refuses bits=0, which the Pillow of MAE's time accepted
        return img.point([i & ~(2 ** (8 - arg) - 1) for i in range(256)] * 3)
    if name == "SolarizeIncreasing":
        return ImageOps.solarize(img, arg)
    if name == "SolarizeAdd":  # timm solarize_add(img, add, thresh=128)
        return img.point([min(255, i + arg) if i < 128 else i for i in range(256)] * 3)
    if name.endswith("Increasing"):
        enhancer = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                    "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
        return enhancer[name[:-len("Increasing")]](img).enhance(arg)
    if name == "ShearX":
        return img.transform(img.size, Image.AFFINE, (1, arg, 0, 0, 1, 0), **affine)
    if name == "ShearY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, arg, 1, 0), **affine)
    if name == "TranslateXRel":
        return img.transform(img.size, Image.AFFINE, (1, 0, arg * img.size[0], 0, 1, 0), **affine)
    assert name == "TranslateYRel"
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, arg * img.size[1]), **affine)


# ---------------------------------------------------------------- helpers


def _images():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 256, (12, 10, 3)).astype(np.uint8),  # not square: catches a swapped H / W
            rng.randint(60, 120, (9, 13, 3)).astype(np.uint8),  # low contrast: autocontrast stretches
            _equalize_overshoot(rng)]


def _equalize_overshoot(rng):
    """24 x 24 with, per channel, 511 values in [0, 100] and 65 of 250: equalize's step is
    (576 - 65) // 255 = 2 and its lut at 250 (2 // 2 + 511) // 2 = 256, which Pillow clips to 255."""
    channels = [rng.permutation(np.concatenate([rng.randint(0, 101, 511), np.full(65, 250)])) for _ in range(3)]
    return np.stack(channels, axis=-1).reshape(24, 24, 3).astype(np.uint8)


def assert_matches_pillow(name, ours, ref, geometric):
    ours, ref = np.asarray(ours).astype(int), np.asarray(ref).astype(int)
    assert ours.shape == ref.shape, name
    if not geometric:
        np.testing.assert_array_equal(ours, ref, err_msg=name)
        return
    off = np.abs(ours - ref) > 1
    off_pixels = off.any(-1)
    fill_swap = np.all(ours == FILL, -1) | np.all(ref == FILL, -1)
    assert not np.any(off_pixels & ~fill_swap), name
    assert np.mean(ours != ref) <= 0.01, name


ARGS = {  # arguments spanning each op's range (timm's arg at magnitudes 0..10, both signs)
    "Rotate": (-30.0, -13.5, 0.0, 27.3), "PosterizeIncreasing": (0, 1, 2, 4), "SolarizeIncreasing": (0, 26, 128, 256),
    "SolarizeAdd": (0, 55, 99, 110), "ColorIncreasing": (0.1, 0.73, 1.37, 1.9),
    "ContrastIncreasing": (0.1, 0.55, 1.0, 1.9), "BrightnessIncreasing": (0.1, 0.46, 1.45, 1.9),
    "SharpnessIncreasing": (0.1, 0.19, 1.81, 1.9), "ShearX": (-0.3, -0.03, 0.13, 0.27),
    "ShearY": (-0.27, 0.0, 0.09, 0.3), "TranslateXRel": (-0.405, 0.0, 0.2, 0.45),
    "TranslateYRel": (-0.45, -0.2, 0.045, 0.405),
}


# ---------------------------------------------------------------- tests


def test_op_table_is_timms_increasing_set_in_order():
    assert tuple(ra.increasing_ops(FILL)) == TIMM_INCREASING
    assert ra.NUM_OPS == len(TIMM_INCREASING)


@pytest.mark.parametrize("name", TIMM_INCREASING)
def test_each_op_matches_timms_pillow_op(name):
    op = ra.increasing_ops(FILL)[name][0]
    for image in _images():
        for arg in ARGS.get(name, (None,)):
            assert_matches_pillow(f"{name}({arg})", op(image, arg), timm_op(name, Image.fromarray(image), arg),
                                  geometric=name in GEOMETRIC)


def test_magnitude_to_argument_follows_timms_level_to_arg():
    ops = ra.increasing_ops(FILL)
    for name in TIMM_INCREASING:
        to_arg = ops[name][1]
        for level in (0.0, 0.37, 2.5, 4.4, 8.7, 9.0, 9.75, 10.0):
            for negate in (False, True):
                got = to_arg(tf.constant(level, tf.float64), tf.constant(negate))
                want = timm_level_to_arg(name, level, negate)
                if want is None:
                    assert got is None, name
                else:
                    assert np.asarray(got).item() == want, (name, level, negate)


def test_parse_reads_timms_config_string():
    assert ra.parse("rand-m9-mstd0.5-inc1") == {"num_layers": 2, "magnitude": 9.0, "magnitude_std": 0.5}
    assert ra.parse("rand-n3-m7-inc1") == {"num_layers": 3, "magnitude": 7.0, "magnitude_std": 0.0}
    for bad in ("rand-m9-mstd0.5", "augmix-m3", "rand-m9-w0-inc1", "rand-m9-mstd101-inc1"):
        with pytest.raises(UserError):
            ra.parse(bad)


def _draws(num_images, num_layers=2, magnitude=9.0, magnitude_std=0.5):
    seeds = tf.stack([tf.range(num_images), tf.fill([num_images], 7)], axis=1)
    fn = tf.function(lambda s: tf.map_fn(lambda seed: ra.sample_layers(seed, num_layers, magnitude, magnitude_std),
                                         s, fn_output_signature=(tf.int32, tf.bool, tf.float64, tf.bool)))
    return [np.asarray(x) for x in fn(seeds)]


def _normal_cdf(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def test_op_sampling_statistics_are_timms():
    """2 ops per image, uniform with replacement over 15, each applied with p 0.5, magnitude
    N(9, 0.5) clipped to [0, 10], sign flipped with p 0.5 (bounds: 5 standard errors)."""
    num = 4000
    index, applied, level, negate = _draws(num)
    assert index.shape == applied.shape == level.shape == negate.shape == (num, 2)
    draws = index.size
    counts = np.bincount(index.ravel(), minlength=15)
    expected = draws / 15
    assert counts.size == 15 and np.all(np.abs(counts - expected) < 5 * math.sqrt(expected * 14 / 15))
    same = np.mean(index[:, 0] == index[:, 1])  # with replacement: 1/15; without: 0
    assert abs(same - 1 / 15) < 5 * math.sqrt((1 / 15) * (14 / 15) / num)
    for coin in (applied, negate):
        assert abs(coin.mean() - 0.5) < 5 * math.sqrt(0.25 / draws)
    assert level.min() >= 0.0 and level.max() == 10.0
    for threshold in (8.5, 9.0, 9.5):  # P(N(9, 0.5) < t)
        p = _normal_cdf((threshold - 9.0) / 0.5)
        assert abs(np.mean(level < threshold) - p) < 5 * math.sqrt(p * (1 - p) / draws)
    p_clipped = 1 - _normal_cdf(2.0)  # magnitudes above 10 are clipped to 10
    assert abs(np.mean(level == 10.0) - p_clipped) < 5 * math.sqrt(p_clipped * (1 - p_clipped) / draws)
    # no noise: every magnitude is m
    assert np.all(_draws(50, num_layers=3, magnitude=7.0, magnitude_std=0.0)[2] == 7.0)


def test_rand_augment_applies_the_drawn_ops_in_order_as_timm():
    """End to end: the drawn ops, applied in turn by timm's Pillow ops with timm's arguments."""
    image = _images()[0]
    applied_layers = 0
    for i in range(12):
        seed = tf.constant([i, 3])
        index, applied, level, negate = (np.asarray(x) for x in ra.sample_layers(seed, 2, 9.0, 0.5))
        want = Image.fromarray(image)
        for layer in range(2):
            if applied[layer]:
                name = TIMM_INCREASING[index[layer]]
                want = timm_op(name, want, timm_level_to_arg(name, level[layer], negate[layer]))
                applied_layers += 1
        got = ra.rand_augment(image, seed, num_layers=2, magnitude=9.0, magnitude_std=0.5, fill=FILL)
        assert_matches_pillow(f"seed {i}", got, want, geometric=True)
    assert 0 < applied_layers < 24  # the seeds exercise both applied and skipped layers


def test_rand_augment_in_a_tf_data_graph_is_the_eager_result():
    image = _images()[0]
    seed = tf.constant([5, 1])
    kwargs = dict(num_layers=2, magnitude=9.0, magnitude_std=0.5, fill=FILL)
    ds = tf.data.Dataset.from_tensors(image).map(lambda x: ra.rand_augment(x, seed, **kwargs))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), ra.rand_augment(image, seed, **kwargs).numpy())


def test_finetuning_batches_run_rand_augment_on_the_uint8_crops(tfds_data_dir):
    """supervised_data.augmented_batches with the protocol's RandAugment: the same crops and flips as
    without (the seeds of both are unchanged), quantised to uint8 as PIL's crop returns them, then
    augmented: pixels stay on the uint8 grid, and some images change."""
    from conftest import make_smoke_config
    from ssl_jax import sharding
    from ssl_jax.eval.supervised_data import augmented_batches

    config = make_smoke_config(**{"dataset.shuffle_buffer": 16})
    mesh = sharding.make_mesh()
    plain, augmented = (next(augmented_batches(config, "train[:32]", 16, (0.08, 1.0), 0, mesh, rand_augment=aa))
                        for aa in ("", "rand-m9-mstd0.5-inc1"))
    np.testing.assert_array_equal(plain["label"], augmented["label"])

    def pixels(batch):  # [B, S, S, 3] on the 0..255 scale
        return (np.asarray(batch["image"]) * np.array(config.augment.std) + np.array(config.augment.mean)) * 255

    got, crops = pixels(augmented), np.round(pixels(plain))
    np.testing.assert_allclose(got, np.round(got), atol=1e-3)
    changed = np.abs(got - crops).max(axis=(1, 2, 3)) > 0.5
    assert 0 < changed.sum() < len(changed)  # 1 - 0.75^16: some changed; p 0.25 per image of none applied
