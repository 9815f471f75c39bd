"""UNIC (Sariyildiz et al., "UNIC: Universal Classification Models via Multi-teacher Distillation",
ECCV 2024): a ViT-B/16 distilled from four frozen ViT-B/16 teachers with a ladder of projectors,
teacher dropping and standardised teacher features (`ssl_jax/methods/unic.py`).

    python -m ssl_jax.main --config=configs/unic_vit_base.py --workdir=DIR \\
        --config.teacher_init_from.dino=dino_vitbase16_pretrain.pth --config.teacher_init_from.ibot=... \\
        --config.teacher_init_from.deit3=... --config.teacher_init_from.dbotft=...
    python -m ssl_jax.main --config=configs/unic_vit_base.py:cifar10 --workdir=DIR \\
        --config.teacher_init_from.dino=DINO_CIFAR10_WORKDIR                 # one teacher, the CPU-hour ViT
    python -m ssl_jax.main --config=configs/unic_vit_base.py:smoke --workdir=DIR \\
        --config.teacher_init_from.a=A.safetensors --config.teacher_init_from.b=B.safetensors

Defaults are naver/unic `main_unic.py` flags (cited as `--flag`; the README trains on 8 GPUs x
--batch_size_per_gpu 128), `modeling/unic.py` (LP, AdaptMLP), `modeling/losses.py`,
`modeling/teacher_dropping.py`, `teachers/` and `utils.py`. Deliberate differences
(docs/FIDELITY.md (unic_vit_base)):
- the teachers' weights come from `teacher_init_from` through ssl_jax's converter, which reads DINO
  and iBOT checkpoints and timm ViTs; DeiT-III (LayerScale) and dBOT-ft checkpoints are not tested;
- the pre-training pipeline's blur is the shared 13-tap Gaussian (UNIC: kernel 9, sigma (0.1, 5.0),
  after ToDtype) and its colour jitter the shared torchvision order;
- teacher dropping draws from the step's jax rng (the reference: python's `random`);
- bfloat16 compute instead of fp16 autocast with a GradScaler.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 1024  # 8 GPUs x --batch_size_per_gpu 128
    c.num_epochs = 200  # --epochs 200
    # --arch vit_base --patch_size 16 --drop_path_rate 0.1: dinov2/models/vision_transformer.py (no registers,
    # no LayerScale by default), its init
    c.model = base.vit_model("base", patch_size=16, img_size=224, drop_path_rate=0.1, init="dinov2")
    # --teachers dino_vitbase_16,deit3_vitbase_16,ibot_vitbase_16,dbotft_vitbase_16 (teachers/config.py)
    c.teacher = ml_collections.ConfigDict({name: base.vit_model("base", patch_size=16, img_size=224)
                                           for name in ("dbotft", "deit3", "dino", "ibot")})
    c.teacher.deit3.layerscale = 1e-6  # DeiT-III's LayerScale (its value is the checkpoint's)
    c.teacher_init_from = ml_collections.ConfigDict({name: "" for name in c.teacher})  # required
    c.method = ml_collections.ConfigDict({
        "name": "unic",
        "hidden_dim": 768, "last_hidden_dim": 3072,  # LP defaults (--lp_args "{'std': 0.02}")
        "lam_cos": 0.5, "lam_sl1": 0.5,  # --lam_lcos 0.5, --lam_lsl1 0.5
        "teacher_drop_prob": 0.5,  # --t_drop_prob 0.5
        "tnorm_momentum": 1.0, "tnorm_momentum_end": 0.001,  # --tnorm_ema_momentum_start / _end
    })
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "b1": 0.9, "b2": 0.99, "eps": 1e-8,  # --optim_args "{'betas':(0.9, 0.99), 'eps':1e-8}"
        "lr": 3e-4, "lr_reference_batch": 256, "lr_scaling": "linear",  # --lr 3e-4 x batch / 256
        "min_lr": 1e-6, "warmup_epochs": 10,  # --min_lr 1e-6, --warmup_epochs 10 (utils.cosine_scheduler)
        "weight_decay": 0.03, "weight_decay_end": 0.03,  # --wd 3e-2, not on biases / 1-D (get_params_groups)
    })
    # get_dataloaders: RandomResizedCrop(224, bicubic), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
    # grayscale 0.2, GaussianBlur p 0.2, solarize p 0.2, ImageNet mean/std. No gradient clipping (--clip_grad 0).
    c.augment = base.multicrop_augment(global_scale=(0.08, 1.0), local_scale=(0.05, 0.4), local_number=0)
    c.augment.global_crops.number = 1
    c.augment.color_jitter.update({"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1})
    c.augment.grayscale_prob = 0.2
    c.augment.blur_prob = (0.2, 0.2, 0.2)
    c.augment.blur_sigma = (0.1, 5.0)
    c.augment.solarize_prob = (0.2, 0.2, 0.2)
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The CPU-hour ViT (128 wide, 4 blocks, 8 px patches) with DINO's CIFAR-10 AdamW schedule, from one
    teacher: the `dino_small.py:cifar10` ViT; LP widths scaled by the ViT's (768 / 3072 for 768 wide)."""
    c = base.use_cifar10_vit(imagenet_config())
    c.model.init = "dinov2"
    teacher = base.vit_model(patch_size=8, img_size=32)
    teacher.update(base.CIFAR10_VIT)
    c.teacher = ml_collections.ConfigDict({"dino": teacher})
    c.teacher_init_from = ml_collections.ConfigDict({"dino": ""})
    c.method.update({"hidden_dim": 128, "last_hidden_dim": 512})
    c.optim.weight_decay = c.optim.weight_decay_end = 0.03
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """A few steps on tiny shapes: a 1-block 16-wide student, two 1-block teachers of widths 16 and 24."""
    c = base.use_smoke(cifar10_config())
    c.model.update({"embed_dim": 16, "depth": 1, "num_heads": 2})
    c.teacher = ml_collections.ConfigDict({name: base.vit_model(patch_size=8, img_size=32) for name in ("a", "b")})
    for name, width in (("a", 16), ("b", 24)):
        c.teacher[name].update({"size": "custom", "embed_dim": width, "depth": 1, "num_heads": 2})
    c.teacher_init_from = ml_collections.ConfigDict({"a": "", "b": ""})
    c.method.update({"hidden_dim": 16, "last_hidden_dim": 32})
    c.augment.global_crops.size = 16
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper's four teachers), 'cifar10' (the DINO CIFAR-10 teacher), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
