"""Rotation prediction, RotNet (Gidaris et al., "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018): the classic 4-way pretext baseline.

    python -m ssl_jax.main --config=configs/rotation_resnet50.py --workdir=DIR              # ImageNet
    python -m ssl_jax.main --config=configs/rotation_resnet50.py:cifar10 --workdir=DIR      # CIFAR-10 ResNet-18
    python -m ssl_jax.main --config=configs/rotation_resnet50.py:cifar10_vit --workdir=DIR  # CIFAR-10, ViT, on a CPU
    python -m ssl_jax.main --config=configs/rotation_resnet50.py:smoke --workdir=DIR        # seconds, tiny shapes

The optimiser and schedules are gidariss/FeatureLearningRotNet's (`config/ImageNet_RotNet_AlexNet.py`,
`config/CIFAR10_RotNet_NIN4blocks.py`, cited as `optim_params`); its backbones (AlexNet, Network-in-Network)
are not in ssl_jax, so ResNet-50 / CIFAR ResNet-18 take their place with a linear rotation classifier on
the pooled features (the ResNet-50 setting of Kolesnikov et al. 2019, "Revisiting self-supervised visual
representation learning"). Every batch holds all four rotations of each image.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 192  # batch_size = 192 (x 4 rotations)
    c.num_epochs = 50  # max_num_epochs = 50
    c.model = base.resnet_model(50)
    c.model.zero_init_residual = False  # torchvision resnet50()'s default (RotNet has no ResNet of its own)
    c.model.conv_init = "torchvision"
    c.method = ml_collections.ConfigDict({"name": "rotation", "joint_labels": False, "loss_scale": 1.0})
    # net_optim_params: sgd, momentum 0.9, weight_decay 5e-4 (every parameter), nesterov, and
    # LUT_lr [(15, 0.01), (30, 0.001), (45, 0.0001), (50, 0.00001)]: algorithms/Algorithm.py
    # adjust_learning_rates sets lr = the first LUT entry with max_epoch > epoch at the start of
    # every epoch, so the 'lr': 0.1 there is never used. Per epoch: 0.01 below 15, x 0.1 at 15, 30, 45.
    c.optim = base.sgd_multistep_optim(0.01, (15, 30, 45), 0.1, 5e-4, True, c.batch_size)
    # random_sized_crop = True (dataloader.py): RandomSizedCrop(224), torchvision's default bilinear
    # (PIL, antialiased) resize, + horizontal flip, no colour augmentation.
    c.augment = base.single_view_augment(size=224, scale=(0.08, 1.0), flip_prob=0.5)
    c.augment.interpolation = "bilinear"
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """CIFAR ResNet-18 with the CIFAR-10 RotNet schedule (batch 128, 200 epochs)."""
    c = base.use_cifar10_resnet18(imagenet_config())  # batch 128, 200 epochs: batch_size, max_num_epochs there
    # net_optim_params: nesterov, wd 5e-4, LUT_lr [(60, 0.1), (120, 0.02), (160, 0.004), (200, 0.0008)].
    c.optim = base.sgd_multistep_optim(0.1, (60, 120, 160), 0.2, 5e-4, True, c.batch_size)
    # The reference crops CIFAR with RandomCrop(32, padding=4) + flip; the pipeline's random-resized crop
    # over 75-100 % of the image is the closest stand-in.
    c.augment = base.single_view_augment(size=32, scale=(0.75, 1.0), flip_prob=0.5)
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD
    return c


def cifar10_vit_config() -> ml_collections.ConfigDict:
    """The CPU-budget comparison setting (README): DINO's CIFAR-10 ViT and AdamW schedule."""
    return base.use_cifar10_vit(cifar10_config())


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke_resnet(cifar10_config())
    c.optim.lr_milestones = (1,)  # a step of the lr within the 2 smoke epochs
    c.augment.global_crops.size = 16
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'cifar10' (ResNet-18), 'cifar10_vit' (the CPU-budget ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config,
                               "cifar10_vit": cifar10_vit_config, "smoke": smoke_config}, preset, __file__)
