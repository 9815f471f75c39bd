"""Multi-crop forward: one backbone call per crop resolution.

DINO's `MultiCropWrapper` groups crops by resolution and runs each group as one
batch; here the groups are the entries of the batch's `views` dict. Keeping the
batch axis first ([B, V, ...] -> [B*V, ...]) keeps a batch sharded on the mesh's
`data` axis sharded the same way after the reshape, with no data movement.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp


def apply_per_resolution(fn: Callable[[jax.Array, jax.Array], jax.Array],
                         view_groups: Sequence[jax.Array], rng: jax.Array) -> jax.Array:
    """Runs `fn(images [B*V_g, H_g, W_g, 3], rng) -> [B*V_g, D]` once per group.

    view_groups: a sequence of [B, V_g, H_g, W_g, 3] arrays (e.g. global, local).
    Returns [B, sum_g V_g, D], the groups concatenated in order along the view axis.
    """
    out, _ = apply_per_resolution_with_state(lambda images, group_rng, state: (fn(images, group_rng), state),
                                             view_groups, rng, None)
    return out


def apply_per_resolution_with_state(fn: Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]],
                                    view_groups: Sequence[jax.Array], rng: jax.Array, state: Any) -> tuple[jax.Array, Any]:
    """`apply_per_resolution` for a backbone with state (a ResNet's BatchNorm statistics):
    `fn(images, rng, state) -> (out, new_state)` is called once per group with the state the
    previous group returned, as SwAV's `_forward_backbone` runs its BatchNorm once per crop
    size. Returns ([B, sum_g V_g, D], the last state)."""
    outputs = []
    for group, group_rng in zip(view_groups, jax.random.split(rng, len(view_groups))):
        batch, views = group.shape[:2]
        out, state = fn(group.reshape((batch * views,) + group.shape[2:]), group_rng, state)
        outputs.append(out.reshape((batch, views) + out.shape[1:]))
    return jnp.concatenate(outputs, axis=1), state
