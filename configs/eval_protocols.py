"""Evaluation protocols for frozen checkpoints (`python -m ssl_jax.evaluate --protocol=...`).

    --protocol=configs/eval_protocols.py           the papers' ImageNet protocols
    --protocol=configs/eval_protocols.py:cifar10   the same protocols sized for a CPU
    --protocol=configs/eval_protocols.py:smoke     seconds (tests, notebooks in CI)

Sections: `knn` (DINO's eval_knn.py), `linear_dino` (DINO's eval_linear.py), `linear_mae`
(MAE's main_linprobe.py), `finetune` (MAE's main_finetune.py) and `segmentation` (DINOv2's
linear segmentation probe, `ssl_jax/eval/segmentation.py`). Images are preprocessed
as the run's own `config.eval` says (resize + centre crop, its normalisation); training
crops use `config.eval.crop` as their size. Override any field with
`--protocol.linear_dino.epochs=10`.
"""
from __future__ import annotations

import ml_collections

from ssl_jax.config_base import select_preset


def _sgd(lr: float, reference_batch: int, warmup_epochs: int = 0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": "sgd", "lr": lr, "lr_reference_batch": reference_batch, "lr_scaling": "linear", "min_lr": 0.0,
        "warmup_epochs": warmup_epochs, "weight_decay": 0.0, "weight_decay_end": 0.0, "momentum": 0.9})


def imagenet() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.knn = ml_collections.ConfigDict()
    c.knn.k = (10, 20, 100, 200)  # eval_knn.py --nb_knn
    c.knn.temperature = 0.07  # eval_knn.py --temperature

    # DINO eval_linear.py: a linear layer on the concatenated, normed [CLS] tokens of the last
    # n blocks (--n_last_blocks 4 for ViT-S; 1 with --avgpool_patchtokens for ViT-B), SGD
    # momentum 0.9, no weight decay, lr 0.001 x batch / 256, cosine to 0 over 100 epochs.
    c.linear_dino = ml_collections.ConfigDict()
    c.linear_dino.n_last_blocks = 4  # --n_last_blocks (ViT-S; use 1 for ViT-B)
    c.linear_dino.avgpool = False  # --avgpool_patchtokens (True for ViT-B)
    c.linear_dino.batchnorm = False  # a plain nn.Linear
    c.linear_dino.init_std = 0.01  # LinearClassifier: weight.normal_(0, 0.01), bias 0
    c.linear_dino.batch_size = 1024  # --batch_size_per_gpu 128 x 8 GPUs
    c.linear_dino.epochs = 100  # --epochs
    c.linear_dino.augment = True  # RandomResizedCrop + RandomHorizontalFlip
    c.linear_dino.crop_scale = (0.08, 1.0)  # torchvision RandomResizedCrop's default scale
    c.linear_dino.optim = _sgd(0.001, 256)  # --lr 0.001, scaled by batch / 256; CosineAnnealingLR(eta_min=0)

    # MAE main_linprobe.py: BatchNorm without affine (eps 1e-6) before the linear layer, on the
    # normed [CLS] token; LARS (trust 0.001, momentum 0.9, no decay), blr 0.1 x batch / 256,
    # batch 16384, 90 epochs with 10 of warm-up, half-cycle cosine per step.
    c.linear_mae = ml_collections.ConfigDict()
    c.linear_mae.n_last_blocks = 1
    c.linear_mae.avgpool = False  # --global_pool off for linear probing: the [CLS] token
    c.linear_mae.batchnorm = True  # torch.nn.BatchNorm1d(affine=False, eps=1e-6)
    c.linear_mae.init_std = 0.01  # trunc_normal_(model.head.weight, std=0.01)
    c.linear_mae.batch_size = 16384  # 512 per GPU x 32 GPUs
    c.linear_mae.epochs = 90  # --epochs
    c.linear_mae.augment = True  # RandomResizedCrop(interpolation=3) + RandomHorizontalFlip
    c.linear_mae.crop_scale = (0.08, 1.0)
    c.linear_mae.optim = ml_collections.ConfigDict({
        "name": "lars", "lr": 0.1, "lr_reference_batch": 256, "lr_scaling": "linear", "min_lr": 0.0,  # --blr 0.1
        "warmup_epochs": 10, "weight_decay": 0.0, "weight_decay_end": 0.0,  # --warmup_epochs 10, --weight_decay 0
        "momentum": 0.9, "trust_coefficient": 0.001, "lr_inside_momentum": False,  # util/lars.py
        "exclude_1d_from_decay": True})  # util/lars.py: no trust ratio for 1-D parameters

    # MAE main_finetune.py with FINETUNE.md's ViT-B flags: the whole network, AdamW (0.9, 0.999),
    # blr 5e-4 x batch / 256, layer-wise lr decay 0.65, weight decay 0.05 (not on 1-D parameters,
    # cls_token, pos_embed), drop path 0.1, 100 epochs with 5 of warm-up, cosine to 1e-6 per iteration,
    # RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0 with label
    # smoothing 0.1, global-pool head. The crops are timm's create_transform: RandomResizedCrop
    # (bicubic) -> flip -> RandAugment (uint8) -> normalise -> random erasing.
    c.finetune = ml_collections.ConfigDict()
    c.finetune.batch_size = 1024  # 32 per GPU x accum 4 x 8 GPUs
    c.finetune.epochs = 100  # --epochs (ViT-B)
    c.finetune.layer_decay = 0.65  # --layer_decay (ViT-B; 0.75 for ViT-L)
    c.finetune.drop_path = 0.1  # --drop_path (ViT-B)
    c.finetune.dropout = 0.0  # models_vit.py: timm's VisionTransformer drop_rate 0, no dropout before the head
    c.finetune.label_smoothing = 0.1  # --smoothing (in the mixed targets: timm mixup_target)
    c.finetune.reprob = 0.25  # --reprob 0.25: timm RandomErasing(mode='pixel', max_count=1) per image
    c.finetune.mixup = 0.8  # --mixup 0.8: Beta(0.8, 0.8) ...
    c.finetune.cutmix = 1.0  # ... or --cutmix 1.0: Beta(1, 1), timm Mixup(mode='batch', correct_lam=True)
    c.finetune.mixup_prob = 1.0  # --mixup_prob
    c.finetune.mixup_switch_prob = 0.5  # --mixup_switch_prob
    c.finetune.global_pool = True  # --global_pool (default): fc_norm(mean patch token); False: [CLS] (--cls_token)
    c.finetune.init_std = 2e-5  # trunc_normal_(model.head.weight, std=2e-5)
    c.finetune.crop_scale = (0.08, 1.0)
    # --aa rand-m9-mstd0.5-inc1 (main_finetune.py default): timm rand_augment_transform, 2 ops of the
    # increasing set, magnitude N(9, 0.5) clipped to [0, 10], each applied with p 0.5; "" turns it off
    c.finetune.randaugment = "rand-m9-mstd0.5-inc1"
    c.finetune.steps_per_epoch = 0  # 0: the whole train split per epoch
    c.finetune.optim = ml_collections.ConfigDict({
        "lr": 5e-4, "lr_reference_batch": 256,  # --blr 5e-4
        "min_lr": 1e-6, "warmup_epochs": 5, "weight_decay": 0.05,  # --min_lr, --warmup_epochs, --weight_decay
        "b1": 0.9, "b2": 0.999, "eps": 1e-8})  # torch.optim.AdamW defaults
    c.segmentation = segmentation()
    c.seed = 0
    return c


def segmentation() -> ml_collections.ConfigDict:
    """DINOv2's "linear" semantic segmentation on ADE20k: facebookresearch/dinov2's BNHead
    (dinov2/eval/segmentation/models/decode_heads/linear_head.py) with the released mmseg config
    dinov2_vitb14_ade20k_linear_config.py (dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/, linked
    from the dinov2 README; values below by its field names). "+ms" (the _ms_config.py):
    n_last_blocks=4, test_scales=(1.0, 1.32, 1.73, 2.28, 3.0), test_flip=True."""
    return ml_collections.ConfigDict({
        "data_dir": "",  # a folder (ssl_jax/data/segmentation.py's layout); --dataset sets it
        "train_split": "train",  # data.train: images/training
        "test_split": "validation",  # data.test: images/validation (ADE20k's 2000 validation images)
        "num_classes": 0,  # 0: DATA_DIR/classes.txt's count (num_classes = 150)
        # The reference's LoadAnnotations(reduce_zero_label=True) is ADE20k's label encoding (0 = "other" is
        # void, class c is stored as c + 1), not a recipe choice: set True for ADE20k's PNGs. False reads
        # labels 0..C-1 with 255 = void (CamVid); a folder whose labels exceed its C classes is refused
        # in one line naming this switch, so neither encoding is silently misread.
        "reduce_zero_label": False,
        # crop_size = (512, 512). Deliberate: every image is resized to this size (rounded down to the
        # patch size), instead of Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)) + RandomCrop +
        # flip + PhotoMetricDistortion for training and keep-ratio short side 512 + slide 512/341 for test
        "image_size": (512, 512),
        "n_last_blocks": 1,  # backbone out_indices [8, 9, 10, 11], decode_head in_index=[3]: the last block
        "test_scales": (1.0,),  # MultiScaleFlipAug img_ratios=1.0
        "test_flip": False,  # MultiScaleFlipAug flip=False
        "batch_size": 16,  # data.samples_per_gpu=2 x gpu_ids range(0, 8)
        "steps": 40000,  # runner IterBasedRunner max_iters=40000
        "lr": 1e-3, "weight_decay": 1e-4, "b1": 0.9, "b2": 0.999,  # optimizer AdamW(lr=0.001, weight_decay=0.0001)
        "warmup_steps": 1500, "warmup_ratio": 1e-6,  # lr_config warmup="linear", warmup_iters=1500, warmup_ratio=1e-06
        "power": 1.0, "min_lr": 0.0,  # lr_config policy="poly", power=1.0, min_lr=0.0, by_epoch=False
        "init_std": 0.01,  # mmseg BaseDecodeHead.init_weights: normal_init(conv_seg, mean=0, std=0.01)
        "extract_batch_size": 32,  # images per frozen-backbone call (no effect on the numbers)
        "max_train_images": 0, "max_test_images": 0})  # 0: the whole split (smoke: a few)


def cifar10() -> ml_collections.ConfigDict:
    """The protocols at CIFAR-10 scale on 2 CPU cores: smaller batches (lr scaled by the same
    rules), fewer epochs, and the linear probes on cached features (augment=False: the frozen
    features are extracted once, so an epoch costs milliseconds instead of a backbone pass)."""
    c = imagenet()
    for name in ("linear_dino", "linear_mae"):
        c[name].batch_size = 256
        c[name].augment = False
    c.linear_dino.epochs = 100
    c.linear_mae.epochs = 90
    c.finetune.batch_size = 128
    c.finetune.epochs = 1
    c.finetune.optim.warmup_epochs = 0
    # CamVid (SegNet's 11 classes, 367 train / 233 test at 240 x 180) on 2 CPU cores: a 12 x 16 token
    # grid with the :cifar10 ViT's 8 px patches, the reference's batch, lr and warm-up fraction over
    # 1000 steps (44 passes over the train split)
    c.segmentation.test_split = "test"
    c.segmentation.image_size = (96, 128)
    c.segmentation.steps = 1000
    c.segmentation.warmup_steps = 38  # 1500 / 40000 of the steps
    return c


def smoke() -> ml_collections.ConfigDict:
    """Seconds: a few epochs of everything, with augmentation on for one probe so both paths run."""
    c = cifar10()
    c.knn.k = (1, 5, 10, 20)
    c.linear_dino.epochs = 3
    c.linear_dino.n_last_blocks = 1  # tiny ViTs have 1-2 blocks; avgpool exercises the patch-token path
    c.linear_dino.avgpool = True
    c.linear_dino.batch_size = 64
    c.linear_mae.epochs = 3
    c.linear_mae.batch_size = 64
    c.linear_mae.optim.warmup_epochs = 1
    c.linear_mae.augment = True
    c.finetune.batch_size = 16
    c.finetune.epochs = 1
    c.finetune.steps_per_epoch = 2
    c.segmentation.image_size = (48, 64)
    c.segmentation.steps = 10
    c.segmentation.warmup_steps = 2
    c.segmentation.batch_size = 4
    c.segmentation.max_train_images = 8
    c.segmentation.max_test_images = 4
    c.segmentation.test_scales = (1.0, 1.5)  # exercises the "+ms" test path
    c.segmentation.test_flip = True
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    return select_preset({"imagenet": imagenet, "cifar10": cifar10, "smoke": smoke}, preset, __file__)
