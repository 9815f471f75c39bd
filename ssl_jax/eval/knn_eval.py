"""kNN evaluation of a TrainState on the configured dataset (DINO protocol), and its baselines."""
from __future__ import annotations

import jax.numpy as jnp

from ssl_jax.data import pipeline
from ssl_jax.eval.features import extract_features
from ssl_jax.eval.knn import knn_accuracy


def knn_of_features(config, features_fn, variables, mesh) -> dict[str, float]:
    """{'knn_top1@k': accuracy} for each k in config.eval.knn_k, memory bank = eval.train_split."""
    train_x, train_y = extract_features(config, features_fn, variables, config.eval.train_split, mesh)
    test_x, test_y = extract_features(config, features_fn, variables, config.eval.test_split, mesh)
    return {f"knn_top1@{k}": knn_accuracy(train_x, train_y, test_x, test_y, k=k,
                                          temperature=config.eval.knn_temperature,
                                          num_classes=pipeline.eval_num_classes(config))
            for k in config.eval.knn_k}


def evaluate_knn(config, method, state, mesh) -> dict[str, float]:
    """kNN accuracy of the method's evaluation backbone (DINO: the teacher) in `state`."""
    variables = (method.eval_variables(state), state.model_state)
    return knn_of_features(config, lambda v, images: method.features(v[0], v[1], images), variables, mesh)


def raw_pixel_knn(config, mesh) -> dict[str, float]:
    """Baseline: kNN on the flattened, normalised eval images."""
    return knn_of_features(config, lambda _, images: images.reshape(images.shape[0], -1), jnp.zeros(()), mesh)
