"""Self-supervised label augmentation, SLA (Lee et al., "Self-supervised Label Augmentation via Input
Transformations", ICML 2020): one classifier over the joint (label, rotation) classes, 4 C outputs, and
the aggregated inference over the four rotations (`ssl_jax/methods/rotation.py`). Supervised: it reads
the labels (`dataset.fields`).

    python -m ssl_jax.main --config=configs/sla_resnet.py --workdir=DIR            # ImageNet
    python -m ssl_jax.main --config=configs/sla_resnet.py:cifar10 --workdir=DIR    # CIFAR-10 ResNet-18
    python -m ssl_jax.main --config=configs/sla_resnet.py:smoke --workdir=DIR      # seconds, tiny shapes

Values are hankook/SLA's `train.py` flags (cited as `--flag`) and README command
(`--dataset cifar10 --batchsize 128 --num-iterations 80000 --model cresnet32 --mode sla --aug rotation`).
Its CIFAR ResNet-32 is not in ssl_jax: a CIFAR ResNet-18 takes its place.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 128  # --batchsize 128
    # Deliberate: epochs without replacement; the reference's BatchSampler draws every batch with
    # replacement (datasets.py), for the same number of steps.
    c.num_epochs = 90  # --num-iterations 900000 at batch 128 = 89.9 epochs of ImageNet
    c.model = base.resnet_model(18)  # --model resnet18
    c.model.zero_init_residual = False  # models: torchvision resnet18() defaults
    c.model.conv_init = "torchvision"
    c.dataset.fields = ("label",)
    # --mode sla --aug rotation; README: "summation (instead of average) of losses across
    # self-supervised transformations" on ImageNet, --with-large-loss: the loss x 4.
    c.method = ml_collections.ConfigDict({"name": "rotation", "joint_labels": True, "loss_scale": 4.0})
    # SGD(lr=--lr 0.1, momentum=0.9, weight_decay=--wd 1e-4) on every parameter; ImageNet:
    # StepLR(num_iterations // 3, 0.1) = x 0.1 after epochs 30 and 60.
    c.optim = base.sgd_multistep_optim(0.1, (30, 60), 0.1, 1e-4, False, c.batch_size)
    # datasets.py _transform_large_train: RandomResizedCrop(224) (bilinear) + flip, ImageNet mean/std.
    c.augment = base.single_view_augment(size=224, scale=(0.08, 1.0), flip_prob=0.5)
    c.augment.interpolation = "bilinear"
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The README's CIFAR-10 command on a CIFAR ResNet-18."""
    c = base.use_cifar10_resnet18(imagenet_config())
    steps_per_epoch = 50_000 // 128  # 390
    c.num_epochs = 205  # --num-iterations 80000 = 205 epochs of 390 steps
    # Deliberate: all 50000 training images (the reference holds out splits/cifar10_val_idx.npy).
    c.method.loss_scale = 1.0  # the mean over rotations on CIFAR
    # MultiStepLR at num_iterations // 2 and * 3 // 4 (iterations 40000, 60000), gamma 0.1.
    c.optim = base.sgd_multistep_optim(0.1, (40_000 / steps_per_epoch, 60_000 / steps_per_epoch), 0.1, 1e-4, False,
                            c.batch_size)
    # RandomCrop(32, padding=4) + flip in the reference: the random-resized crop over 75-100 % stands in.
    c.augment = base.single_view_augment(size=32, scale=(0.75, 1.0), flip_prob=0.5)
    c.augment.interpolation = "bilinear"
    c.augment.mean, c.augment.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # datasets.py: Normalize((0.5,) * 3, (0.5,) * 3)
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke_resnet(cifar10_config())
    c.optim.lr_milestones = (1,)
    c.augment.global_crops.size = 16
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'cifar10' (ResNet-18), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
