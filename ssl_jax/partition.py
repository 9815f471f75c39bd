"""Parameter sharding (FSDP) from rules that are config data: path regex -> PartitionSpec.

    config.parallel.fsdp = 4                 # mesh ("data", "fsdp") = (devices / 4, 4)
    config.parallel.rules = ((r"/kernel$", ("fsdp", None)), ...)

Every array leaf of the TrainState has a '/'-joined path (`params/backbone/blocks_0/attn/
qkv/kernel`, `opt_state/.../mu/backbone/...`, `teacher/...`); the first rule whose regex
matches it (re.search) gives its PartitionSpec, so one rule shards a parameter, its Adam
moments and its EMA teacher copy alike. A leaf no rule matches, or whose sharded
dimension the fsdp axis does not divide (small biases, norms, DINO's center, scalars),
stays replicated. The step is then jitted with these shardings as its state's in/out
shardings; XLA all-gathers each weight where it is used and reduce-scatters its gradient
(ZeRO-3 / FSDP), and the batch is split over both mesh axes.
"""
from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax.tree_paths import path_name

PyTree = Any

FSDP_AXIS = "fsdp"

# The default rules (config_base.base_config): every large matrix of a ViT, a ResNet and
# their heads is sharded over its largest or input dimension; 1-D leaves stay replicated.
DEFAULT_RULES = (
    (r"conv[^/]*/kernel$", (None, None, None, FSDP_AXIS)),  # ResNet convolutions [kh, kw, in, out]: out
    (r"last_layer/v$", (None, FSDP_AXIS)),  # DINO's prototypes [bottleneck, K]: K (65536)
    (r"/kernel$", (FSDP_AXIS, None)),  # Dense [in, out]: in
    (r"(pos_embed|cls_token)$", (None, None, FSDP_AXIS)),  # ViT [1, N, D]: D
)


def leaf_spec(name: str, shape: tuple[int, ...], mesh: Mesh, rules) -> P:
    """The PartitionSpec of one leaf: its first matching rule's, or P() where that does not fit."""
    for pattern, spec in rules:
        if re.search(pattern, name):
            spec = tuple(spec)
            fits = len(spec) <= len(shape) and all(
                axis is None or (axis in mesh.shape and shape[i] % mesh.shape[axis] == 0)
                for i, axis in enumerate(spec))
            return P(*spec) if fits else P()
    return P()


def state_shardings(abstract_state: PyTree, mesh: Mesh, rules) -> PyTree:
    """NamedShardings for every leaf of a (possibly abstract) state; all replicated on a mesh
    without an `fsdp` axis of size > 1, so the default run compiles exactly as before."""
    if mesh.shape.get(FSDP_AXIS, 1) <= 1 or not rules:
        return jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract_state)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, leaf_spec(path_name(path), tuple(leaf.shape), mesh, rules)),
        abstract_state)


def bytes_per_device(abstract_state: PyTree, shardings: PyTree) -> int:
    """Bytes one device holds of the state under `shardings` (its largest shard of each leaf)."""
    leaves = jax.tree.leaves(abstract_state)
    total = 0
    for leaf, sharding in zip(leaves, jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue  # the rng: a few bytes
        shard = sharding.shard_shape(tuple(leaf.shape))
        count = 1
        for dim in shard:
            count *= dim
        total += count * leaf.dtype.itemsize
    return total
