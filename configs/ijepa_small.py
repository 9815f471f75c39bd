"""I-JEPA ViT-S/16 (Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture", CVPR 2023).

    python -m ssl_jax.main --config=configs/ijepa_small.py --workdir=DIR            # ImageNet
    python -m ssl_jax.main --config=configs/ijepa_small.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/ijepa_small.py:smoke --workdir=DIR      # seconds, tiny shapes

The paper's models are ViT-H/14 and larger; ViT-S/16 is this repo's small default. Everything
else is facebookresearch/ijepa's `configs/in1k_vith14_ep300.yaml` (cited as section.key) with
`src/helper.py` (init_model, init_opt) and `src/train.py`.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    """The paper's ImageNet-1k recipe on a ViT-S/16."""
    c = base.base_config()
    c.batch_size = 2048  # data.batch_size 128 per GPU x 16 GPUs (logging folder "bs.2048")
    c.num_epochs = 300  # optimization.epochs 300

    c.model = base.vit_model("small", patch_size=16, img_size=224, pos_embed="sincos")  # fixed sin-cos, no drop-path
    c.model.class_token = False  # src/models/vision_transformer.py: no [CLS] token
    c.model.init = "ijepa"  # VisionTransformer._init_weights (trunc_normal .02, Conv2d too) + fix_init_weight

    c.method = ml_collections.ConfigDict()
    c.method.name = "ijepa"
    c.method.predictor_embed_dim = 384  # meta.pred_emb_dim 384
    # init_model's default depth 6 (VisionTransformerPredictor); the ViT-H/14 config uses 12.
    c.method.predictor_depth = 6
    c.method.predictor_num_heads = 0  # 0: the encoder's (init_model: num_heads=encoder.num_heads)
    c.method.context_scale = (0.85, 1.0)  # mask.enc_mask_scale
    c.method.target_scale = (0.15, 0.2)  # mask.pred_mask_scale
    c.method.target_aspect_ratio = (0.75, 1.5)  # mask.aspect_ratio
    c.method.num_targets = 4  # mask.num_pred_masks (num_enc_masks 1, allow_overlap false)
    c.method.min_keep = 10  # mask.min_keep

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # init_opt: torch.optim.AdamW defaults
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.lr = 0.001  # optimization.lr, not batch-scaled ...
    c.optim.lr_reference_batch = 2048  # ... so the reference batch is the paper's
    c.optim.lr_scaling = "linear"
    c.optim.warmup_lr = 0.0002  # optimization.start_lr
    c.optim.warmup_epochs = 40  # optimization.warmup
    c.optim.min_lr = 1e-6  # optimization.final_lr
    c.optim.weight_decay = 0.04  # optimization.weight_decay, cosine ...
    c.optim.weight_decay_end = 0.4  # ... to final_weight_decay; not on biases / 1-D params
    c.optim.schedule_horizon = 1.0  # optimization.ipe_scale 1.0 (init_opt's default is 1.25)
    c.optim.teacher_momentum = 0.996  # optimization.ema, linear (train.py momentum_scheduler) ...
    c.optim.teacher_momentum_end = 1.0
    c.optim.teacher_momentum_schedule = "linear"

    # data: RandomResizedCrop(224, crop_scale (0.3, 1.0)); no flip, colour distortion or blur.
    c.augment = base.single_view_augment(size=224, scale=(0.3, 1.0), flip_prob=0.0)
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """I-JEPA on CIFAR-10 within a CPU hour, with DINO's CIFAR-10 schedule (base.use_cifar10_vit).

    The CIFAR10_VIT encoder without [CLS], 4 px patches (an 8 x 8 grid, so the blocks have
    room: targets ~3 x 3, the context up to 7 x 7), a 2-block 64-wide predictor, and a
    teacher averaging ~100 steps (momentum 0.99, as DINO's CIFAR-10 preset) so that the
    targets move within the hour.
    """
    c = base.use_cifar10_vit(imagenet_config())
    c.model.update({"patch_size": 4, "pos_embed": "sincos"})
    c.model.class_token = False
    c.method.update({"predictor_embed_dim": 64, "predictor_depth": 2, "predictor_num_heads": 4})
    c.optim.warmup_lr = 0.0
    c.optim.teacher_momentum = 0.99
    c.optim.teacher_momentum_schedule = "linear"
    c.augment = base.single_view_augment(size=32, scale=(0.3, 1.0), flip_prob=0.0)
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """A few steps on tiny shapes (32 px, 4 px patches, a 1-block 16-wide predictor)."""
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 16, "depth": 1, "num_heads": 2})
    c.method.update({"predictor_embed_dim": 16, "predictor_depth": 1, "predictor_num_heads": 2})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper's recipe on ViT-S/16), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
