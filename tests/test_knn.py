"""Weighted kNN (DINO's eval_knn.knn_classifier) against a float64 numpy reference, and the
kNN-curve reader used for the training-time plot."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ssl_jax.eval.knn import knn_accuracy, knn_predict
from ssl_jax.eval.plot_knn import knn_curve


def numpy_knn_classifier(train, train_labels, test, k, temperature, num_classes):
    """eval_knn.knn_classifier: cosine top-k, weights exp(sim / T), argmax of summed one-hot votes."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    predictions = []
    for row in test.astype(np.float64) @ train.astype(np.float64).T:
        top = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for index in top:
            votes[train_labels[index]] += np.exp(row[index] / temperature)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


@pytest.mark.parametrize("k, num_classes", [(1, 3), (5, 4), (20, 10)])
def test_knn_predict_matches_numpy_reference(k, num_classes):
    rng = np.random.RandomState(k)
    train = rng.randn(200, 16)
    labels = rng.randint(0, num_classes, 200)
    test = rng.randn(50, 16)
    expected = numpy_knn_classifier(train, labels, test, k, 0.07, num_classes)
    got = knn_predict(train, labels, test, k=k, temperature=0.07, num_classes=num_classes, chunk=16)
    np.testing.assert_array_equal(got, expected)


def test_knn_is_invariant_to_feature_scale_and_separates_clusters():
    rng = np.random.RandomState(0)
    centers = rng.randn(3, 8) * 10
    labels = np.repeat(np.arange(3), 30)
    train = centers[labels] + rng.randn(90, 8)
    test_labels = np.repeat(np.arange(3), 5)
    test = centers[test_labels] + rng.randn(15, 8)
    assert knn_accuracy(train, labels, test, test_labels, k=10, num_classes=3) == 1.0
    scaled = knn_predict(train * rng.uniform(0.1, 10, (90, 1)), labels, test * 3.0, k=10, num_classes=3)
    np.testing.assert_array_equal(scaled, test_labels)


def test_knn_curve_places_evaluations_at_logged_training_time(tmp_path):
    rows = [{"step": 10, "split": "train", "train_seconds": 60.0},
            {"step": 20, "split": "train", "train_seconds": 180.0},
            {"step": 15, "split": "eval", "knn_top1@20": 0.3},
            {"step": 20, "split": "eval", "knn_top1@20": 0.5}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    minutes, steps, accuracy = knn_curve(str(path), "knn_top1@20")
    np.testing.assert_allclose(minutes, [2.0, 3.0])  # step 15: halfway between 60 s and 180 s
    np.testing.assert_array_equal(steps, [15, 20])
    np.testing.assert_allclose(accuracy, [0.3, 0.5])


def test_knn_through_the_eval_pipeline_retrieves_each_test_image_from_the_memory_bank(tfds_data_dir):
    """The whole kNN evaluation (CIFAR-10 read, eval transform, sharded feature extraction over 8
    devices, labels carried along, weighted vote) on raw pixels, with the test split inside the
    memory bank: every test image's nearest neighbour is itself, so k = 1 must score exactly 100 %
    (a label or order mismatch between features and labels cannot), and 20 disjoint images score less."""
    from conftest import make_smoke_config
    from ssl_jax.eval.knn_eval import raw_pixel_knn
    from ssl_jax.sharding import make_mesh

    config = make_smoke_config(**{"eval.train_split": "train[:200]", "eval.test_split": "train[40:120]",
                                  "eval.batch_size": 40, "eval.knn_k": (1,)})
    mesh = make_mesh()
    assert raw_pixel_knn(config, mesh) == {"knn_top1@1": 1.0}
    config.eval.test_split = "train[200:280]"
    assert raw_pixel_knn(config, mesh)["knn_top1@1"] < 1.0
