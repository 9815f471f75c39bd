"""The one training state pytree, and the EMA teacher update.

Everything a run needs to continue lives in `TrainState`, so a checkpoint of it
(plus the config) resumes a run exactly. Fields a method does not use are `None`
(e.g. `teacher` for SimCLR, `model_state` for a ViT without BatchNorm).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params: the trained (student) parameters; opt_state: optax state;
    teacher: EMA copy of the part of `params` the method's teacher uses, or None;
    method_state: e.g. DINO's center [K]; model_state: non-trained variables such as
    BatchNorm statistics, or None; rng: PRNG key, split once per step."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    teacher: PyTree
    method_state: PyTree
    model_state: PyTree
    rng: jax.Array


def ema_update(teacher: PyTree, student: PyTree, momentum: jax.Array) -> PyTree:
    """teacher <- m * teacher + (1 - m) * student, leaf by leaf (DINO's momentum update)."""
    return jax.tree.map(lambda t, s: t * momentum + (1.0 - momentum) * s.astype(t.dtype), teacher, student)


def tree_global_norm(tree: PyTree) -> jax.Array:
    """sqrt of the sum of squares of every leaf, in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
