"""MP3: masked position prediction (Zhai et al., "Position Prediction as an Effective Pretraining
Strategy", ICML 2022) on a ViT-S/16 without position embeddings.

    python -m ssl_jax.main --config=configs/mp3_vit_small.py --workdir=DIR            # ImageNet
    python -m ssl_jax.main --config=configs/mp3_vit_small.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/mp3_vit_small.py:smoke --workdir=DIR      # seconds, tiny shapes
    then: python -m ssl_jax.evaluate --config=... --workdir=DIR --eval=finetune

From the paper: no position embeddings in the encoder, every patch a query but only a random
subset of patches as keys/values (masked context), an N-way position classifier per token.
No official code found (searched the code index for the title, "apple ml-mp3", "MP3 position
prediction": only unofficial ports, lucidrains/vit-pytorch `mp3.py` and arshadshk's
Position-Prediction-Pretraining-MP3): the mask ratio and the optimiser below are NOT checked
against the authors'. They are MAE's pretraining recipe (AdamW (0.9, 0.95), base lr 1.5e-4 x
batch / 256, weight decay 0.05, 40 warm-up epochs, batch 4096, random-resized crop + flip)
and MAE's 75 % ratio, marked "assumed" where used. `--eval=finetune` adds learned position
embeddings (fresh, trunc_normal(.02): the init is assumed) before fine-tuning, as the paper does.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 4096  # assumed (MAE)
    c.num_epochs = 100  # assumed
    c.model = base.vit_model("small", patch_size=16, img_size=224, pos_embed="none")
    c.model.class_token = False  # no [CLS]: the tokens' mean is the image feature
    c.method = ml_collections.ConfigDict({"name": "mp3", "mask_ratio": 0.75})  # assumed (MAE's ratio)
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "lr": 1.5e-4, "lr_reference_batch": 256, "lr_scaling": "linear", "min_lr": 0.0,
        "warmup_epochs": 40, "weight_decay": 0.05, "weight_decay_end": 0.05, "b1": 0.9, "b2": 0.95,
        "eps": 1e-8, "warmup_style": "fraction"})  # assumed (MAE's main_pretrain.py, adjust_learning_rate)
    c.augment = base.single_view_augment(size=224, scale=(0.2, 1.0), flip_prob=0.5)  # assumed (MAE)
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The CPU-hour ViT (128 wide, 4 blocks, 8 px patches: 16 positions per 32 px image), DINO's
    CIFAR-10 AdamW schedule, no position embeddings."""
    c = base.use_cifar10_vit(imagenet_config())
    c.model.pos_embed = "none"
    c.model.class_token = False
    c.augment = base.single_view_augment(size=32, scale=(0.2, 1.0), flip_prob=0.5)
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 32, "depth": 1, "num_heads": 2})
    c.augment.global_crops.size = 16
    c.model.patch_size = 4  # 16 positions per image
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'cifar10' (the CPU-hour ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
