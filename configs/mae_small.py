"""MAE with a ViT-S/16 encoder: configs/mae_base.py's recipe with `vit_small`.

The MAE paper trains ViT-B/L/H only; ViT-S/16 with the same recipe (decoder 512 x 8,
75 % masking, norm-pix targets, AdamW 0.9/0.95, blr 1.5e-4, 40 warm-up epochs) is the
usual small baseline. The `:cifar10` and `:smoke` presets are mae_base.py's.

    python -m ssl_jax.main --config=configs/mae_small.py:cifar10 --workdir=DIR
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location("mae_base_config", os.path.join(os.path.dirname(__file__), "mae_base.py"))
mae_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mae_base)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the recipe on ViT-S/16), 'cifar10', 'smoke' (as mae_base.py)."""
    c = mae_base.get_config(preset)
    if preset in ("", "imagenet"):
        c.model.size = "small"  # vit_small: 384 wide, 12 blocks, 6 heads
    return c
