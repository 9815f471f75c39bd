"""The config's run-level values, checked once at start, before any array is built or compiled.

    validate(config)        # raises UserError: one line naming the field and a valid value

What it checks: sizes that must be positive, counts that must be >= 0, probabilities in [0, 1],
crop scales in (0, 1], divisibility the code relies on (the batch by `accum_steps`: the batch
by the devices is `sharding.check_global_batch`'s, and the log/checkpoint/eval intervals by
`steps_per_call` is `train.check_steps_per_call`'s, where the mesh and the loop are built),
the names the code dispatches on (method, model, compute dtype, optimiser, schedules, tfds
dataset), and the method contract: `config.optim.teacher_momentum` is set exactly when the
method declares an EMA teacher (`Method.ema_teacher`). A method's own fields are checked by
its constructor, which raises UserError too.

`load(config_flag)` turns a config file that did not load into one line (ml_collections
defers that error to the first attribute access, as a traceback).
"""
from __future__ import annotations

import os

import ml_collections

from ssl_jax.errors import UserError

POSITIVE = ("batch_size", "num_epochs", "log_every_steps", "accum_steps", "steps_per_call", "eval.batch_size",
            "augment.global_crops.number", "augment.global_crops.size", "augment.local_crops.size",
            "parallel.fsdp", "distributed.num_processes", "checkpoint.max_to_keep")
NON_NEGATIVE = ("steps_per_epoch", "eval.every_steps", "checkpoint.every_steps", "checkpoint.keep_period",
                "augment.local_crops.number", "optim.warmup_epochs", "optim.lr", "optim.weight_decay")
PROBABILITIES = ("augment.flip_prob", "augment.color_jitter.prob", "augment.grayscale_prob", "augment.blur_prob",
                 "augment.solarize_prob", "optim.teacher_momentum", "optim.teacher_momentum_end")
CROP_SCALES = ("augment.global_crops.scale", "augment.local_crops.scale")
LR_SCHEDULES = ("cosine", "multistep")
LR_SCALINGS = ("linear", "sqrt")
MOMENTUM_SCHEDULES = ("cosine", "linear")
_MISSING = object()


def lookup(config, path: str):
    """config's value at the dotted `path`, or _MISSING."""
    value = config
    for key in path.split("."):
        if not isinstance(value, (dict, ml_collections.ConfigDict)) or key not in value:
            return _MISSING
        value = value[key]
    return value


def fail(path: str, value, requirement: str, example) -> None:
    raise UserError(f"config.{path}={value!r} {requirement}; set e.g. --config.{path}={example}")


def check_known(config, path: str, known) -> None:
    value = lookup(config, path)
    if value is not _MISSING and value not in known:
        fail(path, value, f"is not one of {sorted(known)}", sorted(known)[0])


def clip_unit(value):
    """`value` (a number or a tuple of numbers) clipped to [0, 1]."""
    if isinstance(value, (tuple, list)):
        return type(value)(clip_unit(v) for v in value)
    return min(max(value, 0.0), 1.0)


def check_numbers(config) -> None:
    """Positive sizes, counts >= 0, probabilities in [0, 1], crop scales 0 < min <= max <= 1."""
    for names, least, requirement in ((POSITIVE, 1, "must be at least 1"), (NON_NEGATIVE, 0, "must be >= 0")):
        for path in names:
            value = lookup(config, path)
            if value is not _MISSING and value < least:
                fail(path, value, requirement, least)
    for path in PROBABILITIES:  # a number, or a tuple of them (per crop)
        value = lookup(config, path)
        if value is _MISSING or value is None:
            continue
        clipped = clip_unit(value)
        if clipped != value:
            fail(path, value, "must be a probability, in [0, 1]", clipped)
    for path in CROP_SCALES:
        value = lookup(config, path)
        if value is not _MISSING and not 0.0 < value[0] <= value[1] <= 1.0:
            fail(path, tuple(value), "must be (min, max) with 0 < min <= max <= 1", (0.08, 1.0))
    accum, batch = lookup(config, "accum_steps"), config.batch_size
    if accum is not _MISSING and batch % accum:
        fail("accum_steps", accum, f"must divide batch_size={batch} (one update from accum_steps equal "
             "micro-batches)", 1)


def check_names(config) -> None:
    """The method, model, compute dtype, optimiser, schedule and dataset names the code dispatches on."""
    from ssl_jax.methods import METHODS
    from ssl_jax.models.backbones import COMPUTE_DTYPES, MODELS
    from ssl_jax.models.heads import LINEAR_INITS
    from ssl_jax.optim import OPTIMIZERS

    check_known(config, "method.name", METHODS)
    check_known(config, "model.name", MODELS)
    check_known(config, "compute_dtype", COMPUTE_DTYPES)
    check_known(config, "optim.name", OPTIMIZERS)
    check_known(config, "optim.lr_schedule", LR_SCHEDULES)
    check_known(config, "optim.lr_scaling", LR_SCALINGS)
    check_known(config, "optim.teacher_momentum_schedule", MOMENTUM_SCHEDULES)
    for name, section in config.method.items():  # the projector / predictor MLPs (heads.projection_mlp)
        if isinstance(section, ml_collections.ConfigDict) and "init" in section:
            check_known(config, f"method.{name}.init", LINEAR_INITS)
    if config.eval.get("segmentation_dir"):
        check_segmentation(config)
    name = config.dataset.name
    if name not in ("folder", "image_text"):
        import tensorflow_datasets as tfds

        try:
            tfds.builder_cls(name.split(":")[0].split("/")[0])
        except tfds.core.registered.DatasetNotFoundError:
            fail("dataset.name", name, "is neither 'folder' nor a tfds dataset (tfds.list_builders())", "cifar10")


def check_teacher(config) -> None:
    """config.optim.teacher_momentum (and _end) exactly when the method has an EMA teacher."""
    from ssl_jax.methods import METHODS

    method = config.method.name
    momentum = config.optim.get("teacher_momentum")
    if METHODS[method].ema_teacher:
        for field in ("teacher_momentum", "teacher_momentum_end"):
            if config.optim.get(field) is None:
                raise UserError(f"config.optim.{field} is not set, but method {method!r} updates an EMA teacher "
                                f"with it; add e.g. c.optim.{field} = 0.996 to the config file")
    elif momentum is not None:
        raise UserError(f"config.optim.teacher_momentum={momentum} is set, but method {method!r} has no EMA "
                        "teacher; remove it from the config file")


def check_segmentation(config) -> None:
    """config.eval.segmentation_dir: a ViT, an existing folder, a known protocol preset (not after training)."""
    from ssl_jax import paths
    from ssl_jax.evaluate import load_protocol

    directory = config.eval.segmentation_dir
    if config.model.name != "vit":
        fail("eval.segmentation_dir", directory, "needs a ViT backbone (the probe reads patch tokens)", "''")
    if not paths.resolve(directory).is_dir():
        fail("eval.segmentation_dir", directory, "is not a folder", "a folder with <split>/images/ and <split>/labels/")
    load_protocol(config.eval.segmentation_protocol)  # an unknown preset is one line now


def validate(config) -> None:
    """Raises UserError (one line, naming the field and a valid value) for a config the code cannot run."""
    check_numbers(config)
    check_names(config)
    check_teacher(config)


def load(config_flag) -> ml_collections.ConfigDict:
    """The config of an ml_collections `config_flags` flag (e.g. `flags.FLAGS["config"]`), validated;
    a file that did not load is one line naming it."""
    config = config_flag.value
    if not isinstance(config, ml_collections.ConfigDict):
        path = config_flag.config_filename.split(":", 1)[0]
        reason = "does not exist" if not os.path.exists(path) else "could not be read"
        raise UserError(f"config file {path!r} {reason} (--config); pass e.g. "
                        f"--config=configs/dino_small.py:cifar10")
    validate(config)
    return config
