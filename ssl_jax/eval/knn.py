"""Weighted k-nearest-neighbour classification on frozen features (DINO's protocol).

Features are L2-normalised; each test sample's k most cosine-similar training
samples vote for their class with weight exp(similarity / T) (`eval_knn.py`,
k=20, T=0.07).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _vote(test: jax.Array, train: jax.Array, train_labels: jax.Array, k: int, temperature: float,
          num_classes: int) -> jax.Array:
    """Predicted class [b] of each (normalised) test row by a similarity-weighted top-k vote."""
    similarity = test @ train.T  # [b, N]
    top_sim, top_idx = jax.lax.top_k(similarity, k)  # [b, k]
    weights = jnp.exp(top_sim / temperature)
    votes = jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None]  # [b, k, C]
    return jnp.argmax(jnp.sum(votes, axis=1), axis=-1)



def knn_predict(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, *,
                k: int = 20, temperature: float = 0.07, num_classes: int, chunk: int = 1000) -> np.ndarray:
    """Predicted labels [M] for test_features [M, D] from train_features [N, D], train_labels [N]."""
    train = jnp.asarray(l2_normalize_rows(np.asarray(train_features, np.float32)))
    test = l2_normalize_rows(np.asarray(test_features, np.float32))
    labels = jnp.asarray(train_labels, jnp.int32)
    predictions = [np.asarray(_vote(jnp.asarray(test[i:i + chunk]), train, labels, k, temperature, num_classes))
                   for i in range(0, len(test), chunk)]
    return np.concatenate(predictions)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, k: int = 20,
                 temperature: float = 0.07, num_classes: int) -> float:
    """Top-1 accuracy in [0, 1] of the weighted kNN classifier."""
    predictions = knn_predict(train_features, train_labels, test_features, k=k, temperature=temperature,
                              num_classes=num_classes)
    return float(np.mean(predictions == np.asarray(test_labels)))
