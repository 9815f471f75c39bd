"""SwAV ResNet-50 (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020).

    python -m ssl_jax.main --config=configs/swav_resnet50.py --workdir=DIR              # ImageNet, the paper
    python -m ssl_jax.main --config=configs/swav_resnet50.py:cifar10 --workdir=DIR      # CIFAR-10 ResNet-18
    python -m ssl_jax.main --config=configs/swav_resnet50.py:cifar10_vit --workdir=DIR  # CIFAR-10, ViT, on a CPU
    python -m ssl_jax.main --config=configs/swav_resnet50.py:smoke --workdir=DIR        # seconds, tiny shapes

Defaults are the 800-epoch, batch-4096 recipe (75.3 % linear top-1) of facebookresearch/swav:
`main_swav.py` flags as set by `scripts/swav_800ep_pretrain.sh`, cited as `--flag`.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 4096  # --batch_size 64 per GPU x 64 GPUs
    c.num_epochs = 800  # --epochs 800
    c.model = base.resnet_model(50)  # --arch resnet50
    c.model.zero_init_residual = False  # src/resnet50.py's default zero_init_residual=False
    c.model.conv_init = "torchvision"  # src/resnet50.py: kaiming_normal_(mode="fan_out", nonlinearity="relu")
    # Deliberate: BatchNorm over the global batch; --sync_bn apex syncs groups of 8 GPUs (512 images).

    c.method = ml_collections.ConfigDict()
    c.method.name = "swav"
    # src/resnet50.py projection_head: Linear(2048, hidden_mlp) -> BatchNorm1d -> ReLU -> Linear(hidden_mlp,
    # feat_dim) (--hidden_mlp 2048, --feat_dim 128; the Linear before the BN has a bias there, which the BN
    # cancels); torch.nn.Linear's default init, bias included (the init loop only touches convs and BatchNorm2d).
    c.method.projector = base.mlp(2048, 128, 2, last_bias=True, init="torch")
    c.method.num_prototypes = 3000  # --nmb_prototypes 3000
    c.method.temperature = 0.1  # --temperature 0.1
    c.method.epsilon = 0.05  # --epsilon 0.05 (Sinkhorn's entropic regularisation)
    c.method.sinkhorn_iterations = 3  # --sinkhorn_iterations 3
    c.method.crops_for_assign = (0, 1)  # --crops_for_assign 0 1: codes from the two 224 px crops
    # --queue_length 0: the queue is only for small batches (the batch-256 scripts use
    # --queue_length 3840 --epoch_queue_starts 15).
    c.method.queue_length = 0
    c.method.epoch_queue_starts = 15  # --epoch_queue_starts 15 (when a queue is used)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "lars"  # SGD + apex LARC(trust_coefficient=0.001, clip=False)
    c.optim.lr = 4.8  # --base_lr 4.8 at batch 4096 (the batch-256 scripts use 0.6)
    c.optim.lr_reference_batch = 4096
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0048  # --final_lr 0.0048, end of the per-iteration cosine
    c.optim.warmup_epochs = 10  # --warmup_epochs 10, linear ...
    c.optim.warmup_lr = 0.3  # ... from --start_warmup 0.3
    c.optim.weight_decay = 1e-6  # --wd 1e-6, constant
    c.optim.weight_decay_end = 1e-6
    c.optim.momentum = 0.9  # torch.optim.SGD(momentum=0.9)
    c.optim.trust_coefficient = 0.001  # LARC trust_coefficient
    # LARC adapts every parameter (biases and BN too) and the decay is on all of model.parameters().
    # (LARC's trust ratio divides by ||g|| + wd ||p||, optax's by ||g + wd p||: equal up to wd = 1e-6.)
    c.optim.exclude_1d_from_decay = False
    # --freeze_prototypes_niters 313: no prototype update in the first 313 iterations (per iteration,
    # not epochs: an epoch is 1281167 // 4096 = 312 steps, so this is one epoch and one step).
    c.optim.freeze_steps = 313
    c.optim.freeze_patterns = ("prototypes/",)
    c.optim.normalize_patterns = ("prototypes/kernel",)  # unit-norm prototypes (see ssl_jax/methods/swav.py)

    # main_swav.py's MultiCropDataset: --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05
    # --max_scale_crops 1. 0.14; flip, get_color_distortion(s=1.0) (jitter 0.8, 0.8, 0.8, 0.2 with p 0.8,
    # grayscale 0.2), PILRandomGaussianBlur(p=0.5, radius 0.1-2) on every crop, no solarisation;
    # RandomResizedCrop's default bilinear resize; Normalize(mean=[0.485, 0.456, 0.406],
    # std=[0.228, 0.224, 0.225]) (src/multicropdataset.py: 0.228, not torchvision's 0.229). Deliberate:
    # the blur is an exact Gaussian, not PIL's box approximation (docs/FIDELITY.md (_augment)).
    c.augment = base.multicrop_augment(global_scale=(0.14, 1.0), local_scale=(0.05, 0.14), local_number=6)
    c.augment.color_jitter.update({"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2})
    c.augment.blur_prob = (0.5, 0.5, 0.5)
    c.augment.solarize_prob = (0.0, 0.0, 0.0)
    c.augment.interpolation = "bilinear"
    c.augment.std = (0.228, 0.224, 0.225)
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """CIFAR-10 ResNet-18 in the setting of the published kNN tables (batch 128, 200 epochs), with
    multi-crop at 32 + 16 px and the small-batch queue."""
    c = base.use_cifar10_resnet18(imagenet_config())
    c.method.projector.hidden_dim = 512  # the backbone's width (512 for ResNet-18)
    # The batch-256 recipe (scripts/swav_200ep_bs256_pretrain.sh): a 3840-row queue from epoch 15
    # (3840 = 30 batches of 128), lr 0.6 at batch 256; solo-learn's CIFAR SwAV keeps 3000 prototypes.
    c.method.queue_length = 3840
    c.method.epoch_queue_starts = 15
    c.optim.lr = 0.6
    c.optim.lr_reference_batch = 256
    c.optim.min_lr = 0.0006  # --final_lr 0.0006
    c.optim.warmup_lr = 0.0  # --start_warmup 0 in that recipe
    c.optim.freeze_steps = 0  # that recipe's --freeze_prototypes_niters 5005 is one epoch (5004 steps at 256) ...
    c.optim.freeze_epochs = 1  # ... kept as one epoch at batch 128
    c.augment.local_crops.size = 16
    c.augment.color_jitter.update({"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1})
    return c


def cifar10_vit_config() -> ml_collections.ConfigDict:
    """The CPU-budget comparison setting (README): DINO's CIFAR-10 ViT and AdamW schedule, 2 x 32 px
    + 6 x 16 px crops like DINO's `:cifar10`; SwAV's loss, prototypes and queue."""
    c = base.use_cifar10_vit(cifar10_config())
    c.augment.local_crops.number = 6
    c.optim.freeze_epochs = 1  # the prototypes' first epoch frozen, as the reference
    c.optim.freeze_patterns = ("prototypes/",)
    c.optim.normalize_patterns = ("prototypes/kernel",)
    c.method.epoch_queue_starts = 1  # a 6-epoch run: fill the queue once the prototypes train
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """6 steps of batch 16 on tiny shapes: the prototypes frozen for the first 3, the queue (2 batches)
    filled from step 1 and used from step 3."""
    c = base.use_smoke_resnet(cifar10_config())
    c.method.projector.update({"hidden_dim": 32, "out_dim": 16})
    c.method.num_prototypes = 32
    c.method.queue_length = 32
    c.method.epoch_queue_starts = 0
    c.augment.local_crops.number = 2
    c.augment.global_crops.size = 16
    c.augment.local_crops.size = 8
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet' (the paper), 'cifar10' (ResNet-18), 'cifar10_vit' (the CPU-budget ViT), 'smoke'."""
    return base.select_preset({"imagenet": imagenet_config, "cifar10": cifar10_config,
                               "cifar10_vit": cifar10_vit_config, "smoke": smoke_config}, preset, __file__)
