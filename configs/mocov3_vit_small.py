"""MoCo v3 ViT-S/16 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers", 2021).

    python -m ssl_jax.main --config=configs/mocov3_vit_small.py --workdir=DIR            # ImageNet, the paper
    python -m ssl_jax.main --config=configs/mocov3_vit_small.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/mocov3_vit_small.py:smoke --workdir=DIR      # seconds, tiny shapes

Defaults are the ViT-Small recipe of facebookresearch/moco-v3 (CONFIG.md, `main_moco.py`
flags cited as `--flag`); docs/FIDELITY.md (mocov3_vit_small) audits every field. Deliberate
differences, shared with the other recipes: bfloat16 compute (`compute_dtype`) instead of
float16 autocast + GradScaler (bfloat16 needs no loss scaling); the warm-up reaches the peak
lr one step earlier (DINO's `cosine_scheduler`, ssl_jax/optim.py); crops are resized bicubic,
not torchvision's default bilinear, and blurred with an exact 23-tap Gaussian, not PIL's
GaussianBlur (the shared augmentation ops); linear evaluation runs `linear_dino` with MoCo
v3's settings (see the fidelity table).
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 4096  # -b 4096
    c.num_epochs = 300  # --epochs=300 (73.2 % linear eval)

    c.model = ml_collections.ConfigDict()
    c.model.name = "vit"
    c.model.size = "small"  # -a vit_small: vits.py vit_small, 384 wide, 12 blocks, mlp_ratio 4, qkv_bias, LN eps 1e-6
    c.model.num_heads = 12  # vits.py vit_small: num_heads=12, heads 32 wide (DINO's vit_small has 6)
    c.model.patch_size = 16  # vits.py vit_small: patch_size=16
    c.model.img_size = 224  # main_moco.py: RandomResizedCrop(224)
    c.model.drop_path_rate = 0.0  # timm VisionTransformer's default; vits.py sets none
    c.model.pos_embed = "sincos"  # build_2d_sincos_position_embedding, requires_grad=False
    c.model.init = "mocov3"  # VisionTransformerMoCo.__init__: xavier-uniform Linears (qkv as 3 maps), cls N(0, 1e-6)
    c.model.embed_dim = 0  # with size='custom' only
    c.model.depth = 0

    c.method = ml_collections.ConfigDict()
    c.method.name = "mocov3"
    c.method.temperature = 0.2  # --moco-t=.2
    # moco/builder.py `MoCo_ViT._build_projector_and_predictor_mlps`: projector _build_mlp(3, ...), predictor
    # _build_mlp(2, ...), both with last_bn=True: Linear(bias=False) -> BN -> ReLU, the last Linear(bias=False)
    # followed by BatchNorm1d(affine=False); torch.nn.Linear's default init (built after vits.py's init).
    c.method.projector = base.mlp(4096, 256, 3, last_bn=True)  # --moco-mlp-dim 4096, --moco-dim 256
    c.method.predictor = base.mlp(4096, 256, 2, last_bn=True)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # --optimizer=adamw
    c.optim.lr = 1.5e-4  # --lr=1.5e-4 ...
    c.optim.lr_reference_batch = 256  # ... x batch / 256
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0  # half-cycle cosine to 0
    c.optim.warmup_epochs = 40  # --warmup-epochs=40
    c.optim.weight_decay = 0.1  # --wd=.1, on every parameter (torch AdamW over model.parameters())
    c.optim.weight_decay_end = 0.1
    c.optim.exclude_1d_from_decay = False
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.frozen_patterns = ("^backbone/patch_embed/",)  # --stop-grad-conv1: a frozen random patch projection
    c.optim.teacher_momentum = 0.99  # --moco-m=0.99 ...
    c.optim.teacher_momentum_end = 1.0  # ... --moco-m-cos: cosine to 1

    # BYOL's asymmetric augmentation with --crop-min=.08.
    c.augment = base.two_view_augment(size=224, scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2,
                                      hue=0.1, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2))
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """MoCo v3 on CIFAR-10 within a CPU hour, on the ViT of DINO's CIFAR-10 preset (like for like).

    base.CIFAR10_VIT, batch 128, 6 epochs with 2 of warm-up, heads narrowed to 1024
    hidden units, lr 1e-3 x 128/256 = 5e-4 (DINO's CIFAR-10 peak; the paper's 1.5e-4 is
    tuned for 300 epochs at batch 4096), 32 px views without blur.
    """
    c = base.use_cifar10(imagenet_config())
    c.batch_size = 128
    c.num_epochs = 6
    c.model.update(base.CIFAR10_VIT)
    c.method.projector.hidden_dim = 1024
    c.method.predictor.hidden_dim = 1024
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 2
    c.augment.global_crops.size = 32
    c.augment.blur_prob = (0.0, 0.0, 0.0)
    c.eval.knn_k = (20, 200)
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 32, "depth": 2, "num_heads": 2})
    c.method.projector.update({"hidden_dim": 32, "out_dim": 16})
    c.method.predictor.update({"hidden_dim": 32, "out_dim": 16})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
