"""iBOT ViT-S/16 (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022).

    python -m ssl_jax.main --config=configs/ibot_small.py --workdir=DIR            # ImageNet, the paper
    python -m ssl_jax.main --config=configs/ibot_small.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/ibot_small.py:smoke --workdir=DIR      # seconds, tiny shapes

Values are bytedance/ibot's: `main_ibot.py` flag defaults (cited as `--flag`), overridden by
the README's ViT-S/16 command (`./run.sh imagenet_pretrain $JOB_NAME vit_small teacher 16
--teacher_temp 0.07 --warmup_teacher_temp_epochs 30 --norm_last_layer false --epochs 800
--batch_size_per_gpu 64 --shared_head true --out_dim 8192 --local_crops_number 10
--global_crops_scale 0.25 1 --local_crops_scale 0.05 0.25 --pred_ratio 0 0.3
--pred_ratio_var 0 0.2`, cited as "README"), which reaches 75.2% kNN.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    """The README's ViT-S/16 recipe on ImageNet-1k (tfds `imagenet2012`)."""
    c = base.base_config()
    c.batch_size = 1024  # README: --batch_size_per_gpu 64 on 16 GPUs ("teacher 16").
    c.num_epochs = 800  # README: --epochs 800.

    # Deliberate: --use_fp16 True (float16 autocast + GradScaler); here bfloat16 compute, float32 params.
    c.model = base.vit_model("small", patch_size=16, img_size=224,  # --arch vit_small, --patch_size 16
                             drop_path_rate=0.1)  # --drop_path 0.1, student only
    c.model.mask_token = "zeros"  # the ViT's `masked_embed`: zeros, replaces masked patch embeddings

    c.method = ml_collections.ConfigDict()
    c.method.name = "ibot"
    c.method.out_dim = 8192  # README: --out_dim 8192 ([CLS] prototypes)
    c.method.patch_out_dim = 8192  # --patch_out_dim (ignored when a head is shared: then out_dim)
    c.method.shared_head = True  # README: --shared_head true (student's patch tokens use last_layer)
    c.method.shared_head_teacher = True  # --shared_head_teacher True (default)
    c.method.norm_last_layer = False  # README: --norm_last_layer false: weight_g trained
    c.method.head_hidden_dim = 2048  # iBOTHead / DINOHead hidden_dim
    c.method.head_bottleneck_dim = 256  # bottleneck_dim
    c.method.head_nlayers = 3  # nlayers
    c.method.student_temp = 0.1  # iBOTLoss student_temp
    c.method.center_momentum = 0.9  # iBOTLoss center_momentum = center_momentum2
    c.method.warmup_teacher_temp = 0.04  # --warmup_teacher_temp
    c.method.teacher_temp = 0.07  # README: --teacher_temp 0.07
    c.method.warmup_teacher_patch_temp = 0.04  # --warmup_teacher_patch_temp
    c.method.teacher_patch_temp = 0.07  # --teacher_patch_temp
    c.method.warmup_teacher_temp_epochs = 30  # README: --warmup_teacher_temp_epochs 30 (both temperatures)
    c.method.lambda1 = 1.0  # --lambda1, [CLS] loss weight
    c.method.lambda2 = 1.0  # --lambda2, masked patch loss weight
    # Masks (ImageFolderMask, --pred_shape block): per crop, a ratio chosen uniformly among
    # pred_ratio, then uniform in ratio +- pred_ratio_var: half the crops unmasked, the others
    # masking U[0.1, 0.5] of their patches in BEiT blocks.
    c.method.pred_ratio = (0.0, 0.3)  # README: --pred_ratio 0 0.3
    c.method.pred_ratio_var = (0.0, 0.2)  # README: --pred_ratio_var 0 0.2
    c.method.pred_aspect_ratio = (0.3, 1 / 0.3)  # main_ibot.py: pred_aspect_ratio=(0.3, 1/0.3)
    c.method.pred_start_epoch = 0  # --pred_start_epoch 0 (50 only for Swin)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # --optimizer adamw
    c.optim.lr = 0.0005  # --lr, the peak lr at batch 256 ...
    c.optim.lr_reference_batch = 256  # ... scaled linearly: lr * batch_size / 256.
    c.optim.min_lr = 1e-6  # --min_lr
    c.optim.warmup_epochs = 10  # --warmup_epochs
    c.optim.weight_decay = 0.04  # --weight_decay, cosine ...
    c.optim.weight_decay_end = 0.4  # ... to --weight_decay_end; not on biases and norms.
    c.optim.b1 = 0.9  # torch.optim.AdamW defaults
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_grad = 3.0  # --clip_grad ...
    c.optim.clip_grad_scope = "tensor"  # ... on each parameter tensor's own norm (utils.clip_gradients)
    c.optim.freeze_epochs = 1  # --freeze_last_layer 1 (cancel_gradients_last_layer: last_layer and last_layer2)
    c.optim.freeze_patterns = ("head/last_layer",)
    c.optim.teacher_momentum = 0.996  # --momentum_teacher, cosine per iteration ...
    c.optim.teacher_momentum_end = 1.0  # ... to 1.

    c.augment = base.multicrop_augment(  # DataAugmentationiBOT = DINO's
        global_scale=(0.25, 1.0),  # README: --global_crops_scale 0.25 1
        local_scale=(0.05, 0.25),  # README: --local_crops_scale 0.05 0.25
        local_number=10)  # README: --local_crops_number 10
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """iBOT on CIFAR-10 within a CPU hour, with every scale-down of DINO's `:cifar10` preset
    (configs/dino_small.py says why each one), so the two compare like for like: the
    CIFAR10_VIT (8 px patches: 4x4 tokens per 32 px global crop), batch 128, 6 epochs,
    4096 prototypes, 1024-wide heads, constant teacher temperatures 0.04, lr 1e-3 x 128/256,
    2 warm-up epochs, last layer frozen throughout, teacher momentum 0.99, 6 local crops
    of 16 px, no blur."""
    c = base.use_cifar10(imagenet_config())
    c.batch_size = 128
    c.num_epochs = 6
    c.model.update(base.CIFAR10_VIT)
    c.method.out_dim = 4096
    c.method.patch_out_dim = 4096
    c.method.head_hidden_dim = 1024
    c.method.teacher_temp = 0.04
    c.method.teacher_patch_temp = 0.04
    c.method.warmup_teacher_temp_epochs = 0
    c.optim.lr = 0.001
    c.optim.warmup_epochs = 2
    c.optim.freeze_epochs = c.num_epochs
    c.optim.teacher_momentum = 0.99
    c.augment.global_crops.size = 32
    c.augment.local_crops.size = 16
    c.augment.local_crops.number = 6
    c.augment.blur_prob = (0.0, 0.0, 0.0)
    c.eval.knn_k = (20, 200)
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """A few steps on tiny shapes with the real CIFAR-10 files: the whole path in seconds."""
    c = base.use_smoke(cifar10_config())  # 2 "epochs" of 3 steps
    c.model.update({"embed_dim": 16, "depth": 1, "num_heads": 2})
    c.method.update({"out_dim": 32, "patch_out_dim": 32, "head_hidden_dim": 32, "head_bottleneck_dim": 16})
    c.method.shared_head = False  # exercises the separate student last_layer2 (teacher shared, as the default)
    c.method.warmup_teacher_temp_epochs = 2  # exercises the temperature warm-ups
    c.method.teacher_temp = 0.07
    c.method.teacher_patch_temp = 0.07
    c.optim.warmup_epochs = 1
    c.optim.freeze_epochs = 1
    c.augment.local_crops.number = 2
    c.eval.train_split = "train[:400]"
    c.eval.test_split = "test[:200]"
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the README's ViT-S/16 recipe), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
