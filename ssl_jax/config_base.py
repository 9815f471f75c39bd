"""Config fields every method shares, and the dataset/size presets, written once.

A paper's config file (`configs/<method>_<model>.py`) starts from `base_config()`,
adds its `model`, `method`, `optim` and `augment` sections with the paper's values,
and builds its `:cifar10` / `:smoke` presets with `use_cifar10` / `use_smoke` plus
whatever that method needs changed at small scale. Only run-level fields live
here (seed, data, evaluation, checkpoints, logging, distribution); nothing here
is a method's hyper-parameter.
"""
from __future__ import annotations

import os
from typing import Callable

import ml_collections

from ssl_jax.errors import UserError
from ssl_jax.sharding import DEFAULT_RULES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def base_config() -> ml_collections.ConfigDict:
    """Run-level fields for ImageNet-1k (tfds `imagenet2012`) pretraining."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 1024  # global batch, over all devices and processes
    c.num_epochs = 100
    # Start a fresh run from other weights (ssl_jax/init_from.py): an ssl_jax workdir or checkpoint step,
    # or an official .pth / .safetensors checkpoint; strict: every parameter must be loaded.
    c.init_from = ""
    c.init_from_strict = True
    c.steps_per_epoch = 0  # 0: len(train split) // batch_size (drop_last, as the references' DataLoaders).
    c.log_every_steps = 100
    # Several processes: auto (Cloud TPU, SLURM) or explicit; the SSL_JAX_* environment variables of
    # launch/local_multiprocess.sh take precedence (ssl_jax/sharding.py).
    c.distributed = ml_collections.ConfigDict({"auto": False, "coordinator_address": "", "num_processes": 1,
                                               "process_id": 0})
    # Scale-out (docs/ARCHITECTURE.md, "Scaling out"). Mixed precision: the layers compute in
    # compute_dtype; parameters, optimiser state, softmax and losses stay float32. bfloat16 is
    # for GPU/TPU (these ImageNet presets); the CPU presets (use_cifar10) set float32.
    c.compute_dtype = "bfloat16"
    c.remat = False  # recompute each ViT/ResNet block in the backward pass (less memory, ~1/3 more compute)
    c.accum_steps = 1  # >1: one update from that many micro-batches of batch_size / accum_steps (ssl_jax/core/accumulate.py)
    # >1: one compiled call runs that many steps (a lax.scan over stacked batches, ssl_jax/core/step.py): the
    # same steps, fewer calls. On CPU it saves XLA's per-call allocation of the step's temporaries
    # (README, "Speed"); log/checkpoint/eval intervals must be multiples of it.
    c.steps_per_call = 1
    # FSDP: fsdp > 1 makes the mesh ("data", "fsdp") and shards the state's leaves by these
    # (path regex, PartitionSpec) rules, first match wins (ssl_jax/sharding.py).
    c.parallel = ml_collections.ConfigDict({"fsdp": 1, "rules": DEFAULT_RULES})

    c.dataset = ml_collections.ConfigDict()
    # A tfds name, or "folder": image files under data_dir (flat, nested or <class>/ folders) or a
    # .txt list of them as the split, on any filesystem (layouts: ssl_jax/data/folder.py).
    c.dataset.name = "imagenet2012"
    c.dataset.data_dir = ""  # tfds: "" -> $TFDS_DATA_DIR, else tfds' default (~/tensorflow_datasets). folder: its root.
    # folder: an image that does not decode stops the run naming it ("error"), or is named and left out ("skip").
    c.dataset.on_corrupt = "error"
    c.dataset.download = True  # let tfds download and prepare the dataset if it is missing.
    c.dataset.train_split = "train"
    c.dataset.image_key = "image"
    c.dataset.label_key = "label"
    c.dataset.num_classes = 1000
    # Encoded ImageNet JPEGs average ~110 kB: 20k of them is ~2 GB of host memory. tfds
    # writes its records in shuffled order already, so this buffer only decorrelates further.
    c.dataset.shuffle_buffer = 20_000

    c.eval = ml_collections.ConfigDict()
    # The dataset kNN (and ssl_jax.evaluate) reads its eval splits from; name "" -> config.dataset. E.g.
    # pretrain on a folder and monitor kNN on cifar10. num_classes 0 -> config.dataset.num_classes
    # (a folder: its class sub-folders). A folder without class sub-folders turns kNN off.
    c.eval.dataset = ml_collections.ConfigDict({"name": "", "data_dir": "", "image_key": "image",
                                                "label_key": "label", "num_classes": 0})
    c.eval.every_steps = 0  # kNN every N steps; 0: only at the end. Always at the end.
    c.eval.batch_size = 256
    c.eval.train_split = "train"  # kNN memory bank
    c.eval.test_split = "validation"
    c.eval.resize = 256  # DINO's eval_knn.py: Resize(256, bicubic), CenterCrop(224)
    c.eval.crop = 224
    c.eval.knn_k = (20,)  # eval_knn.py --nb_knn also reports 10, 100, 200.
    c.eval.knn_temperature = 0.07  # eval_knn.py --temperature
    # A segmentation folder (`<split>/images/`, `<split>/labels/`, e.g. CamVid): every evaluation also runs
    # the linear segmentation probe (`--eval=segmentation`) with configs/eval_protocols.py:<segmentation_protocol>.
    c.eval.segmentation_dir = ""
    c.eval.segmentation_protocol = "cifar10"

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.max_to_keep = 3
    c.checkpoint.keep_period = 0  # also keep every N-th step forever; 0: off.

    # A step whose loss or gradient norm is NaN/Inf never changes the state (ssl_jax/guards/nonfinite.py):
    # "stop" ends the run naming the step and metric; "skip" drops that update and goes on,
    # stopping after more than max_consecutive_skips in a row.
    c.nonfinite = ml_collections.ConfigDict({"policy": "stop", "max_consecutive_skips": 10})
    # Collapse warning for methods that log teacher_entropy / teacher_kl_uniform (ssl_jax/guards/collapse.py):
    # warn when the KL to uniform (or the entropy) stays below tolerance * log K for `patience` log steps.
    c.collapse = ml_collections.ConfigDict({"patience": 5, "tolerance": 0.02})
    return c


def use_cifar10(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Switches data and evaluation to CIFAR-10 (tfds `cifar10`, 32 px); returns `c`.

    The caller still scales the method (crop sizes, model, schedule) to the dataset.
    """
    c.log_every_steps = 50
    c.compute_dtype = "float32"  # CPU-sized presets: bfloat16 is emulated (slower) on CPUs
    c.dataset.name = "cifar10"
    c.dataset.num_classes = 10
    # tfds wrote the records in shuffled order; 10k decorrelates further and refills in ~2 s
    # at each epoch start, where the whole split (50k) stalls a CPU run for ~15 s.
    c.dataset.shuffle_buffer = 10_000
    c.augment.mean = CIFAR10_MEAN
    c.augment.std = CIFAR10_STD
    c.eval.every_steps = 390  # once an epoch at batch 128
    c.eval.batch_size = 512
    c.eval.train_split = "train"
    c.eval.test_split = "test"
    c.eval.resize = 32
    c.eval.crop = 32
    c.checkpoint.every_steps = 250
    return c


def use_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps on the real CIFAR-10 files (call after `use_cifar10`); returns `c`.

    The caller shrinks the model and heads; this sets the run to 2 "epochs" of 3 steps
    at batch 16 with at most 1 warm-up epoch, so warm-ups and epoch boundaries still happen.
    """
    c.batch_size = 16
    c.num_epochs = 2
    c.steps_per_epoch = 3
    c.log_every_steps = 2
    c.dataset.shuffle_buffer = 1000
    c.optim.warmup_epochs = min(c.optim.warmup_epochs, 1)
    c.eval.every_steps = 0
    c.eval.batch_size = 200  # a multiple of 8 (simulated) devices
    c.eval.train_split = "train[:1000]"
    c.eval.test_split = "test[:500]"
    c.checkpoint.every_steps = 4
    c.checkpoint.max_to_keep = 2
    return c


def two_view_augment(*, size: int, scale: tuple[float, float], brightness: float, contrast: float,
                     saturation: float, hue: float, blur_prob: tuple[float, float],
                     solarize_prob: tuple[float, float], jitter_prob: float = 0.8,
                     grayscale_prob: float = 0.2) -> ml_collections.ConfigDict:
    """The two-view augmentation of SimCLR / BYOL / MoCo v3 / SimSiam as an `augment` section.

    It is DINO's multi-crop with two global crops and no local crops: random resized
    crop, flip, colour jitter (random order) with probability `jitter_prob`,
    grayscale, Gaussian blur and solarisation with per-view probabilities
    (view 1, view 2), normalised with the ImageNet statistics.
    """
    a = ml_collections.ConfigDict()
    a.global_crops = ml_collections.ConfigDict({"number": 2, "size": size, "scale": scale})
    a.local_crops = ml_collections.ConfigDict({"number": 0, "size": 96, "scale": (0.05, 0.4)})
    a.flip_prob = 0.5
    a.color_jitter = ml_collections.ConfigDict(
        {"prob": jitter_prob, "brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue})
    a.grayscale_prob = grayscale_prob
    a.blur_prob = (blur_prob[0], blur_prob[1], 0.0)  # (view 1, view 2, local crops: none)
    a.blur_sigma = (0.1, 2.0)
    a.blur_kernel_size = 23  # SimCLR: 10% of the 224 px image, odd; covers +-3 sigma of sigma 2 (13) too.
    a.solarize_prob = (solarize_prob[0], solarize_prob[1], 0.0)
    a.mean = IMAGENET_MEAN
    a.std = IMAGENET_STD
    return a


def multicrop_augment(*, global_scale: tuple[float, float], local_scale: tuple[float, float], local_number: int,
                      global_size: int = 224, local_size: int = 96) -> ml_collections.ConfigDict:
    """DINO's `DataAugmentationDINO` as an `augment` section, which iBOT's `DataAugmentationiBOT`
    and DINOv2's `DataAugmentationDINO` repeat: 2 global + `local_number` local crops, flip,
    colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, blur (1.0, 0.1, 0.5) and
    solarisation (0, 0.2, 0) for (global crop 1, global crop 2, local crops), ImageNet statistics."""
    a = ml_collections.ConfigDict()
    a.global_crops = ml_collections.ConfigDict({"number": 2, "size": global_size, "scale": global_scale})
    a.local_crops = ml_collections.ConfigDict({"number": local_number, "size": local_size, "scale": local_scale})
    a.flip_prob = 0.5
    a.color_jitter = ml_collections.ConfigDict(
        {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1})
    a.grayscale_prob = 0.2
    a.blur_prob = (1.0, 0.1, 0.5)
    a.blur_sigma = (0.1, 2.0)
    a.blur_kernel_size = 13  # covers +-3 sigma of the largest sigma (2.0)
    a.solarize_prob = (0.0, 0.2, 0.0)
    a.mean = IMAGENET_MEAN
    a.std = IMAGENET_STD
    return a


def single_view_augment(*, size: int, scale: tuple[float, float], flip_prob: float) -> ml_collections.ConfigDict:
    """One random-resized crop (bicubic), an optional horizontal flip, no colour or blur, ImageNet
    statistics: the input of MAE, SimMIM and I-JEPA (`views["global"]` is [B, 1, S, S, 3])."""
    a = ml_collections.ConfigDict()
    a.global_crops = ml_collections.ConfigDict({"number": 1, "size": size, "scale": scale})
    a.local_crops = ml_collections.ConfigDict({"number": 0, "size": 96, "scale": (0.05, 0.4)})
    a.flip_prob = flip_prob
    a.color_jitter = ml_collections.ConfigDict(
        {"prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    a.grayscale_prob = 0.0
    a.blur_prob = (0.0, 0.0, 0.0)
    a.blur_sigma = (0.1, 2.0)
    a.blur_kernel_size = 13
    a.solarize_prob = (0.0, 0.0, 0.0)
    a.mean = IMAGENET_MEAN
    a.std = IMAGENET_STD
    return a


def select_preset(presets: dict[str, Callable[[], ml_collections.ConfigDict]], preset: str,
                  config_file: str) -> ml_collections.ConfigDict:
    """`presets[preset]()` for a config file's `get_config`; '' means 'imagenet' (the paper's recipe)."""
    name = preset or "imagenet"
    if name not in presets:
        raise UserError(f"unknown preset {preset!r} for {os.path.basename(config_file)}; "
                        f"choose one of {sorted(presets)}")
    return presets[name]()


def resnet_model(depth: int = 50, *, cifar_stem: bool = False) -> ml_collections.ConfigDict:
    """A `model` section for a ResNet backbone (ssl_jax.models.resnet)."""
    return ml_collections.ConfigDict({"name": "resnet", "depth": depth, "cifar_stem": cifar_stem,
                                      "zero_init_residual": True, "width": 64})


def mlp(hidden_dim: int, out_dim: int, num_layers: int, *, last_bn: bool = False, last_bn_scale: bool = False,
        last_bias: bool = True, init: str = "torch") -> ml_collections.ConfigDict:
    """A projector/predictor section (ssl_jax.models.heads.ProjectionMLP's fields)."""
    return ml_collections.ConfigDict({"hidden_dim": hidden_dim, "out_dim": out_dim, "num_layers": num_layers,
                                      "last_bn": last_bn, "last_bn_scale": last_bn_scale, "last_bias": last_bias,
                                      "init": init})


def use_cifar10_resnet18(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`use_cifar10` plus the setting of the published CIFAR-10 kNN tables (lightly's
    benchmarks): CIFAR ResNet-18 (3x3 stem, no max-pool), batch 128, 200 epochs, 32 px
    views without blur (SimCLR App. B.9), kNN also at k=200. Returns `c`."""
    use_cifar10(c)
    c.batch_size = 128
    c.num_epochs = 200
    c.model = resnet_model(18, cifar_stem=True)
    c.augment.global_crops.size = 32
    c.augment.blur_prob = (0.0, 0.0, 0.0)
    c.eval.every_steps = 3900  # every 10 epochs
    c.eval.knn_k = (20, 200)
    return c


def use_smoke_resnet(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`use_smoke` with a ResNet-10 of width 8: the same code path as ResNet-18/50 at a
    fraction of the compile time. Returns `c`."""
    use_smoke(c)
    c.model.depth = 10
    c.model.width = 8
    return c


# The 0.8M-parameter ViT of the CPU-hour CIFAR-10 presets: 128 wide, 4 blocks, 4 heads,
# 8 px patches (4x4 tokens on 32 px crops). 4 px patches cost 3.6x more per image (4x
# the tokens): too few steps per hour on 2 cores to leave the initial plateau.
CIFAR10_VIT = {"size": "custom", "embed_dim": 128, "depth": 4, "num_heads": 4, "patch_size": 8, "img_size": 32}


def vit_model(size: str = "small", *, patch_size: int = 16, img_size: int = 224, drop_path_rate: float = 0.0,
              pos_embed: str = "learned", init: str = "dino") -> ml_collections.ConfigDict:
    """A `model` section for a ViT backbone (ssl_jax.models.vit); embed_dim/depth/num_heads with size='custom'
    (num_heads alone also overrides a named size's); `init` names the reference initialisation (vit.VIT_INITS)."""
    return ml_collections.ConfigDict({"name": "vit", "size": size, "patch_size": patch_size, "img_size": img_size,
                                      "drop_path_rate": drop_path_rate, "pos_embed": pos_embed, "embed_dim": 0,
                                      "depth": 0, "num_heads": 0, "init": init})


def use_cifar10_vit(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`use_cifar10` with the CPU-hour setting of DINO's `:cifar10` preset, for comparing methods
    on one backbone: the CIFAR10_VIT, batch 128, 6 epochs, AdamW with DINO's CIFAR-10
    schedule (peak 5e-4 after 2 warm-up epochs, cosine to 1e-6, weight decay 0.04 -> 0.4 on
    matrices), 32 px views without blur. The method's loss, heads, augmentation and ViT
    initialisation (`model.init`) stay its own. Returns `c`."""
    use_cifar10(c)
    c.batch_size = 128
    c.num_epochs = 6
    c.model = vit_model(patch_size=8, img_size=32, init=c.model.get("init", "dino"))
    c.model.update(CIFAR10_VIT)
    optim = ml_collections.ConfigDict({
        "name": "adamw", "lr": 1e-3, "lr_reference_batch": 256, "lr_scaling": "linear", "min_lr": 1e-6,
        "warmup_epochs": 2, "weight_decay": 0.04, "weight_decay_end": 0.4, "b1": 0.9, "b2": 0.999, "eps": 1e-8})
    for field in ("teacher_momentum", "teacher_momentum_end", "fixed_lr_patterns"):
        if field in c.optim:
            optim[field] = c.optim[field]
    c.optim = optim
    c.augment.global_crops.size = 32
    c.augment.blur_prob = (0.0, 0.0, 0.0)
    c.eval.knn_k = (20, 200)
    return c


def sgd_multistep_optim(lr: float, milestones: tuple, gamma: float, weight_decay: float, nesterov: bool,
                        batch_size: int) -> ml_collections.ConfigDict:
    """An `optim` section for PyTorch's SGD (momentum 0.9, weight decay on every parameter) with a
    step-wise lr x gamma at each milestone (epochs), no warm-up, unscaled at `batch_size`: the
    recipes of the classification pretext tasks (RotNet, SLA)."""
    return ml_collections.ConfigDict({
        "name": "sgd", "lr": lr, "lr_reference_batch": batch_size, "lr_scaling": "linear", "min_lr": 0.0,
        "warmup_epochs": 0, "weight_decay": weight_decay, "weight_decay_end": weight_decay, "momentum": 0.9,
        "nesterov": nesterov, "exclude_1d_from_decay": False, "lr_schedule": "multistep",
        "lr_milestones": milestones, "lr_gamma": gamma})
