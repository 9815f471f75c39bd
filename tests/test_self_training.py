"""Self-training (`ssl_jax/eval/self_training.py`, `python -m ssl_jax.self_train`): Yalniz et al.'s
top-K-per-class selection against a brute-force loop over classes and images; the fine-tuning input
trains each image once under each label it is given; the command line runs teacher, selection and
student on a tiny DINO run trained in this process, on the real CIFAR-10 files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import main_process
from conftest import REPO, make_smoke_config
from ssl_jax.eval.self_training import select_top_k


def brute_force_selection(scores, candidates, top_k, top_p):
    """Yalniz et al. Sec. 3.1, literally: each image keeps the classes of its top_p scores; for each
    class, rank the candidate images that kept it by their score for it and take the first top_k.
    Returns the set of (image, class) pairs."""
    n, c = scores.shape
    kept = [set(sorted(range(c), key=lambda j: (-scores[i, j], j))[:top_p]) for i in range(n)]
    pairs = set()
    for cls in range(c):
        ranked = sorted((i for i in range(n) if candidates[i] and cls in kept[i]), key=lambda i: (-scores[i, cls], i))
        pairs |= {(i, cls) for i in ranked[:top_k]}
    return pairs


@pytest.mark.parametrize("top_k,top_p", [(3, 1), (4, 2), (100, 3), (1, 5)])
def test_selection_matches_a_brute_force_top_k_per_class(top_k, top_p):
    rng = np.random.default_rng(top_k * 10 + top_p)
    logits = rng.normal(size=(40, 5)) * 2
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    candidates = rng.random(40) < 0.7
    labels = select_top_k(scores, candidates, top_k, top_p)
    assert labels.shape == (40, min(top_p, 5)) and labels.dtype == np.int32
    pairs = {(i, int(c)) for i in range(40) for c in labels[i] if c >= 0}
    assert pairs == brute_force_selection(scores, candidates, top_k, top_p)
    for row in labels:  # the classes first, in increasing order, then -1
        classes = row[row >= 0]
        assert list(classes) == sorted(classes) and (row[len(classes):] == -1).all()
    assert not (labels[~candidates] >= 0).any()


def test_an_image_can_be_selected_for_several_classes():
    """Image 0 is every class's best and keeps classes 0 and 1 (top_p 2): it is selected for both;
    with top_p 1 only for class 0 (its top class), and no image keeps class 1 (none is selected for it)."""
    scores = np.array([[0.5, 0.4, 0.1], [0.3, 0.2, 0.5], [0.1, 0.35, 0.55]])
    assert select_top_k(scores, np.ones(3, bool), top_k=1, top_p=2).tolist() == [[0, 1], [-1, -1], [2, -1]]
    assert select_top_k(scores, np.ones(3, bool), top_k=1, top_p=1).tolist() == [[0], [-1], [2]]


def test_labelled_mask_draws_the_fraction_from_the_seed():
    from ssl_jax.eval.self_training import labelled_mask

    mask = labelled_mask(2000, 0.1, seed=0)
    assert mask.shape == (2000,) and abs(mask.mean() - 0.1) < 0.02
    assert (labelled_mask(2000, 0.1, seed=1) != mask).any()


def test_fine_tuning_batches_train_each_image_once_under_each_given_label(tfds_data_dir):
    """labels [N, P]: image 0 under labels 3 and 5, images 1-6 under one label each, image 7 not at all:
    one epoch is those 8 copies (global batch 8), whatever the images' own labels."""
    from ssl_jax.eval.supervised_data import augmented_batches
    from ssl_jax.sharding import make_mesh

    config = make_smoke_config(**{"eval.train_split": "train[:8]"})
    labels = np.array([[3, 5], [0, -1], [1, -1], [2, -1], [4, -1], [6, -1], [7, -1], [-1, -1]], np.int32)
    batches = augmented_batches(config, "train[:8]", 8, (0.2, 1.0), seed=0, mesh=make_mesh(), labels=labels)
    for _ in range(2):  # two epochs, each a new order of the same copies
        batch = next(batches)
        assert batch["image"].shape == (8, config.eval.crop, config.eval.crop, 3)
        assert sorted(np.asarray(batch["label"]).tolist()) == [0, 1, 2, 3, 4, 5, 6, 7]


@pytest.fixture(scope="module")
def run(tfds_data_dir, tmp_path_factory):
    """A tiny DINO run of 2 steps, trained in this process (tests/test_evaluate.py's fixture)."""
    from ssl_jax import train

    config = make_smoke_config(num_epochs=1)
    config.steps_per_epoch = 2
    path = str(tmp_path_factory.mktemp("self_train_run") / "dino")
    train.train_and_evaluate(config, path)
    return path


@pytest.mark.slow  # the suite's 15-minute CI budget: run with -m slow
def test_self_training_command_line_end_to_end(run, tmp_path):
    """10 % of train[:500] labelled (the run's seed draws them), top-20 per class of the rest."""
    proc = main_process.run([f"--checkpoint={run}", f"--workdir={tmp_path}",
                             f"--config={os.path.join(REPO, 'configs', 'self_training.py')}:smoke",
                             f"--protocol={os.path.join(REPO, 'configs', 'eval_protocols.py')}:smoke"],
                            "ssl_jax.self_train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "self_training.json").read_text())
    assert results["labelled_images"] + results["unlabelled_images"] == 500
    assert 20 <= results["labelled_images"] <= 80
    # top_p 1: each image under its teacher's top class at most once; at most 20 per class (fewer where the
    # barely trained teacher ranks a class first for fewer images)
    assert 0 < results["pseudo_labels"] == results["pseudo_labelled_images"] <= 10 * 20
    for key in ("teacher_test_top1", "student_test_top1", "student_finetuned_test_top1", "pseudo_label_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert f"| teacher: labelled images only (supervised baseline) | {100 * results['teacher_test_top1']:.2f} % |" \
        in proc.stdout


def test_student_dropout_drops_the_pooled_feature_before_the_head():
    """FineTuner's `dropout` (Noisy Student's): at rate 1 every pooled feature is dropped in training, so
    the logits are the head's bias; at rate 0 (drop path off too) training logits are the evaluation ones."""
    import jax

    from ssl_jax.eval import finetune
    from ssl_jax.evaluate import load_protocol
    from ssl_jax.models.backbones import backbone_kwargs, build_backbone

    config = make_smoke_config()
    images = jax.random.normal(jax.random.key(1), (2, config.model.img_size, config.model.img_size, 3))
    backbone = build_backbone(config.model, with_drop_path=False, **backbone_kwargs(config))
    params = backbone.init(jax.random.key(0), images)["params"]
    for rate in (1.0, 0.0):
        cfg = load_protocol("smoke").finetune
        cfg.update({"dropout": rate, "drop_path": 0.0})
        tuner = finetune.FineTuner(config, cfg, params, num_classes=10)
        tuner.params["head"]["bias"] = np.arange(10, dtype=np.float32)
        trained = tuner.logits(tuner.params, images, train=True, rng=jax.random.key(2))
        want = np.broadcast_to(np.arange(10), (2, 10)) if rate else tuner.logits(tuner.params, images)
        np.testing.assert_allclose(trained, want, rtol=1e-6, atol=1e-6)
