"""Tests for ssl_jax.data.augment: shapes, determinism, probabilities and op semantics."""
from __future__ import annotations

import collections
import colorsys
import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from ssl_jax.data import augment

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_DRAWS = 300


def _cfg(global_number=2, local_number=3, **overrides) -> ml_collections.ConfigDict:
    """DINO's recipe at toy resolution: 32 px images, 16 px global and 8 px local crops."""
    cfg = ml_collections.ConfigDict(dict(
        global_crops=dict(number=global_number, size=16, scale=(0.4, 1.0)),
        local_crops=dict(number=local_number, size=8, scale=(0.05, 0.4)),
        flip_prob=0.5,
        color_jitter=dict(prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1),
        grayscale_prob=0.2,
        blur_prob=(1.0, 0.1, 0.5),
        blur_sigma=(0.1, 2.0),
        blur_kernel_size=5,
        solarize_prob=(0.0, 0.2, 0.0),
        mean=MEAN,
        std=STD,
    ))
    cfg.update(overrides)
    return cfg


def _image(seed=0, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=shape, dtype=np.uint8)


def _float_image(seed=0, shape=(32, 32, 3)) -> tf.Tensor:
    return tf.constant(np.random.RandomState(seed).rand(*shape).astype(np.float32))


def _seed(a, b=0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


def _batched_multi_crop(cfg, n=NUM_DRAWS, image=None):
    """`n` multi-crops of one image with seeds (i, 7), run in graph mode by tf.data."""
    image = tf.constant(_image() if image is None else image)
    ds = tf.data.Dataset.range(n).map(
        lambda i: augment.multi_crop(image, tf.stack([i, tf.constant(7, tf.int64)]), cfg))
    views, applied = next(iter(ds.batch(n)))
    return (tf.nest.map_structure(lambda t: t.numpy(), views),
            tf.nest.map_structure(lambda t: t.numpy(), applied))


@pytest.fixture(scope="module")
def draws():
    return _batched_multi_crop(_cfg())


def _assert_rate(fired: np.ndarray, prob: float):
    """Binomial check within 4 standard errors; exact for probabilities 0 and 1."""
    rate = fired.mean()
    tol = 4 * np.sqrt(prob * (1 - prob) / fired.size)
    assert abs(rate - prob) <= tol, (rate, prob, tol)


# ----------------------------------------------------------------------------
# multi_crop
# ----------------------------------------------------------------------------


def test_multi_crop_shapes_dtypes_and_range():
    views, applied = augment.multi_crop(tf.constant(_image()), _seed(3), _cfg())
    assert views["global"].shape == (2, 16, 16, 3) and views["global"].dtype == tf.float32
    assert views["local"].shape == (3, 8, 8, 3) and views["local"].dtype == tf.float32
    for group, number in (("global", 2), ("local", 3)):
        assert set(applied[group]) == set(augment.APPLIED_KEYS)
        for fired in applied[group].values():
            assert fired.shape == (number,) and fired.dtype == tf.bool


def test_multi_crop_values_unnormalise_into_unit_range(draws):
    views, _ = draws
    for group in ("global", "local"):
        assert np.all(np.isfinite(views[group]))
        pixels = views[group] * np.array(STD) + np.array(MEAN)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert pixels.std() > 0.05  # not a constant image


def test_multi_crop_graph_shapes_are_static():
    """Inside a graph the image size is unknown, yet every output shape is static."""
    cfg = _cfg()
    fn = tf.function(lambda img: augment.multi_crop(img, _seed(1), cfg),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    views, applied = fn.get_concrete_function().structured_outputs
    assert views["global"].shape.as_list() == [2, 16, 16, 3]
    assert views["local"].shape.as_list() == [3, 8, 8, 3]
    assert applied["local"]["blur"].shape.as_list() == [3]


def test_multi_crop_without_local_crops():
    views, applied = augment.multi_crop(tf.constant(_image()), _seed(3), _cfg(local_number=0))
    assert set(views) == {"global"} and set(applied) == {"global"}
    assert views["global"].shape == (2, 16, 16, 3)


def test_multi_crop_same_seed_same_views_eager_and_graph():
    image, cfg = tf.constant(_image()), _cfg()
    eager, eager_applied = augment.multi_crop(image, _seed(5), cfg)
    again, _ = augment.multi_crop(image, _seed(5), cfg)
    graph, graph_applied = tf.function(lambda s: augment.multi_crop(image, s, cfg))(_seed(5))
    for group in ("global", "local"):
        np.testing.assert_array_equal(eager[group].numpy(), again[group].numpy())
        np.testing.assert_allclose(eager[group].numpy(), graph[group].numpy(), atol=1e-5)
        for key in augment.APPLIED_KEYS:
            np.testing.assert_array_equal(eager_applied[group][key], graph_applied[group][key])


def test_multi_crop_different_seeds_and_crops_differ():
    image, cfg = tf.constant(_image()), _cfg()
    a, _ = augment.multi_crop(image, _seed(5), cfg)
    b, _ = augment.multi_crop(image, _seed(6), cfg)
    for group in ("global", "local"):
        assert not np.allclose(a[group].numpy(), b[group].numpy())
    # Crops within one call get independent seeds.
    assert not np.allclose(a["global"][0].numpy(), a["global"][1].numpy())
    assert not np.allclose(a["local"][0].numpy(), a["local"][1].numpy())


def test_global_views_do_not_depend_on_local_count():
    image = tf.constant(_image())
    few, _ = augment.multi_crop(image, _seed(9), _cfg(local_number=1))
    many, _ = augment.multi_crop(image, _seed(9), _cfg(local_number=4))
    np.testing.assert_array_equal(few["global"].numpy(), many["global"].numpy())


# ----------------------------------------------------------------------------
# Probabilities
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("group, index, key, prob", [
    ("global", 0, "blur", 1.0),
    ("global", 1, "blur", 0.1),
    ("local", None, "blur", 0.5),
    ("global", 0, "solarize", 0.0),
    ("global", 1, "solarize", 0.2),
    ("local", None, "solarize", 0.0),
    ("global", None, "flip", 0.5),
    ("local", None, "flip", 0.5),
    ("global", None, "color_jitter", 0.8),
    ("local", None, "color_jitter", 0.8),
    ("global", None, "grayscale", 0.2),
    ("local", None, "grayscale", 0.2),
])
def test_per_crop_probabilities(draws, group, index, key, prob):
    _, applied = draws
    fired = applied[group][key]  # [NUM_DRAWS, crops]
    _assert_rate(fired if index is None else fired[:, index], prob)


def test_coins_are_independent_across_crops_and_ops(draws):
    _, applied = draws
    flips = applied["local"]["flip"]
    # Two fair independent coins agree half the time.
    _assert_rate(flips[:, 0] == flips[:, 1], 0.5)
    _assert_rate(applied["global"]["flip"][:, 0] == applied["global"]["flip"][:, 1], 0.5)
    _assert_rate(flips[:, 0] == applied["local"]["color_jitter"][:, 0], 0.5 * 0.8 + 0.5 * 0.2)
    _assert_rate(flips[:, 0] == applied["global"]["flip"][:, 0], 0.5)


def test_extra_global_crops_use_second_crop_probabilities():
    _, applied = _batched_multi_crop(_cfg(global_number=4, local_number=0), n=100)
    assert applied["global"]["blur"][:, 0].all()
    assert not applied["global"]["solarize"][:, 0].any()
    # Crops 2 and 3 follow crop 1: blur 0.1, solarize 0.2, so neither is constant.
    for key, prob in (("blur", 0.1), ("solarize", 0.2)):
        _assert_rate(applied["global"][key][:, 1:], prob)


def test_probability_zero_never_fires_and_one_always_fires():
    cfg = _cfg(flip_prob=1.0, grayscale_prob=0.0, blur_prob=(0.0, 1.0, 1.0),
               solarize_prob=(1.0, 1.0, 0.0))
    cfg.color_jitter.prob = 0.0
    _, applied = _batched_multi_crop(cfg, n=100)
    for group in ("global", "local"):
        assert applied[group]["flip"].all()
        assert not applied[group]["color_jitter"].any()
        assert not applied[group]["grayscale"].any()
    assert not applied["global"]["blur"][:, 0].any()
    assert applied["global"]["blur"][:, 1].all() and applied["local"]["blur"].all()
    assert applied["global"]["solarize"].all() and not applied["local"]["solarize"].any()


def test_applied_flags_match_the_pixels():
    """Grayscale fired <=> equal channels (after un-normalising)."""
    views, applied = _batched_multi_crop(_cfg(), n=100)
    pixels = views["global"] * np.array(STD) + np.array(MEAN)
    equal_channels = np.abs(pixels - pixels[..., :1]).max(axis=(2, 3, 4)) < 1e-5
    np.testing.assert_array_equal(equal_channels, applied["global"]["grayscale"])


# ----------------------------------------------------------------------------
# Op semantics
# ----------------------------------------------------------------------------


def test_solarize_inverts_exactly_pixels_at_or_above_threshold():
    x = np.array([0.0, 0.2, 0.4999, 0.5, 0.75, 1.0], np.float32).reshape(1, 2, 3)
    expected = np.array([0.0, 0.2, 0.4999, 0.5, 0.25, 0.0], np.float32).reshape(1, 2, 3)
    np.testing.assert_array_equal(augment.solarize(tf.constant(x)).numpy(), expected)
    # The threshold itself is inverted.
    x = tf.constant([[[0.29, 0.3, 0.31]]])
    np.testing.assert_allclose(augment.solarize(x, 0.3).numpy(), [[[0.29, 0.7, 0.69]]], atol=1e-6)


def test_grayscale_matches_luma_weights():
    x = _float_image()
    gray = augment.to_grayscale(x).numpy()
    expected = x.numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
    assert gray.shape == (32, 32, 3)
    for c in range(3):
        np.testing.assert_allclose(gray[..., c], expected, atol=1e-6)


def test_gaussian_blur_keeps_constants_and_mean_and_reduces_noise():
    constant = tf.fill([16, 16, 3], 0.3)
    blurred = augment.gaussian_blur(constant, _seed(0), sigma=(0.1, 2.0), kernel_size=7)
    np.testing.assert_allclose(blurred.numpy(), 0.3, atol=1e-6)

    noise = _float_image(shape=(24, 24, 3))
    blurred = augment.gaussian_blur(noise, _seed(1), sigma=(1.5, 2.0), kernel_size=7).numpy()
    assert blurred.shape == (24, 24, 3)
    np.testing.assert_allclose(blurred.mean(axis=(0, 1)), noise.numpy().mean(axis=(0, 1)),
                               atol=0.01)
    assert blurred.var() < 0.25 * noise.numpy().var()


def _numpy_blur(image: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    half = kernel_size // 2
    x = np.arange(kernel_size) - half
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    padded = np.pad(image, [(half, half), (half, half), (0, 0)], mode="reflect")
    rows = sum(w[k] * padded[k:k + image.shape[0]] for k in range(kernel_size))
    return sum(w[k] * rows[:, k:k + image.shape[1]] for k in range(kernel_size))


def test_gaussian_blur_matches_reference_convolution():
    x = _float_image(shape=(12, 10, 3))
    blurred = augment.gaussian_blur(x, _seed(2), sigma=(1.3, 1.3), kernel_size=9).numpy()
    np.testing.assert_allclose(blurred, _numpy_blur(x.numpy(), 1.3, 9), atol=1e-5)


def test_gaussian_blur_sigma_is_random_within_range():
    x = _float_image(shape=(12, 12, 3))
    a = augment.gaussian_blur(x, _seed(0), sigma=(0.1, 2.0), kernel_size=9).numpy()
    b = augment.gaussian_blur(x, _seed(1), sigma=(0.1, 2.0), kernel_size=9).numpy()
    assert not np.allclose(a, b)
    # Each output lies between the blurs at the range's ends (in smoothness).
    lo = np.abs(_numpy_blur(x.numpy(), 0.1, 9) - x.numpy()).mean()
    hi = np.abs(_numpy_blur(x.numpy(), 2.0, 9) - x.numpy()).mean()
    for out in (a, b):
        assert lo - 1e-6 <= np.abs(out - x.numpy()).mean() <= hi + 1e-6


def test_random_resized_crop_full_square_is_plain_antialiased_bicubic_resize():
    x = _float_image(shape=(20, 20, 3))
    crop = augment.random_resized_crop(x, _seed(4), size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    expected = tf.clip_by_value(tf.image.resize(x, [12, 12], method="bicubic", antialias=True), 0.0, 1.0)
    np.testing.assert_allclose(crop.numpy(), expected.numpy(), atol=1e-6)


def test_random_resized_crop_boxes_follow_scale_and_ratio():
    height, width = tf.constant(60), tf.constant(80)
    for i in range(100):
        top, left, h, w = [int(v) for v in augment._crop_box(
            height, width, _seed(i), (0.1, 0.5), (3 / 4, 4 / 3))]
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        # Rounding h and w moves the area a little outside the sampled range.
        assert 0.08 <= h * w / (60 * 80) <= 0.53
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 / 0.85


def test_random_resized_crop_falls_back_to_centre_crop():
    # A 4x40 strip cannot hold any box of aspect ratio in [3/4, 4/3] and area >= 90%:
    # torchvision then centre-crops the whole height at the widest allowed ratio.
    top, left, h, w = [int(v) for v in augment._crop_box(
        tf.constant(4), tf.constant(40), _seed(0), (0.9, 1.0), (3 / 4, 4 / 3))]
    assert (h, w) == (4, 5) and top == 0 and left == (40 - 5) // 2
    # A tall strip keeps its whole width at the narrowest allowed ratio.
    top, left, h, w = [int(v) for v in augment._crop_box(
        tf.constant(40), tf.constant(4), _seed(0), (0.9, 1.0), (3 / 4, 4 / 3))]
    assert (h, w) == (5, 4) and top == (40 - 5) // 2 and left == 0


def test_color_jitter_zero_strength_is_identity():
    x = _float_image()
    out = augment.color_jitter(x, _seed(0), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    np.testing.assert_array_equal(out.numpy(), x.numpy())


def test_color_jitter_brightness_multiplies_by_factor_in_range():
    x = _float_image() * 0.5  # no clipping for factors <= 2
    for i in range(5):
        out = augment.color_jitter(x, _seed(i), brightness=0.4, contrast=0.0, saturation=0.0,
                                   hue=0.0).numpy()
        ratio = out / np.maximum(x.numpy(), 1e-3)
        factor = np.median(ratio)
        assert 0.6 <= factor <= 1.4
        np.testing.assert_allclose(out, factor * x.numpy(), atol=1e-5)


def test_color_jitter_contrast_blends_with_mean_luma():
    x = _float_image() * 0.5 + 0.25
    out = augment.color_jitter(x, _seed(1), brightness=0.0, contrast=0.4, saturation=0.0,
                               hue=0.0).numpy()
    mean = (x.numpy() @ np.array([0.299, 0.587, 0.114], np.float32)).mean()
    factor = (out - mean).ravel() @ (x.numpy() - mean).ravel() / np.sum((x.numpy() - mean) ** 2)
    assert 0.6 <= factor <= 1.4 and abs(factor - 1) > 1e-3
    np.testing.assert_allclose(out, factor * x.numpy() + (1 - factor) * mean, atol=1e-5)


def test_color_jitter_saturation_blends_with_grayscale():
    x = _float_image() * 0.5 + 0.25
    out = augment.color_jitter(x, _seed(2), brightness=0.0, contrast=0.0, saturation=0.4,
                               hue=0.0).numpy()
    gray = augment.to_grayscale(x).numpy()
    factor = (out - gray).ravel() @ (x.numpy() - gray).ravel() / np.sum((x.numpy() - gray) ** 2)
    assert 0.6 <= factor <= 1.4 and abs(factor - 1) > 1e-3
    np.testing.assert_allclose(out, factor * x.numpy() + (1 - factor) * gray, atol=1e-5)


def test_color_jitter_hue_shifts_by_fraction_of_circle():
    x = _float_image(shape=(4, 4, 3))
    shifts = []
    for i in range(20):
        out = augment.color_jitter(x, _seed(i), brightness=0.0, contrast=0.0, saturation=0.0,
                                   hue=0.1).numpy()
        before = np.array([colorsys.rgb_to_hsv(*p) for p in x.numpy().reshape(-1, 3)])
        after = np.array([colorsys.rgb_to_hsv(*p) for p in out.reshape(-1, 3)])
        colourful = before[:, 1] > 0.2  # hue is ill-conditioned near gray
        before, after = before[colourful], after[colourful]
        shift = (after[:, 0] - before[:, 0] + 0.5) % 1.0 - 0.5  # signed, in turns
        assert np.ptp(shift) < 1e-3  # one shift for every pixel
        assert abs(shift[0]) <= 0.1 + 1e-4
        np.testing.assert_allclose(after[:, 1:], before[:, 1:], atol=1e-4)
        shifts.append(shift[0])
    # U[-0.1, 0.1] turns: both signs and the full range show up in 20 draws.
    assert min(shifts) < -0.05 and max(shifts) > 0.05


def test_color_jitter_is_deterministic_and_stays_in_range():
    x = _float_image()
    kwargs = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.5)
    a = augment.color_jitter(x, _seed(3), **kwargs).numpy()
    np.testing.assert_array_equal(a, augment.color_jitter(x, _seed(3), **kwargs).numpy())
    assert not np.allclose(a, augment.color_jitter(x, _seed(4), **kwargs).numpy())
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_color_jitter_factor_ranges_follow_torchvision():
    ranges = [(low, high) for _, low, high in augment._jitter_ops(0.4, 0.4, 0.2, 0.1)]
    np.testing.assert_allclose(ranges, [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)])
    # Multiplicative factors are floored at 0; disabled ops are dropped.
    assert [(low, high) for _, low, high in augment._jitter_ops(1.5, 0.0, 0.0, 0.0)] == [(0.0, 2.5)]
    with pytest.raises(ValueError):
        augment._jitter_ops(0.4, 0.4, 0.2, 0.6)


def test_color_jitter_order_is_a_random_permutation():
    ops = augment._jitter_ops(0.4, 0.4, 0.2, 0.1)
    orders = [tuple(augment._jitter_params(_seed(i), ops)[0].numpy()) for i in range(NUM_DRAWS)]
    counts = collections.Counter(orders)
    assert set(counts) == set(itertools.permutations(range(4)))
    assert max(counts.values()) < 3 * NUM_DRAWS / 24


def test_color_jitter_applies_ops_in_the_sampled_order():
    x = _float_image(shape=(8, 8, 3))
    ops = augment._jitter_ops(0.4, 0.4, 0.2, 0.1)
    reversed_differs = False
    for i in range(10):
        order, factors = augment._jitter_params(_seed(i), ops)
        for k, (_, low, high) in enumerate(ops):
            assert low <= float(factors[k]) <= high

        def compose(indices, factors=factors):
            out = x
            for k in indices:
                out = ops[k][0](out, factors[k])
            return out.numpy()

        out = augment.color_jitter(x, _seed(i), brightness=0.4, contrast=0.4, saturation=0.2,
                                   hue=0.1).numpy()
        np.testing.assert_allclose(out, compose(order.numpy()), atol=1e-6)
        reversed_differs |= not np.allclose(out, compose(order.numpy()[::-1]), atol=1e-4)
    assert reversed_differs  # the order matters, so the check above is not vacuous


# ----------------------------------------------------------------------------
# The other references' variants (configs/simclr, byol, simsiam, swav, rotation, sla)
# ----------------------------------------------------------------------------


def _numpy_resize_weights(in_size: int, out_size: int, kernel) -> np.ndarray:
    """[out, in] weights of PIL's antialiased resample (ImagingResample): the kernel stretched by
    the scale when shrinking, centred on (i + 0.5) * scale, each row normalised."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        for j in range(in_size):
            weights[i, j] = kernel((j + 0.5 - centre) / support)
        weights[i] /= weights[i].sum()
    return weights


def test_random_resized_crop_bilinear_is_the_antialiased_triangle_filter():
    # torchvision's RandomResizedCrop default (SimSiam, SwAV, RotNet, SLA): PIL bilinear, whose
    # shrink is a triangle filter of width 2 x scale: separable weights written out in numpy.
    x = _float_image(shape=(20, 20, 3))
    crop = augment.random_resized_crop(x, _seed(4), size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                       interpolation="bilinear")
    w = _numpy_resize_weights(20, 8, lambda t: max(0.0, 1.0 - abs(t)))
    expected = np.einsum("ij,jkc,lk->ilc", w, x.numpy().astype(np.float64), w)
    np.testing.assert_allclose(crop.numpy(), expected, atol=1e-5)
    bicubic = augment.random_resized_crop(x, _seed(4), size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert np.abs(bicubic.numpy() - expected).max() > 1e-3


def test_random_resized_crop_without_antialias_samples_the_source_pixels():
    # The TF references (SimCLR, BYOL) resize without antialiasing: halving a 2x2-block image
    # by bilinear sampling at the half-pixel centres reads each block's shared corner, a 4-pixel mean.
    rng = np.random.RandomState(0)
    x = rng.rand(16, 16, 3).astype(np.float32)
    out = augment.random_resized_crop(tf.constant(x), _seed(0), size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                      interpolation="bilinear", antialias=False).numpy()
    expected = x.reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    smooth = augment.random_resized_crop(tf.constant(x), _seed(0), size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                         interpolation="bilinear").numpy()
    assert np.abs(smooth - expected).max() > 1e-3


def test_simclr_and_byol_contrast_scale_each_channel_about_its_own_mean():
    # tf.image.random_contrast (SimCLR data_util.py; BYOL's adjust_contrast): per-channel means.
    x = (_float_image() * 0.5 + 0.25).numpy()
    x[..., 0] *= 0.5  # channel means far apart, so a luma mean would not fit
    for impl in ("simclr", "byol"):
        out = augment.color_jitter(tf.constant(x), _seed(1), brightness=0.0, contrast=0.4, saturation=0.0,
                                   hue=0.0, impl=impl).numpy()
        mean = x.mean(axis=(0, 1))
        factor = (out[..., 1] - mean[1]).ravel() @ (x[..., 1] - mean[1]).ravel() / np.sum((x[..., 1] - mean[1]) ** 2)
        assert 0.6 <= factor <= 1.4 and abs(factor - 1) > 1e-3
        np.testing.assert_allclose(out, np.clip((x - mean) * factor + mean, 0, 1), atol=1e-5)


def test_simclr_and_byol_saturation_scale_hsv_saturation():
    # tf.image.random_saturation / BYOL's adjust_saturation: S x factor clipped to 1, H and V kept.
    x = (_float_image(shape=(6, 6, 3)) * 0.8 + 0.1).numpy()
    for impl in ("simclr", "byol"):
        out = augment.color_jitter(tf.constant(x), _seed(2), brightness=0.0, contrast=0.0, saturation=0.4,
                                   hue=0.0, impl=impl).numpy()
        hsv_in = np.array([colorsys.rgb_to_hsv(*p) for p in x.reshape(-1, 3)])
        hsv_out = np.array([colorsys.rgb_to_hsv(*p) for p in out.reshape(-1, 3)])
        factor = np.median(hsv_out[:, 1] / hsv_in[:, 1])
        assert 0.6 <= factor <= 1.4 and abs(factor - 1) > 1e-3
        expected = [colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v) for h, s, v in hsv_in]
        np.testing.assert_allclose(out.reshape(-1, 3), expected, atol=1e-4)


def test_byol_brightness_adds_a_delta_and_simclr_multiplies():
    x = (_float_image() * 0.5 + 0.25).numpy()
    for i in range(5):
        out = augment.color_jitter(tf.constant(x), _seed(i), brightness=0.2, contrast=0.0, saturation=0.0,
                                   hue=0.0, impl="byol").numpy()
        delta = np.median(out - x)
        assert -0.2 <= delta <= 0.2
        np.testing.assert_allclose(out, x + delta, atol=1e-5)
        out = augment.color_jitter(tf.constant(x), _seed(i), brightness=0.2, contrast=0.0, saturation=0.0,
                                   hue=0.0, impl="simclr").numpy()
        factor = np.median(out / x)
        assert 0.8 <= factor <= 1.2
        np.testing.assert_allclose(out, x * factor, atol=1e-5)


def test_blur_zero_padding_is_a_same_convolution():
    # SimCLR's / BYOL's depthwise conv with padding='SAME': zeros outside the image.
    x = _float_image(shape=(12, 12, 3)).numpy()
    out = augment.gaussian_blur(tf.constant(x), _seed(0), sigma=(1.5, 1.5), kernel_size=5, padding="zero").numpy()
    taps = np.exp(-0.5 * (np.arange(-2, 3) / 1.5) ** 2)
    taps /= taps.sum()
    rows = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="same"), 0, x.astype(np.float64))
    expected = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="same"), 1, rows)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    ones = augment.gaussian_blur(tf.ones((12, 12, 3)), _seed(0), sigma=(1.5, 1.5), kernel_size=5,
                                 padding="zero").numpy()
    assert ones[0, 0, 0] < 0.8 and abs(ones[6, 6, 0] - 1.0) < 1e-6


def test_multi_crop_reads_the_reference_options():
    base = _cfg(global_number=1, local_number=0, flip_prob=0.0, grayscale_prob=0.0, blur_prob=(0.0, 0.0, 0.0),
                solarize_prob=(0.0, 0.0, 0.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    base.color_jitter.prob = 0.0
    plain, _ = augment.multi_crop(tf.constant(_image()), _seed(3), base)
    bilinear = base.copy_and_resolve_references()
    bilinear.interpolation = "bilinear"
    changed, _ = augment.multi_crop(tf.constant(_image()), _seed(3), bilinear)
    assert np.abs(plain["global"].numpy() - changed["global"].numpy()).max() > 1e-3
    with pytest.raises(ValueError, match="augment.interpolation"):
        bilinear.interpolation = "nearest"
        augment.multi_crop(tf.constant(_image()), _seed(3), bilinear)
