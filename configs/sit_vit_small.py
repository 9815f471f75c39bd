"""SiT: Self-supervised vIsion Transformer (Atito, Awais and Kittler, 2021): reconstruction of a corrupted
image, rotation prediction and a contrastive loss trained jointly on one ViT-S/16 with a contrastive
([CLS]) and a rotation (register) token. `ssl_jax/methods/sit.py`.

    python -m ssl_jax.main --config=configs/sit_vit_small.py --workdir=DIR            # ImageNet
    python -m ssl_jax.main --config=configs/sit_vit_small.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/sit_vit_small.py:smoke --workdir=DIR      # seconds, tiny shapes

From the paper: the three tasks and their tokens, the clean image as the reconstruction target, the
four rotations. Not checked against the authors' code (not available to us), marked "assumed":
the corruption (only drag-and-drop of patches here, not also random erasing and noise), its ratio,
fixed loss weights (the paper learns uncertainty weights), the temperature and the optimiser (DINO's).
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 1024  # assumed
    c.num_epochs = 100  # assumed
    c.model = base.vit_model("small", patch_size=16, img_size=224)
    c.model.num_register_tokens = 1  # the rotation token ([CLS] is the contrastive one)
    c.model.init = "sit"  # vision_transformer_SiT.py: timm's init, rot_token trunc_normal(.02)
    c.method = ml_collections.ConfigDict({
        "name": "sit",
        "corrupt_ratio": 0.3,  # assumed
        "temperature": 0.2,  # assumed
        "contrastive_dims": (2048, 128),  # assumed: a 2-layer GELU MLP
        "weights": {"reconstruction": 1.0, "rotation": 1.0, "contrastive": 1.0},  # assumed: fixed, equal
    })
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "lr": 5e-4, "lr_reference_batch": 256, "lr_scaling": "linear", "min_lr": 1e-6,
        "warmup_epochs": 10, "weight_decay": 0.04, "weight_decay_end": 0.4, "b1": 0.9, "b2": 0.999,
        "eps": 1e-8})  # assumed (DINO's)
    c.augment = base.multicrop_augment(global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), local_number=0)
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The CPU-hour ViT (128 wide, 4 blocks, 8 px patches) with DINO's CIFAR-10 AdamW schedule."""
    c = base.use_cifar10_vit(imagenet_config())
    c.model.num_register_tokens = 1
    c.method.contrastive_dims = (512, 128)
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 32, "depth": 1, "num_heads": 2})
    c.method.contrastive_dims = (32, 16)
    c.augment.global_crops.size = 16
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'cifar10' (the CPU-hour ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
