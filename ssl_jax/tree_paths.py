"""Names of pytree leaves: a jax key path as the plain names the code and the configs use.

A key path from `jax.tree_util.tree_flatten_with_path` / `tree_map_with_path` is a tuple of
`DictKey` (dict keys), `GetAttrKey` (dataclass and namedtuple fields: TrainState, optax
states) and `SequenceKey` (list and tuple indices); both helpers read each one's plain name
the same way (`jax.tree_util.keystr(..., simple=True)`), so a TrainState leaf is
`params/backbone/blocks_0/attn/qkv/kernel` and an Adam moment `opt_state/0/mu/backbone/...`.
"""
from __future__ import annotations

from jax.tree_util import KeyPath, keystr


def path_name(path: KeyPath) -> str:
    """The '/'-joined name, 'a/b/0/c', that parameter regexes (optimizer groups, FSDP rules) match."""
    return keystr(path, simple=True, separator="/")


def path_parts(path: KeyPath) -> tuple[str, ...]:
    """The names one by one, ('a', 'b', '0', 'c'): a key that contains '/' stays whole."""
    return tuple(keystr((key,), simple=True) for key in path)
