"""Dense evaluation: the linear segmentation probe's metrics, resizes, loss and training
(`ssl_jax/eval/segmentation.py`), the image/label folder reader (`ssl_jax/data/segmentation.py`)
and DINOv2's PCA pictures (`ssl_jax/analysis/patch_pca.py`), each against an independent
numpy reference. The `python -m ssl_jax.evaluate --eval=segmentation` run on the real CamVid
files is in tests/test_evaluate.py, which shares its trained checkpoint."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from ssl_jax.analysis.patch_pca import foreground, pca_rgb, principal_components
from ssl_jax.data import segmentation as data
from ssl_jax.errors import UserError
from ssl_jax.eval import segmentation


def brute_force_metrics(pred: np.ndarray, label: np.ndarray, num_classes: int):
    """mmseg's mean_iou, pixel by pixel: per class intersection / union over non-void pixels, NaN
    for a class with an empty union (left out of the mean), aAcc = correct / labelled."""
    valid = label != 255
    iou = []
    for c in range(num_classes):
        intersection = np.sum((pred == c) & (label == c) & valid)
        union = np.sum(((pred == c) | (label == c)) & valid)
        iou.append(intersection / union if union else np.nan)
    correct = sum(1 for p, y in zip(pred.ravel(), label.ravel()) if y != 255 and p == y)
    return np.nanmean(iou), correct / valid.sum(), np.array(iou)


def test_miou_and_pixel_accuracy_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    num_classes = 6
    label = rng.integers(0, 4, (3, 20, 30)).astype(np.uint8)  # classes 4, 5 never labelled
    label[rng.random(label.shape) < 0.2] = 255  # void
    pred = rng.integers(0, 5, label.shape)  # class 4 predicted though absent (IoU 0); class 5: NaN, left out
    pred[label == 1] = 1  # a class predicted well
    got = segmentation.iou_metrics(segmentation.confusion_matrix(pred, label, num_classes))
    miou, accuracy, iou = brute_force_metrics(pred, label, num_classes)
    assert np.isnan(iou[5]) and iou[4] == 0.0
    assert got["mIoU"] == pytest.approx(miou, abs=1e-12)
    assert got["aAcc"] == pytest.approx(accuracy, abs=1e-12)
    np.testing.assert_allclose(got["IoU"], iou, atol=1e-12, equal_nan=True)
    with pytest.raises(UserError, match="class 7"):
        segmentation.confusion_matrix(pred, np.full_like(label, 7), num_classes)


def torch_bilinear_1d(x: np.ndarray, out_size: int) -> np.ndarray:
    """PyTorch's upsample_bilinear2d along one axis, align_corners=False (aten's
    area_pixel_compute_source_index and its lambda weights), one output at a time."""
    in_size, out = len(x), []
    for i in range(out_size):
        src = max((in_size / out_size) * (i + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + (1 if i0 < in_size - 1 else 0)
        l1 = src - i0
        out.append((1 - l1) * x[i0] + l1 * x[i1])
    return np.array(out)


@pytest.mark.parametrize("in_size,out_size", [(4, 13), (12, 96), (7, 5), (6, 6)])
def test_bilinear_matrix_is_torch_resize_with_align_corners_false(in_size, out_size):
    x = np.random.default_rng(in_size).normal(size=in_size)
    np.testing.assert_allclose(segmentation.bilinear_matrix(out_size, in_size) @ x,
                               torch_bilinear_1d(x, out_size), atol=1e-12)


def test_two_resizes_compose_and_apply_to_both_axes():
    logits = np.random.default_rng(1).normal(size=(3, 4, 2))
    rows, cols = segmentation.resize_matrices(((3, 4), (6, 8), (5, 9)))
    want = np.stack([np.stack([torch_bilinear_1d(torch_bilinear_1d(logits[:, w, c], 6), 5)
                               for w in range(4)], axis=1) for c in range(2)], axis=-1)  # rows, twice
    want = np.stack([np.stack([torch_bilinear_1d(torch_bilinear_1d(want[h, :, c], 8), 9)
                               for h in range(5)], axis=0) for c in range(2)], axis=-1)  # then columns, twice
    np.testing.assert_allclose(segmentation.resize_logits(logits, rows, cols), want, atol=1e-12)


def test_loss_is_cross_entropy_averaged_over_all_pixels_void_included():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 4, 5))
    labels = rng.integers(0, 5, (2, 3, 4))
    labels[0, 0] = 255
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    terms = [-log_p[b, i, j, labels[b, i, j]] for b in range(2) for i in range(3) for j in range(4)
             if labels[b, i, j] != 255]
    want = sum(terms) / labels.size  # mmseg 0.x: avg_non_ignore=False divides by every pixel
    got = segmentation.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_schedule_is_mmcv_poly_with_linear_warmup():
    cfg = ml_collections.ConfigDict({"lr": 1e-3, "min_lr": 1e-5, "steps": 100, "power": 0.9, "warmup_steps": 10,
                                     "warmup_ratio": 1e-6})
    schedule = segmentation.poly_schedule(cfg)
    for t in (0, 5, 10, 60, 99):
        regular = (1e-3 - 1e-5) * (1 - t / 100) ** 0.9 + 1e-5  # PolyLrUpdaterHook.get_lr
        if t < 10:  # LrUpdaterHook.get_warmup_lr, 'linear'
            regular *= 1 - (1 - t / 10) * (1 - 1e-6)
        assert float(schedule(t)) == pytest.approx(regular, rel=1e-5), t


def probe_cfg(steps: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "steps": steps, "batch_size": 8, "lr": 1e-2, "weight_decay": 1e-4, "b1": 0.9, "b2": 0.999,
        "warmup_steps": 5, "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 0.0, "init_std": 0.01})


def predict(head, variables, features: np.ndarray, label_size) -> np.ndarray:
    logits = np.asarray(head.apply(variables, jnp.asarray(features)))
    rows, cols = segmentation.resize_matrices((features.shape[1:3], tuple(label_size)))
    return segmentation.resize_logits(logits, rows, cols).argmax(-1)


def test_probe_reads_labels_carried_by_the_features_and_nothing_from_noise():
    rng = np.random.default_rng(3)
    num_classes, patch = 4, 2
    grid_labels = rng.integers(0, num_classes, (48, 4, 6))
    labels = grid_labels.repeat(patch, 1).repeat(patch, 2).astype(np.uint8)  # each token covers 2 x 2 pixels
    labels[:, 0, 0] = 255
    one_hot = np.eye(num_classes, dtype=np.float32)[grid_labels] + 0.1 * rng.normal(size=(48, 4, 6, num_classes))
    head, variables, losses = segmentation.train_head(probe_cfg(150), one_hot[:32], labels[:32], num_classes, 0)
    assert set(variables["params"]) == {"BatchNorm_0", "Dense_0"}  # only the head is trained
    assert losses[-1] < 0.2 * losses[0]
    pred = predict(head, variables, one_hot[32:], labels.shape[1:])
    held_out = segmentation.iou_metrics(segmentation.confusion_matrix(pred, labels[32:], num_classes))
    assert held_out["mIoU"] > 0.98

    noise = rng.normal(size=one_hot.shape).astype(np.float32)
    head, variables, _ = segmentation.train_head(probe_cfg(150), noise[:32], labels[:32], num_classes, 0)
    pred = predict(head, variables, noise[32:], labels.shape[1:])
    chance = segmentation.iou_metrics(segmentation.confusion_matrix(pred, labels[32:], num_classes))
    assert chance["aAcc"] < 1 / num_classes + 0.12 and chance["mIoU"] < 0.25


def test_evaluate_leaves_the_frozen_backbone_untouched_and_differentiates_only_the_head(tmp_path):
    """The features are arrays computed before the head trains: the loss the head minimises has no
    path to the backbone, so its parameters come back bitwise unchanged. Test images of several
    sizes are each scored at their own size."""
    write_folder(tmp_path, {"train": 4, "test": 2}, size=(12, 16))
    rng = np.random.default_rng(8)  # a test image of another size: scored at its own label size
    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(tmp_path / "test" / "images" / "1.png")
    Image.fromarray(rng.integers(0, 3, (10, 14), dtype=np.uint8), mode="L").save(tmp_path / "test" / "labels" / "1.png")
    config = ml_collections.ConfigDict({"model": {"patch_size": 4}, "augment": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    kernel = jnp.asarray(np.random.default_rng(4).normal(size=(48, 8)), jnp.float32)
    params = {"kernel": kernel}
    pixels = segmentation.pixel_features_fn(4)

    def features_fn(p, x):  # a one-layer "backbone" over each patch's pixels
        return jnp.einsum("bhwf,fd->bhwd", pixels(None, x), p["kernel"])

    before = np.asarray(kernel).copy()
    cfg = probe_cfg(3).copy_and_resolve_references()
    cfg.update({"data_dir": str(tmp_path), "num_classes": 0, "train_split": "train", "test_split": "test",
                "reduce_zero_label": False, "image_size": (12, 16), "test_scales": (1.0,), "test_flip": False,
                "extract_batch_size": 3, "max_train_images": 0, "max_test_images": 0})
    results = segmentation.evaluate(cfg, features_fn, params, config.model.patch_size, config.augment.mean,
                                   config.augment.std, printer=lambda *_: None)
    np.testing.assert_array_equal(np.asarray(params["kernel"]), before)
    assert 0.0 <= results["segmentation_mIoU"] <= 1.0 and set(results) >= {"segmentation_IoU_a"}


def write_folder(root, counts: dict, size=(12, 16), zero_label=False):
    """DIR/<split>/images/*.png + labels/*.png with classes a, b, c (labels 0..2, some void)."""
    rng = np.random.default_rng(5)
    (root / "classes.txt").write_text("a\nb\nc\n")
    for split, count in counts.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
            label = rng.integers(0, 3, size).astype(np.uint8)
            label[0] = 0 if zero_label else 255
            Image.fromarray(label, mode="L").save(root / split / "labels" / f"{i}.png")


def test_reader_pairs_stems_resizes_and_reduces_zero_label(tmp_path):
    write_folder(tmp_path, {"train": 3}, size=(6, 8), zero_label=True)
    split = data.list_split(str(tmp_path), "train")
    assert [p.stem for p in split.images] == ["0", "1", "2"] and data.class_names(str(tmp_path)) == ["a", "b", "c"]
    stored = np.asarray(Image.open(split.labels[0]))
    image, label, original = data.read_pair(split.images[0], split.labels[0], (12, 16), reduce_zero_label=True)
    assert image.shape == (12, 16, 3) and label.shape == (12, 16)
    np.testing.assert_array_equal(original, np.where(stored == 0, 255, stored - 1))  # mmseg's reduce_zero_label
    np.testing.assert_array_equal(label, original.repeat(2, 0).repeat(2, 1))  # nearest, exactly x2
    batches = list(data.pairs(split, (6, 8), batch_size=2))
    assert [len(b[0]) for b in batches] == [2, 1]
    (tmp_path / "train" / "labels" / "2.png").unlink()
    with pytest.raises(UserError, match="unpaired: 2"):
        data.list_split(str(tmp_path), "train")
    with pytest.raises(UserError, match="is not a directory"):
        data.list_split("voc/2012", "train")
    assert data.is_segmentation_folder(str(tmp_path)) and not data.is_segmentation_folder("cifar10")


def test_pca_components_equal_numpy_svd_up_to_sign():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 10)) * np.arange(10, 0, -1)  # distinct variances
    components, scores = principal_components(x, 3)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    for k in range(3):
        sign = np.sign(components[k] @ vt[k])
        np.testing.assert_allclose(sign * components[k], vt[k], atol=1e-10)
    np.testing.assert_allclose(np.abs(scores), np.abs((x - x.mean(0)) @ vt[:3].T), atol=1e-9)


def test_pca_picture_keeps_the_smaller_side_of_the_first_component():
    rng = np.random.default_rng(7)
    tokens = rng.normal(size=(2, 4, 5, 8)) * 0.1
    tokens[:, 1:3, 1:3] += 5.0 * np.eye(8)[0]  # a small "object" apart from the background
    keep = foreground(tokens)
    assert keep.sum() == 8 and keep[:, 1:3, 1:3].all()
    rgb = pca_rgb(tokens)
    assert rgb.shape == (2, 4, 5, 3) and np.all(rgb[~keep] == 0)
    assert rgb[keep].min() == 0.0 and rgb[keep].max() == 1.0
    # the colours are the second PCA's components over the kept patches, each min-max scaled
    scores = principal_components(tokens[keep], 3)[1]
    np.testing.assert_allclose(rgb[keep], (scores - scores.min(0)) / (scores.max(0) - scores.min(0)), atol=1e-12)


def test_a_resnet_or_a_missing_folder_is_one_line():
    from ssl_jax.eval.frozen import vit_module

    with pytest.raises(UserError, match="reads a ViT's tokens.*'resnet'"):
        vit_module(ml_collections.ConfigDict({"model": {"name": "resnet"}}))
    with pytest.raises(UserError, match="needs a segmentation folder"):
        segmentation.evaluate(ml_collections.ConfigDict({"data_dir": ""}), None, None, 4, (0.5,) * 3, (0.25,) * 3)


def test_labels_beyond_the_classes_name_reduce_zero_label(tmp_path):
    write_folder(tmp_path, {"train": 2, "test": 1}, size=(8, 8))
    (tmp_path / "classes.txt").write_text("a\nb\n")  # labels hold 0..2
    config = ml_collections.ConfigDict({"model": {"patch_size": 4}, "augment": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    cfg = ml_collections.ConfigDict({"data_dir": str(tmp_path), "num_classes": 0, "train_split": "train",
                                     "test_split": "test", "reduce_zero_label": False, "image_size": (8, 8),
                                     "extract_batch_size": 2, "max_train_images": 0})
    with pytest.raises(UserError, match="labels go up to 2 but there are 2 classes.*reduce_zero_label=True"):
        segmentation.evaluate(cfg, segmentation.pixel_features_fn(4), None, config.model.patch_size,
                              config.augment.mean, config.augment.std)


def test_segmentation_during_training_is_checked_before_it_starts(tmp_path):
    """config.eval.segmentation_dir (the probe at every evaluation) is refused in one line for a ResNet,
    a missing folder or an unknown protocol preset, by the config check that runs before training."""
    import runpy

    from conftest import REPO
    from ssl_jax.guards.config_check import validate

    config = runpy.run_path(f"{REPO}/configs/dino_small.py")["get_config"]("smoke")
    config.eval.segmentation_dir = str(tmp_path)
    validate(config)
    config.eval.segmentation_protocol = "nope"
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        validate(config)
    config.eval.segmentation_dir = str(tmp_path / "missing")
    with pytest.raises(UserError, match="eval.segmentation_dir=.* is not a folder"):
        validate(config)
    resnet = runpy.run_path(f"{REPO}/configs/simclr_resnet50.py")["get_config"]("smoke")
    resnet.eval.segmentation_dir = str(tmp_path)
    with pytest.raises(UserError, match="needs a ViT backbone"):
        validate(resnet)
