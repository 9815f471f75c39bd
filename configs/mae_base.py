"""MAE ViT-B/16 (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).

    python -m ssl_jax.main --config=configs/mae_base.py --workdir=DIR            # ImageNet, the paper
    python -m ssl_jax.main --config=configs/mae_base.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/mae_base.py:smoke --workdir=DIR      # seconds, tiny shapes

Defaults are facebookresearch/mae's pre-training recipe (PRETRAIN.md and `main_pretrain.py`
flags, cited as `--flag`; `models_mae.py` for the architecture) and the paper's (Sec. 4, App. A.1).
Deliberate (docs/FIDELITY.md, mae_base): bfloat16 compute instead of fp16 AMP.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    """The paper's ViT-B/16 pre-training on ImageNet-1k."""
    c = base.base_config()
    c.batch_size = 4096  # PRETRAIN.md: effective batch 64 x 8 nodes x 8 GPUs = 4096 (App. A.1).
    c.num_epochs = 800  # PRETRAIN.md's example; the paper's best numbers train 1600 (Table 2, Fig. 7).

    c.model = base.vit_model("base", patch_size=16, img_size=224, pos_embed="sincos")  # mae_vit_base_patch16
    c.model.init = "mae"  # models_mae.py initialize_weights: xavier-uniform Linears and patch projection
    # models_mae.py: fixed 2-D sin-cos position embeddings (requires_grad=False); no drop-path in pre-training.

    c.method = ml_collections.ConfigDict()
    c.method.name = "mae"
    c.method.mask_ratio = 0.75  # --mask_ratio 0.75 (paper Sec. 4, Fig. 5)
    c.method.norm_pix_loss = True  # --norm_pix_loss: per-patch normalised pixel targets (Table 1d)
    c.method.decoder_embed_dim = 512  # mae_vit_base_patch16_dec512d8b
    c.method.decoder_depth = 8
    c.method.decoder_num_heads = 16
    c.method.encode_all_tokens = False  # benchmark switch only (methods/mae.py)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # App. A.1: AdamW, betas (0.9, 0.95)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.lr = 1.5e-4  # --blr 1.5e-4 ...
    c.optim.lr_reference_batch = 256  # ... lr = blr x batch / 256
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0  # --min_lr 0: half-cycle cosine to 0
    c.optim.warmup_epochs = 40  # --warmup_epochs 40; util/lr_sched.adjust_learning_rate every iteration:
    c.optim.warmup_style = "fraction"  # lr x (iteration / warmup iterations), the peak first at the cosine's start
    c.optim.weight_decay = 0.05  # --weight_decay 0.05, constant; not on biases / 1-D params
    c.optim.weight_decay_end = 0.05  # (optim_factory.add_weight_decay without a skip list: cls/mask tokens decay)

    # main_pretrain.py: RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=3 bicubic), RandomHorizontalFlip,
    # Normalize(ImageNet mean/std). No gradient clipping (loss_scaler(..., clip_grad=None)).
    c.augment = base.single_view_augment(size=224, scale=(0.2, 1.0), flip_prob=0.5)
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """MAE on CIFAR-10 within a CPU hour, with DINO's CIFAR-10 schedule (base.use_cifar10_vit).

    The CIFAR10_VIT encoder (128 wide, 4 blocks, 4 heads) with 4 px patches as MAE needs
    enough patches to mask: 64 tokens, 16 visible, so an encoder pass costs about what the
    8 px-patch ViT of the other methods costs on the whole image. A 2-block 128-wide decoder
    (the paper's 8 x 512 would dominate the step). AdamW keeps MAE's betas and constant
    weight decay; the peak lr is DINO's CIFAR-10 one (1e-3 x 128/256).
    """
    c = base.use_cifar10_vit(imagenet_config())
    c.model.patch_size = 4
    c.model.pos_embed = "sincos"
    c.method.decoder_embed_dim = 128
    c.method.decoder_depth = 2
    c.method.decoder_num_heads = 4
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.05
    c.optim.weight_decay_end = 0.05
    c.augment = base.single_view_augment(size=32, scale=(0.2, 1.0), flip_prob=0.5)
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """A few steps on tiny shapes: a 1-block 16-wide ViT, 32 px, 8 px patches (16 tokens, 4 visible), 1-block decoder."""
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8})
    c.method.update({"decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
