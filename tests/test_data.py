"""The tfds input pipeline on the real CIFAR-10 files: resumable train batches, padded eval batches."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_smoke_config
from ssl_jax.data import pipeline
from ssl_jax.errors import UserError

STEPS_PER_EPOCH = 2  # tiny epochs, so that a few batches cross epoch boundaries
LOCAL_BATCH = 8
NUM_BATCHES = 5  # epochs 0, 0, 1, 1, 2


def _assert_batches_equal(a: dict, b: dict, what: str):
    assert a.keys() == b.keys() and a["views"].keys() == b["views"].keys(), what
    for name in a["views"]:
        np.testing.assert_array_equal(a["views"][name], b["views"][name], err_msg=f"{what} views/{name}")


@pytest.fixture(scope="module")
def config(tfds_data_dir):
    """The tiny smoke config; skips the test when CIFAR-10 is not under TFDS_DATA_DIR."""
    return make_smoke_config()


@pytest.fixture(scope="module")
def stream(config):
    """The first NUM_BATCHES batches of a run started at step 0."""
    it = pipeline.train_batches(config, 0, STEPS_PER_EPOCH, LOCAL_BATCH)
    return list(itertools.islice(it, NUM_BATCHES))


@pytest.mark.parametrize("start_step", [1, 3])
def test_train_batches_resumed_at_step_s_yield_batch_s(config, stream, start_step):
    """An iterator started at step s yields exactly the batch the step-0 iterator yields s-th:
    inside the first epoch (1) and inside a later epoch, reached across an epoch boundary (3)."""
    resumed = pipeline.train_batches(config, start_step, STEPS_PER_EPOCH, LOCAL_BATCH)
    _assert_batches_equal(next(resumed), stream[start_step], f"start_step={start_step}")
    if start_step + 1 < NUM_BATCHES:
        _assert_batches_equal(next(resumed), stream[start_step + 1], f"start_step={start_step}, 2nd batch")


def test_train_batches_have_configured_shapes(config, stream):
    aug = config.augment
    g, s = aug.global_crops, aug.local_crops
    for batch in stream:
        assert set(batch) == {"views"} and set(batch["views"]) == {"global", "local"}
        assert batch["views"]["global"].shape == (LOCAL_BATCH, g.number, g.size, g.size, 3)
        assert batch["views"]["local"].shape == (LOCAL_BATCH, s.number, s.size, s.size, 3)
        for view in batch["views"].values():
            assert view.dtype == np.float32
            assert np.isfinite(view).all()
            assert 0.3 < view.std() < 3.0, "views should be normalised by mean/std"
    # Consecutive batches, and the two global crops of one image, are different views.
    assert not np.array_equal(stream[0]["views"]["global"], stream[1]["views"]["global"])
    assert not np.array_equal(stream[0]["views"]["global"][:, 0], stream[0]["views"]["global"][:, 1])


def _identity_views(image, seed, augment_cfg):
    """A stand-in for augment.multi_crop that keeps the image recognisable: no randomness."""
    del seed
    image = tf.image.convert_image_dtype(image, tf.float32)

    def views(crops):
        resized = tf.image.resize(image, [crops.size, crops.size])
        return tf.stack([resized] * crops.number)

    return {"global": views(augment_cfg.global_crops), "local": views(augment_cfg.local_crops)}, {}


def test_each_epoch_is_a_new_permutation(config, monkeypatch):
    """With augmentation replaced by an identity, the examples are recognisable: every epoch
    holds distinct examples, in an order (and selection) that differs from epoch to epoch, and
    re-reading an epoch gives the same order."""
    monkeypatch.setattr(pipeline.augment, "multi_crop", _identity_views)

    def examples(start_step, num_steps):
        it = pipeline.train_batches(config, start_step, STEPS_PER_EPOCH, LOCAL_BATCH)
        images = np.concatenate([b["views"]["global"][:, 0] for b in itertools.islice(it, num_steps)])
        return [img.tobytes() for img in images]

    per_epoch = STEPS_PER_EPOCH * LOCAL_BATCH
    run = examples(0, 3 * STEPS_PER_EPOCH)
    epochs = [run[i * per_epoch:(i + 1) * per_epoch] for i in range(3)]
    for e, ex in enumerate(epochs):
        assert len(set(ex)) == per_epoch, f"epoch {e} repeats an example"
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != epochs[2]
    assert examples(STEPS_PER_EPOCH, STEPS_PER_EPOCH) == epochs[1]


@pytest.mark.parametrize("num_batches", [3, 5])
def test_eval_batches_pad_to_exactly_num_batches(config, num_batches):
    """'test[:90]' in batches of 32: 90 real rows (mask 1) first, then mask-0 padding up to
    exactly num_batches batches (3 is ceil(90/32); 5 is what a process with less data gets)."""
    split, batch = "test[:90]", 32
    size = pipeline.num_examples(config.dataset, split)
    assert size == 90
    batches = list(pipeline.eval_batches(config, split, batch, num_batches))
    assert len(batches) == num_batches
    crop = config.eval.crop
    for b in batches:
        assert b["image"].shape == (batch, crop, crop, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (batch,) and b["mask"].shape == (batch,)
        assert np.isfinite(b["image"]).all()
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    assert mask.sum() == size
    np.testing.assert_array_equal(mask, np.arange(num_batches * batch) < size)
    assert ((labels[mask == 1] >= 0) & (labels[mask == 1] < config.dataset.num_classes)).all()
    assert len(np.unique(labels[mask == 1])) > 1
    assert len({img.tobytes() for img in images[mask == 1]}) == size, "real rows must be distinct examples"


def test_eval_batches_follow_split_order(config):
    """Eval rows are the split's examples in order (the same 10 images as the first 10 of 'test[:90]')."""
    first = next(pipeline.eval_batches(config, "test[:10]", 16, 1))
    longer = next(pipeline.eval_batches(config, "test[:90]", 16, 1))
    np.testing.assert_array_equal(first["image"][:10], longer["image"][:10])
    np.testing.assert_array_equal(first["label"][:10], longer["label"][:10])
    np.testing.assert_array_equal(first["mask"], np.arange(16) < 10)


def test_missing_data_dir_raises_file_not_found_naming_tfds_data_dir(tmp_path):
    config = make_smoke_config(**{"dataset.data_dir": str(tmp_path / "no_tfds_here")})
    with pytest.raises(UserError, match="TFDS_DATA_DIR") as info:
        pipeline.train_batches(config, 0, STEPS_PER_EPOCH, LOCAL_BATCH)
    assert str(tmp_path / "no_tfds_here") in str(info.value)
    with pytest.raises(UserError, match="TFDS_DATA_DIR"):
        pipeline.num_examples(config.dataset, "train")
    with pytest.raises(UserError, match="TFDS_DATA_DIR"):
        pipeline.eval_batches(config, "test", 16, 1)


def test_nonexistent_data_dir_fails_at_once_even_when_downloads_are_allowed(tmp_path):
    """A mistyped data dir must not start a download (minutes of retries offline) nor create it."""
    missing = tmp_path / "typo_tfds"
    config = make_smoke_config(**{"dataset.data_dir": str(missing), "dataset.download": True})
    with pytest.raises(UserError, match="does not exist.*TFDS_DATA_DIR"):
        pipeline.num_examples(config.dataset, "train")
    assert not missing.exists()
