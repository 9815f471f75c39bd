"""SimCLR ResNet-50 (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", 2020).

    python -m ssl_jax.main --config=configs/simclr_resnet50.py --workdir=DIR            # ImageNet, the paper
    python -m ssl_jax.main --config=configs/simclr_resnet50.py:cifar10 --workdir=DIR    # CIFAR-10 ResNet-18
    python -m ssl_jax.main --config=configs/simclr_resnet50.py:cifar10_vit --workdir=DIR  # CIFAR-10, ViT, on a CPU
    python -m ssl_jax.main --config=configs/simclr_resnet50.py:smoke --workdir=DIR      # seconds, tiny shapes

Defaults are the paper's ImageNet recipe (Sec. 3, App. B) as implemented in
google-research/simclr (`run.py` flags cited as `--flag`). SimCLR v2's 3-layer
projector: --config.method.projector.num_layers=3.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 4096  # paper: batch 4096 for the main results
    c.num_epochs = 1000  # the 69.3 % linear-eval ResNet-50 (1x); the ablations use 100
    c.model = base.resnet_model(50)
    # resnet.py: conv2d_fixed_padding's tf.variance_scaling_initializer() (std 1 / sqrt(fan_in)),
    # batch_norm_relu(init_zero=True) on each block's last BN, --batch_norm_decay 0.9, eps 1e-5.
    c.model.conv_init = "simclr_tf"
    c.model.zero_init_residual = True

    c.method = ml_collections.ConfigDict()
    c.method.name = "simclr"
    c.method.temperature = 0.1  # --temperature
    # model_util.py `projection_head` ('nonlinear', 2 layers = v1): Linear(2048) -> BN -> ReLU -> Linear(128)
    # -> BN with a scale but no shift (`batch_norm_relu(center=use_bias=False)`); `linear_layer`: dense
    # N(0, 0.01) init, no bias before a BN; resnet.py BN eps 1e-5, --batch_norm_decay 0.9.
    c.method.projector = base.mlp(2048, 128, 2, last_bn=True, last_bn_scale=True, init="normal_0.01")

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "lars"  # --optimizer lars
    c.optim.lr = 0.3  # --learning_rate 0.3 ...
    c.optim.lr_reference_batch = 256  # ... x batch / 256 (--learning_rate_scaling linear): 4.8 at 4096
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0  # cosine decay to 0
    c.optim.warmup_epochs = 10  # --warmup_epochs
    # (deliberate: the shared warm-up reaches the peak one step before the reference's step * lr / W)
    c.optim.weight_decay = 1e-6  # --weight_decay, constant ...
    c.optim.weight_decay_end = 1e-6
    c.optim.momentum = 0.9  # LARS momentum
    c.optim.trust_coefficient = 0.001  # LARS eeta
    c.optim.lr_inside_momentum = True  # the reference's LARS: v <- m v + lr * trust * (g + wd w)
    c.optim.exclude_1d_from_decay = True  # no decay / LARS adaptation for BN and biases

    # data_util.py preprocess_for_train: crop_and_resize (area (0.08, 1), aspect (3/4, 4/3)) resized by
    # tf.image.resize_bicubic (no antialiasing), flip, color_jitter(--color_jitter_strength 1.0) =
    # (0.8, 0.8, 0.8, 0.2) in random order with p 0.8 (impl 'simclrv2': tf.image ops, multiplicative
    # brightness), grayscale 0.2; model.py: batch_random_blur p 0.5 on both views, kernel height // 10
    # (22 -> 23 taps), sigma U[0.1, 2], padding 'SAME' (zeros); no solarisation. No mean/std
    # normalisation: the network sees [0, 1] pixels. Deliberate: the crop box comes from torchvision's
    # sampler over the same ranges, not tf.image.sample_distorted_bounding_box (docs/FIDELITY.md (_augment)).
    c.augment = base.two_view_augment(size=224, scale=(0.08, 1.0), brightness=0.8, contrast=0.8, saturation=0.8,
                                      hue=0.2, blur_prob=(0.5, 0.5), solarize_prob=(0.0, 0.0))
    c.augment.update({"interpolation": "bicubic", "antialias": False, "blur_padding": "zero",
                      "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    c.augment.color_jitter.impl = "simclr"
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """CIFAR-10 ResNet-18 in the setting of the published kNN tables (batch 128, 200 epochs)."""
    c = base.use_cifar10_resnet18(imagenet_config())
    c.method.temperature = 0.5  # App. B.9: CIFAR-10 uses temperature 0.5
    c.method.projector.hidden_dim = 512  # the projector's hidden width is the backbone's (512 for ResNet-18)
    # App. B.1: square-root scaling, lr = 0.075 sqrt(batch), suits small batches: 0.85 at 128.
    c.optim.lr_scaling = "sqrt"
    c.optim.lr = 0.075
    # App. B.9: colour jitter strength 0.5 on CIFAR-10, no blur.
    c.augment.color_jitter.update({"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1})
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke_resnet(cifar10_config())
    c.method.projector.update({"hidden_dim": 32, "out_dim": 16})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper), 'cifar10' (ResNet-18), 'cifar10_vit' (the CPU-hour ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config,
                               "cifar10_vit": lambda: base.use_cifar10_vit(cifar10_config())}, preset, __file__)
