"""Attention transfer (Li et al., "On the Surprising Effectiveness of Attention Transfer for Vision
Transformers", NeurIPS 2024): a randomly initialised ViT-L/16 trained on ImageNet labels with the
attention maps of a frozen MAE ViT-L/16 (`ssl_jax/methods/attention_transfer.py`). Supervised: it
reads the labels (`dataset.fields`).

    python -m ssl_jax.main --config=configs/attention_transfer_vit_large.py \\
        --config.teacher_init_from=mae_pretrain_vit_large.pth --workdir=DIR          # attention distillation
    python -m ssl_jax.main --config=configs/attention_transfer_vit_large.py:copy \\
        --config.teacher_init_from=mae_pretrain_vit_large.pth --workdir=DIR          # attention copy
    python -m ssl_jax.main --config=configs/attention_transfer_vit_large.py:cifar10 \\
        --config.teacher_init_from=DINO_CIFAR10_WORKDIR --workdir=DIR                # the CPU-hour ViT
    python -m ssl_jax.main --config=configs/attention_transfer_vit_large.py:smoke \\
        --config.teacher_init_from=TINY_VIT.safetensors --workdir=DIR                # seconds, tiny shapes

Defaults are the authors' PyTorch reimplementation alexlioralexli/attention-transfer (the paper's
code was JAX/TPU and is not public): its README commands (cited as `--flag`), `main_finetune.py`
defaults, `models_dual_vit.py` (DualVisionTransformer) and `engine_finetune.py`. Deliberate
differences (docs/FIDELITY.md (attention_transfer_vit_large)):
- no model EMA (`--ema 0.9999`): `TrainState.teacher` holds the frozen teacher; the student itself is evaluated;
- the pre-training input pipeline has no RandAugment (`--aa rand-m9-mstd0.5-inc1`, main_finetune.py's default);
- attention distillation reads the attention weights A = softmax(logits), log A floored at
  float32's smallest normal, where the reference takes log_softmax of the logits (the same values
  unless a weight underflows);
- bfloat16 compute on the ImageNet presets (the reference's autocast is commented out: fp32).
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    """README's attention distillation command (dual_vit_large_patch16, 8 nodes x 8 GPUs x --batch_size 32)."""
    c = base.base_config()
    c.batch_size = 2048  # 8 nodes x 8 GPUs x --batch_size 32
    c.num_epochs = 200  # --epochs 200
    # dual_vit_large_patch16: the student, random init (timm's: trunc_normal(.02) Linears, cls_token,
    # pos_embed; PatchEmbed's Conv2d default), learned position embeddings, qkv_bias; --drop_path 0.2.
    c.model = base.vit_model("large", patch_size=16, img_size=224, drop_path_rate=0.2)
    # The teacher: MAE's pre-trained ViT-L/16 (--finetune mae_pretrain_vit_large.pth loads `teacher.*`);
    # its pos_embed is the checkpoint's (a learned table in models_dual_vit.py).
    c.teacher = base.vit_model("large", patch_size=16, img_size=224)
    c.teacher.init = "mae"
    c.teacher_init_from = ""  # --finetune: required (an official checkpoint or an ssl_jax workdir)
    c.dataset.fields = ("label",)
    c.method = ml_collections.ConfigDict({
        "name": "attention_transfer",
        "mode": "distill",  # --mode distill
        "end_layer": -6,  # --end_layer -6: the first 24 - 6 = 18 blocks' attention is transferred
        "atd_weight": 3.0,  # --atd_weight 3.0
        "label_smoothing": 0.1,  # --smoothing 0.1 (main_finetune.py default)
        "reprob": 0.25,  # --reprob 0.25
        "mixup": 0.8, "cutmix": 1.0,  # --mixup 0.8 --cutmix 1.0
        "mixup_prob": 1.0, "mixup_switch_prob": 0.5,  # main_finetune.py defaults (--mixup_mode batch)
    })
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "b1": 0.9, "b2": 0.95, "eps": 1e-8,  # AdamW(betas=(0.9, --beta2 0.95))
        "lr": 1e-4, "lr_reference_batch": 256, "lr_scaling": "linear",  # --blr 1e-4: lr = blr x batch / 256
        "min_lr": 1e-6,  # --min_lr default 1e-6
        "warmup_epochs": 20, "warmup_style": "fraction",  # --warmup_epochs 20 (util/lr_sched.py, per iteration)
        "weight_decay": 0.3, "weight_decay_end": 0.3,  # --weight_decay 0.3, constant; not on 1-D params ...
        "no_decay_patterns": (r"backbone/(pos_embed|cls_token)$",),  # ... nor no_weight_decay()
        "layer_decay": 1.0,  # --layer_decay 1
    })
    # MAE's build_transform(is_train): timm create_transform(224, bicubic, RandomResizedCrop scale (0.08, 1),
    # flip, --aa rand-m9-mstd0.5-inc1 (not here: deliberate), ImageNet mean/std); random erasing on device.
    c.augment = base.single_view_augment(size=224, scale=(0.08, 1.0), flip_prob=0.5)
    return c


def copy_config() -> ml_collections.ConfigDict:
    """README's attention copy command."""
    c = imagenet_config()
    c.num_epochs = 100  # --epochs 100
    c.model.drop_path_rate = 0.0  # --drop_path 0
    c.method.mode = "copy"  # --mode copy
    c.method.end_layer = 0  # main_finetune.py --end_layer default 0: every block's attention is copied
    c.optim.update({"b2": 0.999, "lr": 1e-3, "weight_decay": 0.05, "weight_decay_end": 0.05,  # --beta2, --blr, --wd
                    "min_lr": 2e-3, "layer_decay": 0.75, "warmup_epochs": 5})  # --min_lr 2e-3, --layer_decay 0.75
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The CPU-hour ViT (128 wide, 4 blocks, 4 heads, 8 px patches) with DINO's CIFAR-10 AdamW schedule,
    its attention distilled from the `dino_small.py:cifar10` teacher (the same ViT): every block but
    the last (end_layer -1, the reference's 18 of 24 scaled to 4 blocks)."""
    c = base.use_cifar10_vit(imagenet_config())
    c.model.drop_path_rate = 0.1  # DINO's CIFAR-10 student
    c.teacher = base.vit_model(patch_size=8, img_size=32)
    c.teacher.update(base.CIFAR10_VIT)
    c.method.end_layer = -1
    c.optim.weight_decay = c.optim.weight_decay_end = 0.05
    c.optim.no_decay_patterns = (r"backbone/(pos_embed|cls_token)$",)
    c.augment = base.single_view_augment(size=32, scale=(0.08, 1.0), flip_prob=0.5)
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """A few steps on tiny shapes: 1-block 16-wide ViTs (2 heads), 16 px crops of 8 px patches."""
    c = base.use_smoke(cifar10_config())
    for model in (c.model, c.teacher):
        model.update({"embed_dim": 16, "depth": 1, "num_heads": 2})
    c.method.end_layer = 0
    c.augment.global_crops.size = 16
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (attention distillation), 'copy' (attention copy), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "copy": copy_config, "cifar10": cifar10_config,
                               "smoke": smoke_config}, preset, __file__)
