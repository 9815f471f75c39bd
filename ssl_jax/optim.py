"""Optimiser and schedules built from the config, with optax.

The schedules reproduce `utils.cosine_scheduler` of facebookresearch/dino exactly:
a linear warm-up from `warmup_start` reaching `base` at step `warmup_steps - 1`
(numpy `linspace` is inclusive), then `final + (base - final) * (1 + cos(pi * i / n)) / 2`
over the remaining n steps. Each is an optax schedule, a pure function of the step.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ssl_jax.errors import UserError
from ssl_jax.tree_paths import path_name

Schedule = Callable[[jax.Array], jax.Array]


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0, warmup_style: str = "linspace") -> Schedule:
    """DINO's cosine_scheduler as an optax schedule over `total_steps` steps.

    warmup_style 'linspace' (DINO): `base` at step warmup_steps - 1; 'fraction' (MAE's
    `adjust_learning_rate`, timm's schedulers, I-JEPA's WarmupCosineSchedule):
    start + (base - start) * step / warmup_steps, `base` first at step warmup_steps."""
    if warmup_style not in ("linspace", "fraction"):
        raise ValueError(f"unknown optim.warmup_style {warmup_style!r}; choose 'linspace' or 'fraction'")
    decay_steps = max(total_steps - warmup_steps, 1)

    def cosine(i):
        progress = jnp.clip(i, 0, decay_steps) / decay_steps
        return final + 0.5 * (base - final) * (1.0 + jnp.cos(jnp.pi * progress))

    if warmup_steps == 0:
        return cosine
    ramp_steps = max(warmup_steps - 1, 1) if warmup_style == "linspace" else warmup_steps
    warmup = optax.linear_schedule(warmup_start, base, ramp_steps)
    return optax.join_schedules([warmup, cosine], boundaries=[warmup_steps])


def per_epoch_linear_warmup(start: float, end: float, warmup_epochs: int, steps_per_epoch: int) -> Schedule:
    """Constant within an epoch: linspace(start, end, warmup_epochs)[epoch], then `end`.

    DINO's teacher temperature schedule (indexed by epoch, not iteration).
    """

    def schedule(step):
        epoch = step // steps_per_epoch
        ramp = start + (end - start) * jnp.minimum(epoch / max(warmup_epochs - 1, 1), 1.0)
        return jnp.where(epoch < warmup_epochs, ramp, end)

    return schedule


def clip_by_norm_per_tensor(max_norm: float) -> optax.GradientTransformation:
    """Scales each gradient tensor whose L2 norm exceeds max_norm down to max_norm.

    DINO's `utils.clip_gradients`: clip_coef = max_norm / (||g|| + 1e-6), applied
    only when below 1, tensor by tensor (not the global norm of all gradients).
    """

    def update_fn(updates, state, params=None):
        del params

        def clip(g):
            coef = max_norm / (jnp.linalg.norm(g.astype(jnp.float32)) + 1e-6)
            return jnp.where(coef < 1.0, g * coef.astype(g.dtype), g)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _clip_by_joint_norm(tree: Any, max_norm: float) -> Any:
    """Scales every tensor of `tree` by min(1, max_norm / (||tree|| + 1e-6)), ||.|| the L2 norm over
    all its tensors (torch.nn.utils.clip_grad_norm_)."""
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))
    coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), tree)


def clip_by_global_norm_per_module(max_norm: float) -> optax.GradientTransformation:
    """Clips each top-level module's gradients by its own global norm (`_clip_by_joint_norm`).

    DINOv2's `train.py` (`for v in model.student.values(): v.clip_grad_norm_(clip_grad)`):
    every student module (the params' first keys: backbone, dino_head, ibot_head) is
    clipped by the global L2 norm over all its tensors (FSDP `clip_grad_norm_`, which
    always multiplies by the clamped coefficient), independently of the other modules.
    """

    def update_fn(updates, state, params=None):
        del params
        return {name: _clip_by_joint_norm(module, max_norm) for name, module in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Clips all gradients by their joint global norm, torch's `clip_grad_norm_(model.parameters())`
    (SimMIM's main_simmim.py), with its + 1e-6."""

    def update_fn(updates, state, params=None):
        del params
        return _clip_by_joint_norm(updates, max_norm), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


CLIP_SCOPES = {"tensor": clip_by_norm_per_tensor, "module": clip_by_global_norm_per_module,
               "global": clip_by_global_norm}


def path_mask(params: Any, patterns: tuple[str, ...]) -> Any:
    """Bool pytree: True where the '/'-joined parameter path matches one of the regexes."""
    compiled = [re.compile(p) for p in patterns]

    def match(path, _):
        return any(c.search(path_name(path)) for c in compiled)

    return jax.tree_util.tree_map_with_path(match, params)


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and conv kernels (and cls/pos embeddings), not on biases or norms.

    DINO's `get_params_groups` (no decay for `.bias` or 1-D tensors); SimCLR's and
    BYOL's exclusion of BatchNorm and bias parameters from decay and LARS adaptation.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


# Backbone parameters that sit before the first block (layer 0 of layer-wise lr decay),
# as in DINOv2's `get_vit_lr_decay_rate` (its register tokens are not among them).
LAYER0_PATTERNS = ("pos_embed", "patch_embed", "mask_token", "cls_token")


def lr_multipliers(params: Any, layer_decay: float = 1.0, patterns: tuple = (), scope: str = "backbone/",
                   block_pattern: str = r"blocks_(\d+)/", layer0: tuple = LAYER0_PATTERNS) -> Any:
    """Per-parameter learning-rate multipliers (a pytree of floats like `params`).

    Layer-wise decay (DINOv2's `get_vit_lr_decay_rate`, BEiT/MAE fine-tuning): a parameter
    under `scope` gets layer id 0 if its path contains a name of `layer0`, i + 1 if it is in
    block i (`block_pattern`), else L + 1 (the final norm); parameters outside `scope`
    (heads) get L + 1. Its multiplier is layer_decay ** (L + 1 - layer id), L the number
    of blocks. Then each (regex, factor) of `patterns` whose regex matches the
    '/'-joined path multiplies it (DINOv2's patch_embed_lr_mult: ('backbone/patch_embed/', 0.2)).
    """
    compiled_block = re.compile(block_pattern)
    names = [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    blocks = {int(m.group(1)) for n in names if n.startswith(scope) for m in [compiled_block.search(n)] if m}
    num_layers = max(blocks) + 1 if blocks else 0
    compiled = [(re.compile(regex), float(factor)) for regex, factor in patterns]

    def multiplier(path, _):
        name = path_name(path)
        layer_id = num_layers + 1
        if name.startswith(scope):
            block = compiled_block.search(name)
            if any(p in name for p in layer0):
                layer_id = 0
            elif block:
                layer_id = int(block.group(1)) + 1
        value = layer_decay ** (num_layers + 1 - layer_id)
        for regex, factor in compiled:
            if regex.search(name):
                value *= factor
        return value

    return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_per_parameter(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each update by its parameter's constant factor (after the learning rate)."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def normalize_columns_after_update(mask: Any) -> optax.GradientTransformation:
    """Makes each masked [D, K] parameter's columns unit-norm after the update: the update
    becomes `normalize(p + u) - p`. SwAV's prototypes (`main_swav.py` L2-normalises the
    prototype weights in place before every forward pass, so the loss, the weight decay and
    LARS all see unit-norm prototypes; renormalising after each update, starting from
    normalised ones at init, gives the same parameters at every forward pass)."""

    def update_fn(updates, state, params=None):
        def renormalize(u, p, masked):
            if not masked:
                return u
            new = p + u
            norm = jnp.sqrt(jnp.sum(jnp.square(new.astype(jnp.float32)), axis=0, keepdims=True))
            return (new / jnp.maximum(norm, 1e-12).astype(new.dtype) - p).astype(u.dtype)

        return jax.tree.map(renormalize, updates, params, mask), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class Schedules(NamedTuple):
    """Per-step hyper-parameters the train step reports and the optimiser uses."""

    learning_rate: Schedule
    weight_decay: Schedule
    teacher_momentum: Schedule | None
    peak_learning_rate: float  # the scaled base lr; parameters with a fixed lr keep it (SimSiam's predictor)


def peak_learning_rate(optim_cfg, global_batch: int) -> float:
    """optim.lr scaled to the global batch: lr * batch / lr_reference_batch (the linear
    scaling rule, default), or lr * sqrt(batch) with optim.lr_scaling='sqrt' (SimCLR's
    suggestion for small batches, App. B.1)."""
    scaling = optim_cfg.get("lr_scaling", "linear")
    if scaling == "linear":
        return optim_cfg.lr * global_batch / optim_cfg.lr_reference_batch
    if scaling == "sqrt":
        return optim_cfg.lr * global_batch**0.5
    raise ValueError(f"unknown optim.lr_scaling {scaling!r}; choose 'linear' or 'sqrt'")


def multistep_schedule(base: float, milestones: tuple[int, ...], gamma: float, warmup_steps: int = 0,
                       warmup_start: float = 0.0) -> Schedule:
    """Linear warm-up from `warmup_start` to `base`, then `base * gamma^k` after k of the
    `milestones` (steps) have passed: SimMIM's 'multistep' scheduler (timm MultiStepLRScheduler)."""
    steps = jnp.asarray(milestones, jnp.int32)

    def schedule(i):
        decayed = base * gamma ** jnp.sum(i >= steps)
        if warmup_steps == 0:
            return decayed
        ramp = warmup_start + (base - warmup_start) * i / warmup_steps
        return jnp.where(i < warmup_steps, ramp, decayed)

    return schedule


def build_schedules(optim_cfg, total_steps: int, steps_per_epoch: int, global_batch: int) -> Schedules:
    """lr: warm-up then cosine from the scaled peak to min_lr (per step, or per epoch with
    optim.schedule_per_epoch as SimSiam); weight decay cosine from weight_decay to
    weight_decay_end; teacher momentum cosine to teacher_momentum_end.

    Options for the masked-image-modelling recipes (defaults keep the above):
    `warmup_lr` (scaled like `lr`): where the warm-up starts (SimMIM, I-JEPA; default 0);
    `lr_schedule='multistep'` with `lr_milestones` (epochs) and `lr_gamma` (SimMIM);
    `schedule_horizon` h: every schedule runs over h x total_steps, of which the run does
    the first 1/h (I-JEPA's ipe_scale 1.25); `teacher_momentum_schedule='linear'` (I-JEPA);
    `warmup_style` ('linspace' or 'fraction', see `cosine_schedule`); `schedule_offset` k:
    lr and weight decay of step s are the schedules' values at max(s + k, 0) (I-JEPA's
    schedulers step before each iteration: k = 1; SimMIM's `step_update` after it: k = -1)."""
    peak_lr = peak_learning_rate(optim_cfg, global_batch)
    horizon = int(round(optim_cfg.get("schedule_horizon", 1.0) * total_steps))
    warmup_steps = optim_cfg.warmup_epochs * steps_per_epoch
    warmup_start = optim_cfg.get("warmup_lr", 0.0) * peak_lr / optim_cfg.lr if optim_cfg.lr else 0.0
    lr_schedule = optim_cfg.get("lr_schedule", "cosine")
    if lr_schedule == "cosine":
        lr = cosine_schedule(peak_lr, optim_cfg.min_lr, horizon, warmup_steps, warmup_start,
                             optim_cfg.get("warmup_style", "linspace"))
    elif lr_schedule == "multistep":
        milestones = tuple(int(e * steps_per_epoch) for e in optim_cfg.lr_milestones)
        lr = multistep_schedule(peak_lr, milestones, optim_cfg.lr_gamma, warmup_steps, warmup_start)
    else:
        raise ValueError(f"unknown optim.lr_schedule {lr_schedule!r}; choose 'cosine' or 'multistep'")
    if optim_cfg.get("schedule_per_epoch", False):
        per_step = lr
        lr = lambda step: per_step((step // steps_per_epoch) * steps_per_epoch)  # noqa: E731
    wd = cosine_schedule(optim_cfg.weight_decay, optim_cfg.weight_decay_end, horizon)
    offset = optim_cfg.get("schedule_offset", 0)
    if offset:
        lr_at, wd_at = lr, wd
        lr = lambda step: lr_at(jnp.maximum(step + offset, 0))  # noqa: E731
        wd = lambda step: wd_at(jnp.maximum(step + offset, 0))  # noqa: E731
    momentum = None
    if optim_cfg.get("teacher_momentum") is not None:
        start, end = optim_cfg.teacher_momentum, optim_cfg.teacher_momentum_end
        kind = optim_cfg.get("teacher_momentum_schedule", "cosine")
        if kind == "cosine":
            momentum = cosine_schedule(start, end, horizon)
        elif kind == "linear":
            momentum = optax.linear_schedule(start, end, horizon)
        else:
            raise ValueError(f"unknown optim.teacher_momentum_schedule {kind!r}; choose 'cosine' or 'linear'")
    return Schedules(lr, wd, momentum, peak_lr)


OPTIMIZERS = ("adamw", "lars", "sgd")


def build_optimizer(optim_cfg, schedules: Schedules, params: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW (DINO, MoCo v3 ViT), LARS (SimCLR, BYOL) or SGD (SimSiam), as the references write them.

        [clipping] -> direction -> learning rate -> freezing

    clipping (optim.clip_grad, 0 = off): optim.clip_grad_scope 'tensor' clips each tensor's
    norm (DINO's `utils.clip_gradients`), 'module' each top-level module's global norm
    (DINOv2, `clip_by_global_norm_per_module`), 'global' the norm of all gradients (SimMIM).

    direction: adamw: Adam moments, then decoupled weight decay `wd * p`;
               lars:  `g + wd * p`, scaled by the trust ratio eta ||p|| / ||g + wd p||,
                      then momentum; sgd: `g + wd * p`, then momentum.
    Momentum accumulates before the lr is applied (PyTorch's SGD and LARS, BYOL's
    LARS) unless optim.lr_inside_momentum (SimCLR's TF LARS accumulates lr * update).
    Decay and the LARS trust ratio skip 1-D parameters (biases, norms) unless
    optim.exclude_1d_from_decay is False (MoCo v3 and SimSiam decay everything);
    optim.no_decay_patterns (path regexes) leaves those out too (SiT's no_weight_decay()).

    Freezing, all by '/'-joined parameter-path regexes:
      * optim.freeze_patterns: no update at all (not even weight decay) while
        step < freeze_epochs * steps_per_epoch (DINO's last layer), or step < freeze_steps
        when that is set (SwAV's prototypes), exactly like a
        parameter whose `.grad` is None in PyTorch; their Adam moments / momentum
        buffers start when they unfreeze, as PyTorch's per-parameter state does;
        with optim.freeze_by_zero_lr they are instead only given a zero step while
        their moments keep accumulating (DINOv2's `last_layer_lr_schedule` set to 0);
      * optim.frozen_patterns: never updated (MoCo v3's random patch projection);
      * optim.fixed_lr_patterns: trained at the peak lr, never scheduled (SimSiam's predictor).
    optim.normalize_patterns: those [D, K] parameters' columns are L2-normalised after every
    update (SwAV's prototypes, `normalize_columns_after_update`).
    Per-parameter lr multipliers (`lr_multipliers`): optim.layer_decay (< 1: layer-wise lr
    decay over the backbone's blocks) and optim.lr_multipliers ((regex, factor), ...) scale
    each parameter's step (lr and decoupled weight decay alike, as a PyTorch param group's lr).
    """
    name = optim_cfg.name
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (config.optim.name); choose one of {OPTIMIZERS}")
    # optim.freeze_steps (iterations, SwAV's --freeze_prototypes_niters) wins over freeze_epochs.
    freeze_steps = optim_cfg.get("freeze_steps", 0) or optim_cfg.get("freeze_epochs", 0) * steps_per_epoch
    frozen_at_start = path_mask(params, tuple(optim_cfg.get("freeze_patterns", ())))
    unfrozen = lambda count: count >= freeze_steps  # noqa: E731

    def stateful(make):
        """`make()` with separate state for the parameters frozen at the start (see docstring)."""
        if optim_cfg.get("freeze_by_zero_lr", False):
            return make()
        return optax.partition(
            {"frozen_at_start": optax.transforms.conditionally_mask(make(), unfrozen), "trainable": make()},
            jax.tree.map(lambda f: "frozen_at_start" if f else "trainable", frozen_at_start))

    decayed = decay_mask if optim_cfg.get("exclude_1d_from_decay", True) else (lambda p: jax.tree.map(lambda _: True, p))
    if optim_cfg.get("no_decay_patterns"):  # by name, as a model's no_weight_decay() (SiT's tokens)
        by_rule, by_name = decayed, path_mask(params, tuple(optim_cfg.no_decay_patterns))
        decayed = lambda p: jax.tree.map(lambda d, n: d and not n, by_rule(p), by_name)  # noqa: E731
    learning_rate = optax.scale_by_learning_rate(schedules.learning_rate)
    if optim_cfg.get("fixed_lr_patterns"):
        fixed_lr = path_mask(params, tuple(optim_cfg.fixed_lr_patterns))
        learning_rate = optax.partition(
            {"scheduled": learning_rate, "fixed": optax.scale_by_learning_rate(schedules.peak_learning_rate)},
            jax.tree.map(lambda f: "fixed" if f else "scheduled", fixed_lr))

    scope = optim_cfg.get("clip_grad_scope", "tensor")
    if scope not in CLIP_SCOPES:
        raise UserError(f"unknown config.optim.clip_grad_scope {scope!r}; choose one of {tuple(CLIP_SCOPES)}")
    chain = [CLIP_SCOPES[scope](optim_cfg.clip_grad)] if optim_cfg.get("clip_grad") else []
    if name == "adamw":
        chain += [stateful(lambda: optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)),
                  optax.add_decayed_weights(schedules.weight_decay, mask=decayed), learning_rate]
    else:
        chain.append(optax.add_decayed_weights(schedules.weight_decay, mask=decayed))
        if name == "lars":
            chain.append(optax.masked(optax.scale_by_trust_ratio(trust_coefficient=optim_cfg.trust_coefficient),
                                      decayed))
        momentum = lambda: optax.trace(decay=optim_cfg.momentum, nesterov=optim_cfg.get("nesterov", False))  # noqa: E731
        chain += [learning_rate, stateful(momentum)] if optim_cfg.get("lr_inside_momentum", False) \
            else [stateful(momentum), learning_rate]
    if optim_cfg.get("layer_decay", 1.0) != 1.0 or optim_cfg.get("lr_multipliers"):
        chain.append(scale_per_parameter(lr_multipliers(params, optim_cfg.get("layer_decay", 1.0),
                                                        tuple(optim_cfg.get("lr_multipliers", ())))))
    chain.append(optax.masked(optax.transforms.conditionally_mask(optax.identity(), unfrozen), frozen_at_start))
    if optim_cfg.get("frozen_patterns"):
        chain.append(optax.masked(optax.set_to_zero(), path_mask(params, tuple(optim_cfg.frozen_patterns))))
    if optim_cfg.get("normalize_patterns"):
        chain.append(normalize_columns_after_update(path_mask(params, tuple(optim_cfg.normalize_patterns))))
    return optax.chain(*chain)
