"""Parametric instance discrimination on a small dataset (Cao, Yu and Wu, "Training Vision Transformers
with Only 2040 Images", ECCV 2022): every image its own class, then fine-tuning with labels.

    python -m ssl_jax.main --config=configs/instance_vit_tiny.py --workdir=DIR          # Flowers-102, 2040 images
    python -m ssl_jax.main --config=configs/instance_vit_tiny.py:cifar10 --workdir=DIR  # CIFAR-10, 50000 images
    python -m ssl_jax.main --config=configs/instance_vit_tiny.py:smoke --workdir=DIR      # seconds, tiny shapes
    then: python -m ssl_jax.evaluate --config=... --workdir=DIR --eval=finetune

Defaults are the authors' CupidJay/Training-Vision-Transformers-with-only-2040-images:
`run_deit_tiny_instance_discrimination_flowers.sh` (cited as --flag), `main_deit_instance_discrimination.py`
(`train`, `adjust_learning_rate`), `utils/multicrop_dataset.py` (MultiCropDataset) and `models/model.py`
(deit_tiny_patch16_224). Fine-tuning (`run_deit_tiny_flowers.sh`) loads the last checkpoint
(checkpoint_0799), not the per-epoch parameter EMA the script also saves.
Deliberate: the post-warm-up cosine is the standard one, cos(pi (e - 2) / (E - 2)); the reference writes
cos((pi e - 2) / (E - 2)) (misplaced parenthesis), within 0.3 % of the peak lr of it at every step;
bfloat16 compute (the reference runs float32); fine-tuning is the shared MAE protocol, not main_deit.py's.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base
from ssl_jax.methods.instance import INSTANCE_RULES
from ssl_jax.sharding import DEFAULT_RULES


def imagenet_config() -> ml_collections.ConfigDict:
    """Named for the preset convention: the paper's dataset is Oxford Flowers-102 (tfds `oxford_flowers102`)."""
    c = base.base_config()
    c.dataset.name = "oxford_flowers102"
    c.dataset.train_split = "train+validation"  # 1020 + 1020 = the 2040 images (the paper's "flowers2" folder)
    c.dataset.num_classes = 102
    c.dataset.fields = ("index",)
    c.dataset.shuffle_buffer = 2040
    c.eval.test_split = "test"
    c.eval.train_split = "train+validation"
    c.batch_size = 256  # -b 256 (total over the GPUs)
    c.num_epochs = 800  # --epochs 800
    # -a deit_tiny_patch16_224 --embed-dim 192 with img_size=size_crops[0] = 112; drop_path_rate=0.1 (main_worker).
    c.model = base.vit_model("tiny", patch_size=16, img_size=112, drop_path_rate=0.1)
    c.method = ml_collections.ConfigDict({
        "name": "instance",
        "num_instances": 2040,  # --num-classes 2040
        "label_smoothing": 0.0,  # nn.CrossEntropyLoss (LabelSmoothingCrossEntropy is commented out)
        "cutmix_alpha": 0.5,  # --cutmix --alpha 0.5: cutmix_data, lam = max(lam, 1 - lam)
    })
    c.optim = ml_collections.ConfigDict({
        "name": "adamw", "b1": 0.9, "b2": 0.999, "eps": 1e-8,  # torch.optim.AdamW defaults
        "lr": 5e-4, "lr_reference_batch": 256, "lr_scaling": "linear",  # --lr 5e-4, not batch-scaled
        "min_lr": 0.0,  # adjust_learning_rate: cosine to 0
        "warmup_epochs": 2, "warmup_style": "fraction",  # lr x (epoch + i / ipe) / 2, set every iteration
        "weight_decay": 1e-3, "weight_decay_end": 1e-3,  # --wd 1e-3, constant ...
        "exclude_1d_from_decay": False})  # ... on every parameter (AdamW(model.parameters()))
    # --size_crops 112 112 --nmb_crops 2 4 --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.4; every crop:
    # RandomResizedCrop (bilinear), flip, ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, PIL blur p 0.5
    # radius (0.1, 2), Normalize(mean, std=(0.228, 0.224, 0.225)) (sic). The 4 small crops are a second batch.
    c.augment = base.multicrop_augment(global_scale=(0.14, 1.0), local_scale=(0.05, 0.4), local_number=4,
                                       global_size=112, local_size=112)
    c.augment.color_jitter.update({"prob": 0.8, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2})
    c.augment.blur_prob = (0.5, 0.5, 0.5)
    c.augment.solarize_prob = (0.0, 0.0, 0.0)
    c.augment.interpolation = "bilinear"
    c.augment.std = (0.228, 0.224, 0.225)
    # The [D, N_images] classifier split over its N axis when config.parallel.fsdp > 1.
    c.parallel.rules = INSTANCE_RULES + DEFAULT_RULES
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """50000 instances on the CPU-hour ViT with all 2 + 4 crops at 16 px (half of CIFAR's 32 px, as
    112 is half of the fine-tuning's 224), DINO's CIFAR-10 AdamW schedule."""
    c = base.use_cifar10_vit(imagenet_config())
    c.dataset.train_split = "train"
    c.method.num_instances = 50_000
    c.augment.global_crops.size = 16
    c.augment.local_crops.size = 16
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = base.use_smoke(cifar10_config())
    c.dataset.train_split = "train[:512]"
    c.method.num_instances = 512
    c.augment.local_crops.number = 1
    c.model.update({"embed_dim": 32, "depth": 1, "num_heads": 2})
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper's Flowers-102), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
