"""SiT: Self-supervised vIsion Transformer (Atito, Awais and Kittler, 2021): reconstruction of a corrupted
image, rotation prediction and a contrastive loss trained jointly on one ViT-S/16 with a contrastive
([CLS]) and a rotation (register) token. `ssl_jax/methods/sit.py`.

    python -m ssl_jax.main --config=configs/sit_vit_small.py --workdir=DIR            # ImageNet
    python -m ssl_jax.main --config=configs/sit_vit_small.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/sit_vit_small.py:smoke --workdir=DIR      # seconds, tiny shapes

Defaults are the authors' Sara-Ahmed/SiT: `main.py` flags (cited as --flag), its README's
pre-training command (4 GPUs x --batch-size 72, --epochs 501, --lr 1e-3, --min-lr 5e-6, STL10),
`losses.py`, `engine.py` (train_SSL), `vision_transformer_SiT.py` and `datasets/`. Its data sets are
CIFAR, STL10 and TinyImageNet and it registers only SiT_base_patch16_224; ImageNet and ViT-S/16 here
are this repo's choice. Deliberate differences (docs/FIDELITY.md (sit_vit_small)):
- the corruption (`distortImages`) pastes blocks of another image of the batch as it was before its
  own corruption; the reference corrupts the batch in place, in order, so an earlier partner is
  already corrupted;
- the lr follows timm's per-epoch warm-up + cosine per step, measured from the end of warm-up; the
  reference's timm 0.3 scheduler is per epoch, lags one epoch (main.py steps it with the finished
  epoch) and measures the cosine from epoch 0;
- repeated-augmentation sampling (RASampler, 3 repeats) is not reproduced: each image once per epoch;
- bfloat16 compute instead of fp16 autocast.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 288  # README: 4 GPUs x --batch-size 72
    c.num_epochs = 501  # --epochs 501
    c.model = base.vit_model("small", patch_size=16, img_size=224, drop_path_rate=0.1)  # --drop-path 0.1
    c.model.num_register_tokens = 1  # the rotation token ([CLS] is the contrastive one)
    c.model.init = "sit"  # vision_transformer_SiT.py: timm's init, rot_token trunc_normal(.02)
    c.method = ml_collections.ConfigDict({
        "name": "sit",
        # engine.py distortImages: drop_rand_patches(max_drop=0.3, max_block_sz=0.25, tolr=0.05),
        # smooth_patch(max_kernSz=15, gauss=5): sigma = rand() x 5 + 0.1
        "corruption": {"max_drop": 0.3, "max_block": 0.25, "min_block": 0.05, "max_kernel": 15, "max_sigma": 5.0},
        "temperature": 0.5,  # losses.py ContrastiveLoss(temperature=0.5)
        "contrastive_dim": 512,  # vision_transformer_SiT.py: contrastive_head = nn.Linear(num_features, 512)
        # LearnedLoss.adj: 1 for CrossEntropy and Contrastive, 0.5 for L1
        "loss_scales": {"reconstruction": 0.5, "rotation": 1.0, "contrastive": 1.0},
    })
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "b1": 0.9, "b2": 0.999, "eps": 1e-8,  # --opt adamw, --opt-eps 1e-8, default betas
        "lr": 1e-3, "lr_reference_batch": 512, "lr_scaling": "linear",  # README --lr 1e-3 x batch / 512 (main.py)
        # --warmup-lr 1e-6 is not batch-scaled in the reference; optim scales warmup_lr like lr, so 1e-6 x 512 / 288
        "warmup_lr": 1e-6 * 512 / 288, "warmup_epochs": 5, "warmup_style": "fraction",  # --warmup-epochs 5
        "min_lr": 5e-6,  # README --min-lr 5e-6 (not batch-scaled)
        "weight_decay": 0.05, "weight_decay_end": 0.05,  # --weight-decay 0.05, constant; not on 1-D / biases ...
        "no_decay_patterns": (r"backbone/(pos_embed|cls_token|register_tokens)$",),  # ... nor no_weight_decay()
    })
    # timm create_transform(224, is_training, color_jitter 0.4, no auto-augment / random erasing in SSL,
    # bicubic): RandomResizedCrop(scale (0.08, 1)), flip, ColorJitter(0.4, 0.4, 0.4) always, ImageNet stats.
    c.augment = base.multicrop_augment(global_scale=(0.08, 1.0), local_scale=(0.05, 0.4), local_number=0)
    c.augment.color_jitter.update({"prob": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0})
    c.augment.grayscale_prob = 0.0
    c.augment.blur_prob = (0.0, 0.0, 0.0)
    c.augment.solarize_prob = (0.0, 0.0, 0.0)
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The CPU-hour ViT (128 wide, 4 blocks, 8 px patches) with DINO's CIFAR-10 AdamW schedule."""
    c = base.use_cifar10_vit(imagenet_config())
    c.model.num_register_tokens = 1
    c.optim.no_decay_patterns = (r"backbone/(pos_embed|cls_token|register_tokens)$",)  # SiT's no_weight_decay()
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 32, "depth": 1, "num_heads": 2})
    c.method.contrastive_dim = 16
    c.augment.global_crops.size = 16
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'cifar10' (the CPU-hour ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
