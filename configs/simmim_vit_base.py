"""SimMIM ViT-B/16 (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022).

    python -m ssl_jax.main --config=configs/simmim_vit_base.py --workdir=DIR            # ImageNet, the paper
    python -m ssl_jax.main --config=configs/simmim_vit_base.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/simmim_vit_base.py:smoke --workdir=DIR      # seconds, tiny shapes

Defaults are microsoft/SimMIM's `configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml`
(cited as KEY) on top of its `config.py` defaults, and `main_simmim.py` / `data/data_simmim.py`.
Deliberate (docs/FIDELITY.md (simmim_vit_base)): the reference's ViT-B uses a shared relative
position bias (USE_SHARED_RPB) instead of absolute position embeddings; this ViT has learned
absolute ones (vit.py has no relative bias). Its attention has a k bias the reference (BEiT's
q_bias / v_bias) lacks: a constant per query row, which softmax ignores. bfloat16 instead of AMP.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    """The paper's ViT-B/16 800-epoch pre-training on ImageNet-1k."""
    c = base.base_config()
    c.batch_size = 2048  # paper Sec. 4.1 (ViT-B): batch 2048 (DATA.BATCH_SIZE 128 per GPU x 16 GPUs).
    c.num_epochs = 800  # TRAIN.EPOCHS 800

    c.model = base.vit_model("base", patch_size=16, img_size=224, drop_path_rate=0.1)  # MODEL.DROP_PATH_RATE 0.1
    c.model.mask_token = "trunc_normal"  # VisionTransformerForSimMIM: mask_token ~ trunc_normal(std .02)
    c.model.layerscale = 0.1  # MODEL.VIT.INIT_VALUES 0.1: LayerScale gamma_1, gamma_2 in every block
    c.model.init = "simmim"  # models/vision_transformer.py _init_weights (Conv2d too) + fix_init_weight

    c.method = ml_collections.ConfigDict()
    c.method.name = "simmim"
    c.method.mask_patch_size = 32  # DATA.MASK_PATCH_SIZE 32: masks drawn on 32 px cells ...
    c.method.mask_ratio = 0.6  # DATA.MASK_RATIO 0.6: ... ceil(0.6 x 49) = 30 of the 7 x 7 cells

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # TRAIN.OPTIMIZER adamw, betas (0.9, 0.999), eps 1e-8
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.lr = 1e-4  # TRAIN.BASE_LR 1e-4 ...
    c.optim.lr_reference_batch = 512  # ... x total batch / 512 (main_simmim.py), as WARMUP_LR
    c.optim.lr_scaling = "linear"
    c.optim.warmup_lr = 5e-7  # TRAIN.WARMUP_LR 5e-7
    c.optim.warmup_epochs = 10  # TRAIN.WARMUP_EPOCHS 10
    c.optim.lr_schedule = "multistep"  # LR_SCHEDULER multistep: x GAMMA 0.1 at epoch 700
    c.optim.lr_milestones = (700,)
    c.optim.lr_gamma = 0.1
    # main_simmim.py calls lr_scheduler.step_update(i) after iteration i: iteration i runs at the lr of i - 1.
    c.optim.schedule_offset = -1
    c.optim.min_lr = 0.0  # unused by multistep
    c.optim.weight_decay = 0.05  # TRAIN.WEIGHT_DECAY 0.05, constant; not on biases / 1-D params ...
    c.optim.weight_decay_end = 0.05
    c.optim.no_decay_patterns = (r"backbone/cls_token$",)  # ... nor on no_weight_decay()'s cls_token (optimizer.py)
    c.optim.clip_grad = 5.0  # TRAIN.CLIP_GRAD 5.0: torch.nn.utils.clip_grad_norm_ of all gradients together
    c.optim.clip_grad_scope = "global"

    # data_simmim.py: RandomResizedCrop(224, scale=(0.67, 1.), ratio=(3/4, 4/3)) with torchvision's default
    # bilinear interpolation, RandomHorizontalFlip, Normalize(ImageNet mean/std).
    c.augment = base.single_view_augment(size=224, scale=(0.67, 1.0), flip_prob=0.5)
    c.augment.interpolation = "bilinear"
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """SimMIM on CIFAR-10 within a CPU hour, with DINO's CIFAR-10 schedule (base.use_cifar10_vit).

    The CIFAR10_VIT encoder with 4 px patches (64 tokens) and masks on 8 px cells (4 x 4
    cells, ceil(0.6 x 16) = 10 masked), the ratio of cell to patch size the paper uses for
    ViT (32 / 16 = 2); constant weight decay 0.05 as the paper, cosine lr. Like the other
    methods' CIFAR-10 presets, the ViT has no LayerScale.
    """
    c = base.use_cifar10_vit(imagenet_config())
    c.model.patch_size = 4
    c.model.mask_token = "trunc_normal"
    c.method.mask_patch_size = 8
    c.optim.weight_decay = 0.05
    c.optim.weight_decay_end = 0.05
    c.augment = base.single_view_augment(size=32, scale=(0.67, 1.0), flip_prob=0.5)
    c.augment.interpolation = "bilinear"
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """A few steps on tiny shapes: 32 px, 8 px patches, 16 px mask cells."""
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8})
    c.method.mask_patch_size = 16
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
