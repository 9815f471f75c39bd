"""SimSiam ResNet-50 (Chen & He, "Exploring Simple Siamese Representation Learning", 2021).

    python -m ssl_jax.main --config=configs/simsiam_resnet50.py --workdir=DIR            # ImageNet, the paper
    python -m ssl_jax.main --config=configs/simsiam_resnet50.py:cifar10 --workdir=DIR    # CIFAR-10 ResNet-18
    python -m ssl_jax.main --config=configs/simsiam_resnet50.py:cifar10_vit --workdir=DIR  # CIFAR-10, ViT, on a CPU
    python -m ssl_jax.main --config=configs/simsiam_resnet50.py:smoke --workdir=DIR      # seconds, tiny shapes

Defaults are facebookresearch/simsiam's `main_simsiam.py` (flags cited as `--flag`).
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 512  # --batch-size 512 (8 GPUs)
    c.num_epochs = 100  # --epochs 100 (68.1 % linear eval)
    # main_simsiam.py: models.__dict__[args.arch](num_classes=args.dim, zero_init_residual=True), torchvision's
    # kaiming_normal_(fan_out) convolutions.
    c.model = base.resnet_model(50)
    c.model.conv_init = "torchvision"
    c.model.zero_init_residual = True

    c.method = ml_collections.ConfigDict()
    c.method.name = "simsiam"
    # simsiam/builder.py: 3 x Linear(2048, bias=False), BN after each, the last BatchNorm1d(affine=False)
    # (the last Linear is torchvision's fc with its bias frozen, cancelled by that BN); torch.nn.Linear's init.
    c.method.projector = base.mlp(2048, 2048, 3, last_bn=True)  # --dim 2048
    # Linear(512, bias=False) -> BN -> ReLU -> Linear(2048) with a (torch-initialised) bias: the predictor.
    c.method.predictor = base.mlp(512, 2048, 2, last_bias=True)  # --pred-dim 512

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"
    c.optim.lr = 0.05  # --lr 0.05 ...
    c.optim.lr_reference_batch = 256  # ... x batch / 256
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0
    c.optim.warmup_epochs = 0
    c.optim.schedule_per_epoch = True  # adjust_learning_rate: cosine, set once per epoch
    c.optim.fixed_lr_patterns = ("^predictor/",)  # --fix-pred-lr
    c.optim.weight_decay = 1e-4  # --wd, on every parameter (torch SGD weight_decay)
    c.optim.weight_decay_end = 1e-4
    c.optim.exclude_1d_from_decay = False
    c.optim.momentum = 0.9  # --momentum

    # main_simsiam.py `augmentation` (MoCo v2's): RandomResizedCrop(224, scale=(0.2, 1.)) with torchvision's
    # default bilinear resize, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, RandomGrayscale 0.2,
    # simsiam/loader.py GaussianBlur([.1, 2.]) p 0.5, flip, ImageNet mean/std. Deliberate: the blur is an
    # exact Gaussian, not PIL's box approximation (docs/FIDELITY.md (_augment)).
    c.augment = base.two_view_augment(size=224, scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4,
                                      hue=0.1, blur_prob=(0.5, 0.5), solarize_prob=(0.0, 0.0))
    c.augment.interpolation = "bilinear"
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """CIFAR-10 ResNet-18 in the setting of the published kNN tables (batch 128, 200 epochs).

    The paper's CIFAR-10 experiments (App. D): a 2-layer projector, lr 0.03 x batch / 256,
    weight decay 5e-4.
    """
    c = base.use_cifar10_resnet18(imagenet_config())
    c.method.projector.num_layers = 2
    c.optim.lr = 0.03
    c.optim.weight_decay = 5e-4
    c.optim.weight_decay_end = 5e-4
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke_resnet(cifar10_config())
    c.method.projector.update({"hidden_dim": 32, "out_dim": 32})
    c.method.predictor.update({"hidden_dim": 16, "out_dim": 32})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper), 'cifar10' (ResNet-18), 'cifar10_vit' (the CPU-hour ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config,
                               "cifar10_vit": lambda: base.use_cifar10_vit(cifar10_config())}, preset, __file__)
