"""Frozen-backbone features of a whole split, computed over the mesh (imports tensorflow)."""
from __future__ import annotations

import math

import jax
import numpy as np

from ssl_jax import sharding
from ssl_jax.data import pipeline
from ssl_jax.sharding import batch_sharding, replicated


def extract_features(config, features_fn, variables, split: str, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, D] and labels [N] of every example of `split` of the eval dataset (all processes).

    features_fn(variables, images [b, H, W, 3]) -> [b, D] runs jitted over the mesh
    on images preprocessed as config.eval says.
    """
    global_batch = config.eval.batch_size
    local_batch = sharding.check_global_batch(global_batch, mesh, field="eval.batch_size")
    num_batches = math.ceil(pipeline.num_examples(pipeline.eval_dataset(config), split) / global_batch)
    jitted = jax.jit(features_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                     out_shardings=replicated(mesh))
    features, labels = [], []
    for batch in pipeline.eval_batches(config, split, local_batch, num_batches):
        batch = sharding.to_global_batch(batch, mesh)
        out = jitted(variables, batch["image"])
        mask = np.asarray(jax.device_get(_replicate(batch["mask"], mesh))).astype(bool)
        features.append(np.asarray(jax.device_get(out))[mask])
        labels.append(np.asarray(jax.device_get(_replicate(batch["label"], mesh)))[mask])
    return np.concatenate(features), np.concatenate(labels)


def _replicate(x, mesh):
    """A global batch-sharded array copied to every device (so every process can read it)."""
    return jax.jit(lambda y: y, out_shardings=replicated(mesh))(x)
