"""The batch layout every method consumes, and in-memory example batches.

    batch = {"views": {"global": [B, G, S, S, 3], "local": [B, L, s, s, 3]}}

float32, normalised with config.augment.mean/std. `example_batch` builds one of
the right shapes without tensorflow (for `init`, tests and benchmarks).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def view_shapes(augment_cfg, batch_size: int) -> dict[str, tuple[int, ...]]:
    """{'global': (B, G, S, S, 3), 'local': (B, L, s, s, 3)}; 'local' only when L > 0."""
    shapes = {"global": (batch_size, augment_cfg.global_crops.number, augment_cfg.global_crops.size,
                         augment_cfg.global_crops.size, 3)}
    if augment_cfg.local_crops.number:
        shapes["local"] = (batch_size, augment_cfg.local_crops.number, augment_cfg.local_crops.size,
                           augment_cfg.local_crops.size, 3)
    return shapes


def example_batch(augment_cfg, batch_size: int, rng: jax.Array | None = None) -> dict:
    """A batch of the configured shapes: zeros, or standard-normal values when `rng` is given."""
    shapes = view_shapes(augment_cfg, batch_size)
    if rng is None:
        return {"views": {k: np.zeros(s, np.float32) for k, s in shapes.items()}}
    keys = jax.random.split(rng, len(shapes))
    return {"views": {k: np.asarray(jax.random.normal(key, s, jnp.float32)) for key, (k, s) in zip(keys, shapes.items())}}
