"""BYOL ResNet-50 (Grill et al., "Bootstrap Your Own Latent", 2020).

    python -m ssl_jax.main --config=configs/byol_resnet50.py --workdir=DIR            # ImageNet, the paper
    python -m ssl_jax.main --config=configs/byol_resnet50.py:cifar10 --workdir=DIR    # CIFAR-10 ResNet-18
    python -m ssl_jax.main --config=configs/byol_resnet50.py:cifar10_vit --workdir=DIR  # CIFAR-10, ViT, on a CPU
    python -m ssl_jax.main --config=configs/byol_resnet50.py:smoke --workdir=DIR      # seconds, tiny shapes

Defaults are the paper's (Sec. 3.3, App. B and C) as implemented in
deepmind-research/byol (`configs/byol.py`).
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 4096  # Sec. 3.3
    c.num_epochs = 1000  # the 74.3 % linear-eval result (300 epochs: 72.5 %)
    c.model = base.resnet_model(50)
    # utils/networks.py ResNetTorso: hk.Conv2D's default init (truncated normal, stddev 1 / sqrt(fan_in),
    # not rescaled), bn_config decay_rate 0.9, eps 1e-5; the bottleneck's batchnorm_2 scale_init=zeros.
    c.model.conv_init = "haiku"
    c.model.zero_init_residual = True

    c.method = ml_collections.ConfigDict()
    c.method.name = "byol"
    # byol/utils/networks.py `MLP`: Linear(4096) -> BN(decay .9, eps 1e-5) -> ReLU -> Linear(256,
    # with_bias=False), haiku.Linear's default init (byol_experiment.py `_forward`: projector 4096 -> 256,
    # predictor 4096 -> 256, configs/byol.py network_config). The first Linear's bias there is cancelled by the BN.
    c.method.projector = base.mlp(4096, 256, 2, last_bias=False, init="haiku")
    c.method.predictor = base.mlp(4096, 256, 2, last_bias=False, init="haiku")

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "lars"
    c.optim.lr = 0.2  # base lr 0.2 ...
    c.optim.lr_reference_batch = 256  # ... x batch / 256: 3.2 at 4096
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0  # cosine decay to 0
    c.optim.warmup_epochs = 10  # warmup_steps = 10 epochs
    # (deliberate: the shared warm-up reaches the peak one step before the reference's step * lr / W)
    c.optim.weight_decay = 1.5e-6
    c.optim.weight_decay_end = 1.5e-6
    c.optim.momentum = 0.9
    c.optim.trust_coefficient = 0.001  # LARS eta
    c.optim.lr_inside_momentum = False  # the reference's LARS: momentum on the trust-scaled update, then lr
    c.optim.exclude_1d_from_decay = True  # biases and BN excluded from decay and LARS adaptation
    c.optim.teacher_momentum = 0.996  # tau_base, cosine ...
    c.optim.teacher_momentum_end = 1.0  # ... to 1

    # utils/augmentations.py augment_config: view1 / view2 blur p 1.0 / 0.1 (kernel 224 / 10 -> 23 taps,
    # sigma U[0.1, 2], padding 'SAME'), solarize p 0.0 / 0.2 (threshold 0.5), colour jitter
    # (0.4, 0.4, 0.2, 0.1) shuffled with p 0.8 (additive brightness, tf.image-style contrast /
    # saturation / hue), grayscale 0.2; utils/dataset.py _preprocess_image: random crop area
    # (0.08, 1), log-aspect (3/4, 4/3), tf.image.resize BICUBIC (no antialiasing), ImageNet
    # mean/std (normalize_images). Deliberate: torchvision's crop-box sampler over the same ranges
    # instead of BYOL's single clamped draw (docs/FIDELITY.md (_augment)).
    c.augment = base.two_view_augment(size=224, scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2,
                                      hue=0.1, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2))
    c.augment.update({"interpolation": "bicubic", "antialias": False, "blur_padding": "zero"})
    c.augment.color_jitter.impl = "byol"
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """CIFAR-10 ResNet-18 in the setting of the published kNN tables (batch 128, 200 epochs).

    The ImageNet lr (0.2 x 128/256 = 0.1) and tau (0.996) are tuned for 4096-image
    batches over 1000 epochs; these values are solo-learn's CIFAR BYOL recipe.
    """
    c = base.use_cifar10_resnet18(imagenet_config())
    c.optim.lr = 1.0  # x 128 / 256 = 0.5
    c.optim.weight_decay = 1e-5
    c.optim.weight_decay_end = 1e-5
    c.optim.teacher_momentum = 0.99
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke_resnet(cifar10_config())
    c.method.projector.update({"hidden_dim": 32, "out_dim": 16})
    c.method.predictor.update({"hidden_dim": 32, "out_dim": 16})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper), 'cifar10' (ResNet-18), 'cifar10_vit' (the CPU-hour ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config,
                               "cifar10_vit": lambda: base.use_cifar10_vit(cifar10_config())}, preset, __file__)
