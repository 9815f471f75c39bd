"""Suave: semi-supervised SwAV with class prototypes (Fini et al., "Semi-supervised Learning Made Simple
with Self-supervised Clustering", CVPR 2023), `ssl_jax/methods/semisup.py`.

    python -m ssl_jax.main --config=configs/suave_resnet50.py --workdir=DIR            # ImageNet, 10 % labels
    python -m ssl_jax.main --config=configs/suave_resnet50.py:cifar10 --workdir=DIR    # CIFAR-10, 10 % labels
    python -m ssl_jax.main --config=configs/suave_resnet50.py:smoke --workdir=DIR      # seconds, tiny shapes

From the paper: SwAV with one prototype per class, the labels as targets where known, one cross-entropy;
1 % and 10 % label settings (`dataset.labelled_fraction`). Everything else is SwAV's recipe
(`configs/swav_resnet50.py`), which the authors' code (not available to us) may tune differently:
those values are assumed, not checked.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

from ssl_jax import config_base as base


def _swav():
    """configs/swav_resnet50.py, loaded by path (config files are not a package)."""
    spec = importlib.util.spec_from_file_location("swav_resnet50", os.path.join(os.path.dirname(__file__),
                                                                                "swav_resnet50.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def semi_supervised(c: ml_collections.ConfigDict, labelled_fraction: float) -> ml_collections.ConfigDict:
    c.method.name = "suave"
    c.method.num_prototypes = c.dataset.num_classes  # class prototypes
    c.method.queue_length = 0  # assumed: the Sinkhorn batch is large next to K = number of classes
    c.dataset.fields = ("label",)
    c.dataset.labelled_fraction = labelled_fraction
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (10 % of ImageNet labelled), 'cifar10' (10 % of CIFAR-10), 'smoke'."""
    swav = _swav()
    return base.select_preset({
        "imagenet": lambda: semi_supervised(swav.imagenet_config(), 0.1),  # the paper's 10 % setting
        "cifar10": lambda: semi_supervised(swav.cifar10_config(), 0.1),
        "smoke": lambda: semi_supervised(swav.smoke_config(), 0.5)}, preset, __file__)
