"""Named flax modules applied in sequence, with their BatchNorm statistics kept apart.

    network = Network({"backbone": resnet(50), "projector": ProjectionMLP(...)})
    params, stats = network.init(rng, images)
    z, stats = network.apply(params, stats, images, train=True, rng=rng)

`params` maps each module's name to its parameters; `stats` maps the name of each
module that has BatchNorm to its `batch_stats` (modules without BatchNorm, such as a
ViT, have no entry). Keeping them per module lets a method run part of the chain
(`upto="projector"`, `start="predictor"`), hand one sub-tree to an EMA teacher, or evaluate the backbone
alone. Every module is called as `module(x, train=...)`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

PyTree = Any


class Network:
    """A chain x -> modules[0] -> modules[1] -> ... of flax modules."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = dict(modules)

    def init(self, rng: jax.Array, x: jax.Array) -> tuple[dict, dict]:
        """(params, stats) for an example input x [B, ...]."""
        params, stats = {}, {}
        for (name, module), module_rng in zip(self.modules.items(), jax.random.split(rng, len(self.modules))):
            variables = module.init({"params": module_rng}, x, train=False)
            params[name] = variables["params"]
            if "batch_stats" in variables:
                stats[name] = variables["batch_stats"]
            x = module.apply(variables, x, train=False)
        return params, stats

    def apply(self, params: dict, stats: dict, x: jax.Array, *, train: bool, rng: jax.Array | None = None,
              start: str | None = None, upto: str | None = None) -> tuple[jax.Array, dict]:
        """Runs the modules in order, from `start` through `upto` (inclusive; default all).

        Returns (output, new_stats). With train=True BatchNorm normalises with the
        batch's statistics and `new_stats` holds the updated running averages;
        with train=False it uses the running averages and `new_stats` is `stats`.
        `rng` feeds the modules' "drop_path" randomness (ViT) when training.
        """
        new_stats = dict(stats)
        names = list(self.modules)
        names = names[names.index(start) if start else 0:names.index(upto) + 1 if upto else len(names)]
        rngs = jax.random.split(rng, len(names)) if rng is not None else [None] * len(names)
        for name, module_rng in zip(names, rngs):
            variables = {"params": params[name]}
            if name in stats:
                variables["batch_stats"] = stats[name]
            module = self.modules[name]
            module_rngs = {"drop_path": module_rng} if train and module_rng is not None else None
            if train and name in stats:
                x, updated = module.apply(variables, x, train=True, rngs=module_rngs, mutable=["batch_stats"])
                new_stats[name] = updated["batch_stats"]
            else:
                x = module.apply(variables, x, train=train, rngs=module_rngs)
        return x, new_stats
