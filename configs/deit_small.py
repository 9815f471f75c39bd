"""DeiT (Touvron et al., "Training data-efficient image transformers & distillation through attention",
ICML 2021): DeiT-S/16 with the distillation token, hard distillation from a frozen classifier
(`ssl_jax/methods/deit.py`). Supervised: it reads the labels (`dataset.fields`).

    # a teacher first (distillation 'none' trains the plain classifier; any backbone), then the student:
    python -m ssl_jax.main --config=configs/deit_small.py:cifar10_teacher --workdir=TEACHER
    python -m ssl_jax.main --config=configs/deit_small.py:cifar10 --config.teacher_init_from=TEACHER --workdir=DIR
    python -m ssl_jax.main --config=configs/deit_small.py --config.teacher_init_from=TEACHER --workdir=DIR  # ImageNet
    python -m ssl_jax.main --config=configs/deit_small.py:smoke_teacher --workdir=T   # seconds, tiny shapes
    python -m ssl_jax.main --config=configs/deit_small.py:smoke --config.teacher_init_from=T --workdir=DIR

Defaults are facebookresearch/deit `main.py` flags (cited as `--flag`; DeiT-S: README's 4 GPUs x
`--batch-size 256`, the paper's Table 9 batch 1024), `models.py` (`deit_small_distilled_patch16_224`)
and `losses.py` (DistillationLoss). Deliberate differences (docs/FIDELITY.md (deit_small)):
- the teacher is `config.teacher` + a Linear head loaded from `teacher_init_from` (an ssl_jax run with
  `distillation_type='none'`); the paper's RegNetY-16GF (`--teacher-model regnety_160`) is not in
  ssl_jax, and converted PyTorch checkpoints carry no classifier here (ssl_jax.convert skips it), so
  the ImageNet preset's teacher is a ResNet-50 trained that way;
- the distillation token is a register token: no position embedding of its own (DeiT adds one; a
  learned constant plus a learned constant is one learned constant, so the function class is the same);
- the pre-training input pipeline has no RandAugment (`--aa rand-m9-mstd0.5-inc1`) and no
  repeated-augmentation sampler (`--repeated-aug`); ColorJitter 0.4 is applied instead (timm applies
  it only without auto-augment);
- the lr follows timm's per-epoch warm-up + cosine per step (the reference's scheduler steps per epoch);
- no model EMA (`--model-ema` is off by default in main.py as well).
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 1024  # README: 4 GPUs x --batch-size 256 (DeiT-S); paper Table 9: 1024
    c.num_epochs = 300  # --epochs 300
    # deit_small_distilled_patch16_224: embed 384, depth 12, 6 heads, qkv_bias; --drop-path 0.1
    c.model = base.vit_model("small", patch_size=16, img_size=224, drop_path_rate=0.1)
    c.model.num_register_tokens = 1  # DistilledVisionTransformer.dist_token, after [CLS]
    c.model.init = "deit"  # trunc_normal(.02) on cls_token, dist_token, pos_embed, Linears (vit.VIT_INITS)
    c.dataset.fields = ("label",)
    c.method = ml_collections.ConfigDict({
        "name": "deit",
        "distillation_type": "hard",  # README's distillation command --distillation-type hard (DeiT⚗, Table 3)
        "distillation_alpha": 0.5,  # --distillation-alpha 0.5
        "distillation_tau": 1.0,  # --distillation-tau 1.0
        "label_smoothing": 0.1,  # --smoothing 0.1
        "reprob": 0.25,  # --reprob 0.25 (--remode pixel, --recount 1)
        "mixup": 0.8, "cutmix": 1.0,  # --mixup 0.8, --cutmix 1.0
        "mixup_prob": 1.0, "mixup_switch_prob": 0.5,  # --mixup-prob 1.0, --mixup-switch-prob 0.5, --mixup-mode batch
    })
    # Deliberate: the paper's RegNetY-16GF teacher is not in ssl_jax; a ResNet-50 classifier stands in.
    c.teacher = base.resnet_model(50)
    c.teacher_init_from = ""  # --teacher-path: required (an ssl_jax workdir trained with distillation_type='none')
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "b1": 0.9, "b2": 0.999, "eps": 1e-8,  # --opt adamw, --opt-eps 1e-8, default betas
        "lr": 5e-4, "lr_reference_batch": 512, "lr_scaling": "linear",  # --lr 5e-4 x batch / 512 (main.py)
        # --warmup-lr 1e-6 is not batch-scaled in the reference; optim scales warmup_lr like lr, so 1e-6 x 512 / 1024
        "warmup_lr": 1e-6 * 512 / 1024, "warmup_epochs": 5, "warmup_style": "fraction",  # --warmup-epochs 5
        "min_lr": 1e-5,  # --min-lr 1e-5 (not batch-scaled)
        "weight_decay": 0.05, "weight_decay_end": 0.05,  # --weight-decay 0.05, constant; not on 1-D / biases ...
        # ... nor timm's VisionTransformer.no_weight_decay() = {pos_embed, cls_token}: dist_token (3-D) decays
        "no_decay_patterns": (r"backbone/(pos_embed|cls_token)$",),
    })
    # timm create_transform(224, is_training, --color-jitter 0.4, bicubic): RandomResizedCrop(scale (0.08, 1)),
    # flip; ColorJitter 0.4 stands in for --aa rand-m9-mstd0.5-inc1 (deliberate, module docstring).
    c.augment = base.single_view_augment(size=224, scale=(0.08, 1.0), flip_prob=0.5)
    c.augment.color_jitter.update({"prob": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0})
    return c


def teacher_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` as the supervised run that trains a teacher for it: distillation 'none', the teacher's model
    as the student's, no teacher section. Returns `c`."""
    c.model = c.teacher
    c.method.distillation_type = "none"
    del c["teacher"]
    del c["teacher_init_from"]
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The CPU-hour ViT (128 wide, 4 blocks, 8 px patches) with DINO's CIFAR-10 AdamW schedule,
    distilled from a CIFAR ResNet-18 classifier (`:cifar10_teacher`)."""
    c = base.use_cifar10_vit(imagenet_config())
    c.model.num_register_tokens = 1
    c.model.init = "deit"
    c.teacher = base.resnet_model(18, cifar_stem=True)
    c.optim.weight_decay = c.optim.weight_decay_end = 0.05  # --weight-decay 0.05, constant
    c.optim.no_decay_patterns = (r"backbone/(pos_embed|cls_token)$",)
    c.augment = base.single_view_augment(size=32, scale=(0.08, 1.0), flip_prob=0.5)
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD
    return c


def cifar10_teacher_config() -> ml_collections.ConfigDict:
    """The `:cifar10` run's teacher: a CIFAR ResNet-18 classifier, same data and schedule."""
    return teacher_config(cifar10_config())


def smoke_config() -> ml_collections.ConfigDict:
    """A few steps on tiny shapes: a 1-block 32-wide ViT distilled from a ResNet-10 of width 8."""
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 32, "depth": 1, "num_heads": 2})
    c.teacher.update({"depth": 10, "width": 8})
    c.augment.global_crops.size = 16
    return c


def smoke_teacher_config() -> ml_collections.ConfigDict:
    """The `:smoke` run's teacher: the ResNet-10 of width 8 as a classifier."""
    return teacher_config(smoke_config())


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'cifar10', 'cifar10_teacher', 'smoke', 'smoke_teacher'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config,
                               "cifar10_teacher": cifar10_teacher_config, "smoke": smoke_config,
                               "smoke_teacher": smoke_teacher_config}, preset, __file__)
