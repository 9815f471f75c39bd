"""Daino: semi-supervised DINO with class prototypes (Fini et al., "Semi-supervised Learning Made Simple
with Self-supervised Clustering", CVPR 2023), `ssl_jax/methods/semisup.py`.

    python -m ssl_jax.main --config=configs/daino_small.py --workdir=DIR            # ImageNet, 10 % labels
    python -m ssl_jax.main --config=configs/daino_small.py:cifar10 --workdir=DIR    # CIFAR-10, 10 % labels
    python -m ssl_jax.main --config=configs/daino_small.py:smoke --workdir=DIR      # seconds, tiny shapes

From the paper: DINO with one prototype (last-layer output) per class, the labels as the targets where
known, one cross-entropy; 1 % and 10 % label settings (`dataset.labelled_fraction`). Everything else
is DINO's recipe (`configs/dino_small.py`), which the authors' code (not available to us) may tune
differently: those values are assumed, not checked.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

from ssl_jax import config_base as base


def _dino():
    """configs/dino_small.py, loaded by path (config files are not a package)."""
    spec = importlib.util.spec_from_file_location("dino_small", os.path.join(os.path.dirname(__file__),
                                                                             "dino_small.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def semi_supervised(c: ml_collections.ConfigDict, labelled_fraction: float) -> ml_collections.ConfigDict:
    c.method.name = "daino"
    c.method.out_dim = c.dataset.num_classes  # class prototypes
    c.dataset.fields = ("label",)
    c.dataset.labelled_fraction = labelled_fraction
    c.dataset.labelled_only = False  # True: the labelled images alone (the supervised-only baseline)
    # The class prototypes must learn from the labels: the last layer frozen for DINO's first epoch
    # only (dino_small's CIFAR-10 preset freezes it for the whole run).
    c.optim.freeze_epochs = 1
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (10 % of ImageNet labelled), 'cifar10' (10 % of CIFAR-10), 'smoke'."""
    dino = _dino()
    return base.select_preset({
        "imagenet": lambda: semi_supervised(dino.imagenet_config(), 0.1),  # the paper's 10 % setting
        "cifar10": lambda: semi_supervised(dino.cifar10_config(), 0.1),
        "smoke": lambda: semi_supervised(dino.smoke_config(), 0.5)}, preset, __file__)
