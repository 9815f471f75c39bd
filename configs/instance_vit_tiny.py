"""Parametric instance discrimination on a small dataset (Cao, Yu and Wu, "Training Vision Transformers
with Only 2040 Images", ECCV 2022): every image its own class, then fine-tuning with labels.

    python -m ssl_jax.main --config=configs/instance_vit_tiny.py --workdir=DIR          # Flowers-102, 2040 images
    python -m ssl_jax.main --config=configs/instance_vit_tiny.py:cifar10 --workdir=DIR  # CIFAR-10, 50000 images
    python -m ssl_jax.main --config=configs/instance_vit_tiny.py:smoke --workdir=DIR      # seconds, tiny shapes
    then: python -m ssl_jax.evaluate --config=... --workdir=DIR --eval=finetune

From the paper: the 2040 images are Flowers-102's train + validation splits; instance
discrimination with a parametric classifier over them, label smoothing, pretraining at a lower
resolution than fine-tuning. The authors' code is not available to us: the numbers marked
"assumed" (the optimiser is DeiT's, the smoothing and the 112 px resolution our choices) are not
checked against it.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base
from ssl_jax.methods.instance import INSTANCE_RULES
from ssl_jax.partition import DEFAULT_RULES


def imagenet_config() -> ml_collections.ConfigDict:
    """Named for the preset convention: the paper's dataset is Oxford Flowers-102 (tfds `oxford_flowers102`)."""
    c = base.base_config()
    c.dataset.name = "oxford_flowers102"
    c.dataset.train_split = "train+validation"  # 1020 + 1020 = the 2040 images
    c.dataset.num_classes = 102
    c.dataset.fields = ("index",)
    c.dataset.shuffle_buffer = 2040
    c.eval.test_split = "test"
    c.eval.train_split = "train+validation"
    c.batch_size = 256  # assumed
    c.num_epochs = 800  # assumed: few images need many epochs
    c.model = base.vit_model("tiny", patch_size=16, img_size=224)  # DeiT-Tiny
    c.method = ml_collections.ConfigDict({"name": "instance", "num_instances": 2040,
                                          "label_smoothing": 0.1})  # assumed smoothing
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "lr": 5e-4, "lr_reference_batch": 512, "lr_scaling": "linear", "min_lr": 1e-5,
        "warmup_epochs": 5, "weight_decay": 0.05, "weight_decay_end": 0.05, "b1": 0.9, "b2": 0.999,
        "eps": 1e-8})  # assumed (DeiT's recipe)
    # Low-resolution pretraining: 112 px crops (assumed: half the 224 px of fine-tuning).
    c.augment = base.multicrop_augment(global_scale=(0.08, 1.0), local_scale=(0.05, 0.4), local_number=0,
                                       global_size=112)
    c.augment.global_crops.number = 1
    c.augment.blur_prob = (0.5, 0.0, 0.0)
    c.augment.solarize_prob = (0.0, 0.0, 0.0)
    # The [D, N_images] classifier split over its N axis when config.parallel.fsdp > 1.
    c.parallel.rules = INSTANCE_RULES + DEFAULT_RULES
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """50000 instances on the CPU-hour ViT at 16 px (half of CIFAR's 32 px), DINO's CIFAR-10 AdamW schedule."""
    c = base.use_cifar10_vit(imagenet_config())
    c.dataset.train_split = "train"
    c.method.num_instances = 50_000
    c.augment.global_crops.size = 16
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke(cifar10_config())
    c.dataset.train_split = "train[:512]"
    c.method.num_instances = 512
    c.model.update({"embed_dim": 32, "depth": 1, "num_heads": 2})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper's Flowers-102), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
