"""DINOv2 ViT-S/16 (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024).

    python -m ssl_jax.main --config=configs/dinov2_small.py --workdir=DIR            # ImageNet-1k
    python -m ssl_jax.main --config=configs/dinov2_small.py:cifar10 --workdir=DIR    # CIFAR-10 on a CPU
    python -m ssl_jax.main --config=configs/dinov2_small.py:smoke --workdir=DIR      # seconds, tiny shapes

The ImageNet-1k recipe of facebookresearch/dinov2: `dinov2/configs/train/vitl16_short.yaml`
("this corresponds to the default config": `dinov2/configs/ssl_default_config.yaml`, cited as
`section.key`, with train.batch_size_per_gpu 64), which the README trains on 4 nodes of 8 GPUs
("Fast setup: training DINOv2 ViT-L/16 on ImageNet-1k", 81.6% kNN). One adaptation: the
backbone is ViT-S/16 instead of ViT-L/16 (the repository publishes no ViT-S pre-training
recipe; its ViT-S/14 is distilled from ViT-g/14). `train/vitl14.yaml` is the ImageNet-22k
recipe (patch 14, 98 px local crops, untied heads, Sinkhorn-Knopp): `separate_head=True` and
`centering='sinkhorn_knopp'` select those two. docs/FIDELITY.md (dinov2_small) has the audit.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    """ViT-S/16 with the reference's ImageNet-1k recipe (tfds `imagenet2012`)."""
    c = base.base_config()
    c.batch_size = 2048  # train.batch_size_per_gpu 64 x 32 GPUs (README: --nodes 4, 8 GPUs each)
    c.num_epochs = 100  # optim.epochs
    c.steps_per_epoch = 1250  # train.OFFICIAL_EPOCH_LENGTH: an "epoch" is 1250 iterations whatever the data

    # student.arch vit_large -> vit_small: the one deliberate change (no ViT-S recipe exists).
    c.model = base.vit_model("small", patch_size=16, img_size=224,  # student.patch_size 16
                             drop_path_rate=0.3)  # student.drop_path_rate, student only
    c.model.drop_path_uniform = True  # student.drop_path_uniform: 0.3 in every block
    # Deliberate: per-sample Bernoulli drop-path at that rate (scaled by 1 / 0.7); above 0.1 the
    # reference's blocks instead add the residual to a random 70% subset of each GPU's batch,
    # scaled by b / subset (layers/block.py drop_add_residual_stochastic_depth): same expectation.
    # Deliberate: compute_precision fp16 with a ShardedGradScaler; here bfloat16 compute, float32 params.
    c.model.layerscale = 1e-5  # student.layerscale
    c.model.num_register_tokens = 0  # student.num_register_tokens (4 in the "with registers" models)
    c.model.mask_token = "zeros"  # DinoVisionTransformer.mask_token: zeros
    c.model.init = "dinov2"  # DinoVisionTransformer.init_weights: cls_token N(0, 1e-6), registers N(0, 1e-6)

    c.method = ml_collections.ConfigDict()
    c.method.name = "dinov2"
    c.method.dino_loss_weight = 1.0  # dino.loss_weight
    c.method.out_dim = 65536  # dino.head_n_prototypes
    c.method.head_hidden_dim = 2048  # dino.head_hidden_dim
    c.method.head_bottleneck_dim = 256  # dino.head_bottleneck_dim
    c.method.head_nlayers = 3  # dino.head_nlayers (ibot.head_nlayers is also 3)
    c.method.norm_last_layer = False  # dinov2/layers/dino_head.py never freezes weight_g: it is trained
    c.method.koleo_loss_weight = 0.1  # dino.koleo_loss_weight
    c.method.koleo_group_size = 64  # KoLeoLoss runs on each GPU's batch (train.batch_size_per_gpu); 0: global
    c.method.ibot_loss_weight = 1.0  # ibot.loss_weight
    c.method.separate_head = False  # ibot.separate_head false: patches go through dino_head (vitl14.yaml: true)
    c.method.ibot_out_dim = 65536  # ibot.head_n_prototypes (separate_head=True only)
    c.method.ibot_head_hidden_dim = 2048  # ibot.head_hidden_dim (separate_head=True only)
    c.method.ibot_head_bottleneck_dim = 256  # ibot.head_bottleneck_dim (separate_head=True only)
    # Deliberate: collate_data_and_cast stratifies the mask ratios over each GPU's 2 x 64 crops;
    # here over the global batch's (same per-crop distribution, one draw per step).
    c.method.mask_sample_probability = 0.5  # ibot.mask_sample_probability: half the global crops masked
    c.method.mask_ratio_min_max = (0.1, 0.5)  # ibot.mask_ratio_min_max
    c.method.centering = "centering"  # train.centering "centering": softmax centering (vitl14.yaml: sinkhorn_knopp)
    c.method.student_temp = 0.1  # DINOLoss / iBOTPatchLoss student_temp
    # Deliberate: the patch center is the mean over the global batch's masked patches; the
    # reference averages each GPU's mean (iBOTPatchLoss.reduce_center_update): equal when every
    # GPU masks as many patches.
    c.method.center_momentum = 0.9  # DINOLoss / iBOTPatchLoss center_momentum
    c.method.warmup_teacher_temp = 0.04  # teacher.warmup_teacher_temp, linear per iteration ...
    c.method.teacher_temp = 0.07  # ... to teacher.teacher_temp (both losses)
    c.method.warmup_teacher_temp_epochs = 30  # teacher.warmup_teacher_temp_epochs

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # train.py build_optimizer: torch.optim.AdamW
    # optim.base_lr 0.004 at batch 1024 with scaling_rule sqrt_wrt_1024: lr = 0.004 * sqrt(B / 1024),
    # i.e. (0.004 / 32) * sqrt(B) with this repo's sqrt scaling (B = 2048: 0.00566).
    c.optim.lr = 0.004 / 1024**0.5
    c.optim.lr_scaling = "sqrt"
    c.optim.lr_reference_batch = 1024  # (unused by sqrt scaling; the batch base_lr refers to)
    c.optim.min_lr = 1e-6  # optim.min_lr
    c.optim.warmup_epochs = 10  # optim.warmup_epochs
    c.optim.weight_decay = 0.04  # optim.weight_decay, cosine ...
    c.optim.weight_decay_end = 0.4  # ... to optim.weight_decay_end; not on biases, norms, LayerScale
    c.optim.b1 = 0.9  # optim.adamw_beta1
    c.optim.b2 = 0.999  # optim.adamw_beta2
    c.optim.eps = 1e-8  # torch.optim.AdamW default
    c.optim.clip_grad = 3.0  # optim.clip_grad ...
    c.optim.clip_grad_scope = "module"  # ... on each module's global norm (train.py: v.clip_grad_norm_ per student module)
    c.optim.freeze_epochs = 1  # optim.freeze_last_layer_epochs: last-layer lr 0 in epoch 0 ...
    c.optim.freeze_by_zero_lr = True  # ... while its AdamW moments accumulate (train.py last_layer_lr_schedule)
    c.optim.freeze_patterns = ("_head/last_layer/",)  # dino_head and ibot_head
    c.optim.layer_decay = 0.9  # optim.layerwise_decay (get_vit_lr_decay_rate)
    c.optim.lr_multipliers = (("backbone/patch_embed/", 0.2),)  # optim.patch_embed_lr_mult
    c.optim.teacher_momentum = 0.992  # teacher.momentum_teacher, cosine per iteration ...
    c.optim.teacher_momentum_end = 1.0  # ... to teacher.final_momentum_teacher

    c.augment = base.multicrop_augment(  # dinov2/data/augmentations.py DataAugmentationDINO
        global_scale=(0.32, 1.0),  # crops.global_crops_scale
        local_scale=(0.05, 0.32),  # crops.local_crops_scale
        local_number=8,  # crops.local_crops_number
        global_size=224,  # crops.global_crops_size
        local_size=96)  # crops.local_crops_size
    # dinov2/data/transforms.py GaussianBlur passes keep_p = 1 - p to RandomApply, so the
    # GaussianBlur(p=1.0 / 0.1 / 0.5) of DataAugmentationDINO blur with probability 0 / 0.9 / 0.5,
    # with torchvision's GaussianBlur(kernel_size=9, sigma=(0.1, 2.0)).
    c.augment.blur_prob = (0.0, 0.9, 0.5)
    c.augment.blur_kernel_size = 9
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """DINOv2 on CIFAR-10 within a CPU hour, with every scale-down of DINO's `:cifar10` preset
    (configs/dino_small.py says why each one), so the methods compare like for like: the
    CIFAR10_VIT, batch 128, 6 epochs, AdamW peak 5e-4 after 2 warm-up epochs (linear
    scaling, lr 1e-3 x 128/256), 4096 prototypes per head, 1024-wide heads, constant
    teacher temperature 0.04, last layers frozen throughout, teacher momentum 0.99, 6 local
    crops of 16 px, no blur, drop-path 0.1. DINOv2's own parts stay: LayerScale, uniform
    drop-path, the shared head with softmax centering, KoLeo, per-module clipping, layer-wise
    lr decay 0.9 (over 4 blocks)."""
    c = base.use_cifar10(imagenet_config())
    c.batch_size = 128
    c.num_epochs = 6
    c.steps_per_epoch = 0  # the dataset's epoch (390 steps), as the other CIFAR-10 presets
    c.model.update(base.CIFAR10_VIT)
    c.model.drop_path_rate = 0.1
    c.method.out_dim = 4096
    c.method.ibot_out_dim = 4096
    c.method.head_hidden_dim = 1024
    c.method.ibot_head_hidden_dim = 1024
    c.method.teacher_temp = 0.04
    c.method.warmup_teacher_temp_epochs = 0
    c.optim.lr = 0.001
    c.optim.lr_scaling = "linear"
    c.optim.lr_reference_batch = 256
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
    c = base.use_smoke(cifar10_config())  # 2 "epochs" of 3 steps at batch 16
    c.model.update({"embed_dim": 16, "depth": 1, "num_heads": 2, "num_register_tokens": 2})
    c.method.update({"out_dim": 32, "ibot_out_dim": 24, "head_hidden_dim": 32, "ibot_head_hidden_dim": 32,
                     "head_bottleneck_dim": 16, "ibot_head_bottleneck_dim": 16, "koleo_group_size": 8})
    c.method.warmup_teacher_temp_epochs = 2  # exercises the per-iteration warm-up
    c.method.teacher_temp = 0.07
    c.optim.warmup_epochs = 1
    c.optim.freeze_epochs = 1
    c.augment.local_crops.number = 2
    c.eval.train_split = "train[:400]"
    c.eval.test_split = "test[:200]"
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (ViT-S/16, the reference's ImageNet-1k recipe), 'cifar10', 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config, "smoke": smoke_config},
                              preset, __file__)
