"""Method registry: config.method.name -> the class implementing `ssl_jax.methods.base.Method`."""
from __future__ import annotations

from ssl_jax.methods.dino import DINO

METHODS = {"dino": DINO}


def build_method(config, steps_per_epoch: int):
    """Instantiates the method named by config.method.name."""
    name = config.method.name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name](config, steps_per_epoch)
