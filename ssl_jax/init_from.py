"""Start a run from other weights: `--config.init_from=PATH` (continued pre-training, fine-tuning,
a distillation teacher).

PATH is one of
  * an ssl_jax workdir (its latest checkpoint) or one checkpoint step, WORKDIR/checkpoints/<step>;
  * an official PyTorch checkpoint, `.pth` / `.pt` (needs torch) or `.safetensors` (no torch):
    DINO, DINOv2 (with or without registers), iBOT, MAE (with its decoder), MoCo v3, timm ViT,
    torchvision ResNet, Hugging Face ViT / DINOv2 (`ssl_jax.convert.pytorch.convert_state_dict`).

Only when the run starts from scratch (a resumed run restores its own checkpoint), the fresh
TrainState's params and BatchNorm statistics take every array of the source whose path and
shape fit; a learned position table of another grid is resampled to this model's
(`vit.interpolate_pos_embed`). The EMA teacher, where the method has one, gets the source's
teacher when the source is an ssl_jax run with one, else the same arrays as the student: the
references start the teacher as a copy of the student. Step, optimiser state and method state
(DINO's center, queues) stay fresh. One log block names what was loaded and what was skipped
and why. A parameter left at its fresh initialisation, or one whose shape does not fit, is a
UserError listing the first few, unless `config.init_from_strict=False`.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np
from flax import traverse_util

from ssl_jax.errors import UserError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".safetensors")


class Source(NamedTuple):
    """Arrays to load, as "/"-paths from the method's tree root: params, teacher (None: use
    params), model_state; `describe` maps a path to where it came from (a PyTorch key);
    `skipped` maps source entries left out on purpose to the reason."""

    params: dict
    teacher: dict | None
    model_state: dict
    describe: dict
    skipped: dict
    kind: str


def flat(tree) -> dict:
    """A pytree of dicts (or None) as {"a/b": array}."""
    return {} if tree is None else traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def workdir_and_step(path: str) -> tuple[str, int | None] | None:
    """(workdir, step or None for the latest) if `path` is an ssl_jax workdir or checkpoint step."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, "config.json")):
        return path, None
    workdir = os.path.dirname(os.path.dirname(path))
    if os.path.basename(path).isdigit() and os.path.exists(os.path.join(workdir, "config.json")):
        return workdir, int(os.path.basename(path))
    return None


def restore_run(path: str):
    """`ssl_jax.eval.frozen.Frozen` of an ssl_jax workdir (latest step) or checkpoint step, with
    the run's config; without reading its dataset (an epoch's length only shapes the schedules)."""
    from ssl_jax.eval.frozen import load_config, restore

    workdir, step = workdir_and_step(path)
    config = load_config(workdir)
    config.steps_per_epoch = config.get("steps_per_epoch") or 1
    return restore(workdir, step, config)


def restore_tool_run(checkpoint: str | None, workdir: str | None, workdir_holds: str):
    """`restore_run` of a command-line tool's --checkpoint, after checking it and --workdir (where
    the tool writes `workdir_holds`): one line each when missing or not a run."""
    if not checkpoint or not workdir_and_step(checkpoint):
        raise UserError(f"--checkpoint={checkpoint}: pass a run directory (with config.json) or one of its "
                        f"checkpoints/<step> directories")
    if not workdir:
        raise UserError(f"pass --workdir=<directory for {workdir_holds}>")
    return restore_run(checkpoint)


def read_source(path: str) -> Source:
    """The arrays of `path` (module docstring) under ssl_jax's names."""
    if workdir_and_step(path):
        frozen = restore_run(path)
        state = frozen.state
        return Source(flat(state.params), None if state.teacher is None else flat(state.teacher),
                      flat(state.model_state), {}, {}, f"ssl_jax run, step {frozen.step}")
    if os.path.isfile(path) and path.endswith(CHECKPOINT_SUFFIXES):
        from ssl_jax.convert.pytorch import convert_state_dict, load_state_dict

        converted = convert_state_dict(load_state_dict(path))
        return Source(converted.params, None, converted.model_state, converted.sources, converted.skipped,
                      "PyTorch checkpoint")
    raise UserError(f"init_from={path!r} is neither an ssl_jax workdir (with config.json), a checkpoint step "
                    f"(WORKDIR/checkpoints/<step>) nor a {' / '.join(CHECKPOINT_SUFFIXES)} file")


def fit(path: str, value: np.ndarray, target) -> tuple[np.ndarray | None, str]:
    """(value shaped for `target`, note) or (None, why not)."""
    if value.shape == target.shape:
        return value, ""
    if path.endswith("pos_embed") and value.ndim == 3 and value.shape[2] == target.shape[2]:
        from ssl_jax.models.vit import interpolate_pos_embed

        side = int(round((target.shape[1] - 1) ** 0.5))
        if side * side == target.shape[1] - 1 and int(round((value.shape[1] - 1) ** 0.5)) ** 2 == value.shape[1] - 1:
            return np.asarray(interpolate_pos_embed(value, (side, side))), f"resampled {value.shape} -> {target.shape}"
    return None, f"shape {value.shape} in the source, {tuple(target.shape)} here"


def merge(target_tree, source: dict, notes: list, misses: list, name: str):
    """`target_tree` with every leaf that `source` has at the same path and a fitting shape
    replaced (on the leaf's sharding); notes / misses collect what happened."""
    if target_tree is None:
        return None
    leaves = flat(target_tree)
    shardings = traverse_util.flatten_dict(jax.tree.map(lambda x: x.sharding, target_tree), sep="/")
    out = {}
    for path, leaf in leaves.items():
        value, note = (None, "not in the source") if path not in source else fit(path, np.asarray(source[path]), leaf)
        if value is None:
            misses.append(f"{name}{path} ({note})")
            out[path] = leaf
        else:
            out[path] = jax.device_put(value.astype(leaf.dtype), shardings[path])
            if note:
                notes.append(f"{name}{path}: {note}")
    return traverse_util.unflatten_dict(out, sep="/")


def initialize(config, state, log=print, required: str = ""):
    """`state` (a fresh TrainState) with `config.init_from`'s arrays loaded (module docstring).
    Without `init_from_strict`, the paths starting with `required` (e.g. "backbone/") must still load."""
    path = os.fspath(config.init_from)
    source = read_source(path)
    notes, misses, teacher_misses = [], [], []
    params = merge(state.params, source.params, notes, misses, "")
    model_state = merge(state.model_state, source.model_state, notes, misses, "model_state/")
    teacher_source = source.params if source.teacher is None else source.teacher
    teacher = merge(state.teacher, teacher_source, [], teacher_misses, "teacher/")
    targets = set(flat(state.params)) | {f"model_state/{p}" for p in flat(state.model_state)}
    used = set(flat(state.params)) | set(flat(state.model_state))
    unused = {}
    for path, value in {**source.params, **source.model_state}.items():
        if path in used:
            continue
        if path.endswith("last_layer/g") or path.endswith("last_layer2/g"):
            if np.allclose(value, 1.0):
                source.skipped[source.describe.get(path, path)] = "weight-norm g = 1, fixed here (norm_last_layer)"
                continue
        unused[source.describe.get(path, path)] = "no such parameter (or statistic) in this model"
    teacher_note = ""
    if state.teacher is not None:
        teacher_note = (f"; the EMA teacher from {'the source teacher' if source.teacher is not None else 'the same'}"
                        + (f" ({len(teacher_misses)} kept fresh)" if teacher_misses else ""))
    lines = [f"init_from {path} ({source.kind}): loaded {len(targets) - len(misses)} of {len(targets)} parameter "
             f"and statistic arrays{teacher_note}"]
    lines += [f"  {note}" for note in notes]
    lines += [f"  kept fresh: {miss}" for miss in misses]
    lines += [f"  skipped {key}: {why}" for key, why in {**source.skipped, **unused}.items()]
    log("\n".join(lines))
    strict = config.get("init_from_strict", True)
    required = required or config.get("init_from_required", "")  # e.g. LiT's locked tower, "teacher/backbone/"
    fatal = misses if strict else [m for m in misses + teacher_misses if required and m.startswith(required)]
    if fatal:
        hint = ("--config.init_from_strict=False keeps their fresh initialisation" if len(fatal) == len(misses)
                else f"the {required} arrays must load: is it the right model?")
        raise UserError(f"init_from={path}: {len(fatal)} of {len(targets)} arrays not loaded: "
                        f"{'; '.join(fatal[:4])}{' ...' if len(fatal) > 4 else ''}; {hint}")
    return state.replace(params=params, model_state=model_state, teacher=teacher)



def initialize_teacher(config, state, log=print):
    """`state` with `config.teacher_init_from`'s arrays as its frozen teacher
    (`ssl_jax.methods.frozen_teacher`): a path, or {name: path} for a method with several
    teachers (`state.teacher` = {name: teacher}). From each source its EMA teacher where it has
    one (DINO's evaluated network), else its params, and its BatchNorm statistics. Every teacher
    array must load (a frozen teacher is never trained); source arrays the teacher has no place
    for are left out."""
    spec = config.teacher_init_from
    if isinstance(spec, str):
        return state.replace(teacher=load_teacher(config, spec, state.teacher, "teacher/", log))
    if not isinstance(state.teacher, dict) or set(state.teacher) != set(spec.keys()):
        raise UserError(f"teacher_init_from names {sorted(spec.keys())}; method {config.method.name!r} has teachers "
                        f"{sorted(state.teacher or ())}")
    return state.replace(teacher={name: load_teacher(config, path, state.teacher[name], f"teacher/{name}/", log)
                                  for name, path in spec.items()})


def load_teacher(config, path: str, teacher, name: str, log=print) -> dict:
    """One frozen teacher {"params", "model_state"} with the arrays of `path` (`initialize_teacher`)."""
    path = os.fspath(path)
    if not isinstance(teacher, dict) or set(teacher) != {"params", "model_state"}:
        raise UserError(f"teacher_init_from={path}: method {config.method.name!r} has no frozen teacher "
                        "(config.teacher); use --config.init_from to start the network itself from weights")
    source = read_source(path)
    notes, misses = [], []
    params = merge(teacher["params"], source.params if source.teacher is None else source.teacher, notes,
                   misses, f"{name}params/")
    model_state = merge(teacher["model_state"], source.model_state, notes, misses, f"{name}model_state/")
    total = len(flat(teacher))
    log("\n".join([f"teacher_init_from {path} ({source.kind}): loaded {total - len(misses)} of {total} frozen "
                   f"{name.rstrip('/')} arrays"] + [f"  {note}" for note in notes]))
    if misses:
        raise UserError(f"teacher_init_from={path}: {len(misses)} of {total} teacher arrays not loaded: "
                        f"{'; '.join(misses[:4])}{' ...' if len(misses) > 4 else ''}; does config.teacher "
                        "(and the method's teacher head) describe the source's model?")
    return {"params": params, "model_state": model_state}
