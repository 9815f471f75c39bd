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

Schedule = Callable[[jax.Array], jax.Array]


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> Schedule:
    """DINO's cosine_scheduler as an optax schedule over `total_steps` steps."""
    decay_steps = max(total_steps - warmup_steps, 1)

    def cosine(i):
        progress = jnp.clip(i, 0, decay_steps) / decay_steps
        return final + 0.5 * (base - final) * (1.0 + jnp.cos(jnp.pi * progress))

    if warmup_steps == 0:
        return cosine
    warmup = optax.linear_schedule(warmup_start, base, max(warmup_steps - 1, 1))
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


def path_mask(params: Any, patterns: tuple[str, ...]) -> Any:
    """Bool pytree: True where the '/'-joined parameter path matches one of the regexes."""
    compiled = [re.compile(p) for p in patterns]

    def match(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return any(c.search(name) for c in compiled)

    return jax.tree_util.tree_map_with_path(match, params)


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices (and cls/pos embeddings), not on biases or norm scales.

    DINO's `get_params_groups`: no decay for names ending in `.bias` or 1-D tensors.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


class Schedules(NamedTuple):
    """Per-step hyper-parameters the train step reports and the optimiser uses."""

    learning_rate: Schedule
    weight_decay: Schedule
    teacher_momentum: Schedule | None


def build_schedules(optim_cfg, total_steps: int, steps_per_epoch: int, global_batch: int) -> Schedules:
    """lr = base_lr * global_batch / 256 (linear scaling rule), warm-up then cosine to min_lr;
    weight decay cosine from weight_decay to weight_decay_end; teacher momentum cosine to 1."""
    peak_lr = optim_cfg.lr * global_batch / optim_cfg.lr_reference_batch
    lr = cosine_schedule(peak_lr, optim_cfg.min_lr, total_steps, optim_cfg.warmup_epochs * steps_per_epoch)
    wd = cosine_schedule(optim_cfg.weight_decay, optim_cfg.weight_decay_end, total_steps)
    momentum = None
    if optim_cfg.get("teacher_momentum") is not None:
        momentum = cosine_schedule(optim_cfg.teacher_momentum, optim_cfg.teacher_momentum_end, total_steps)
    return Schedules(lr, wd, momentum)


def build_optimizer(optim_cfg, schedules: Schedules, params: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW with per-tensor clipping and DINO's "freeze the last layer for the first epochs".

    Frozen parameters get no update at all (not even weight decay) while
    step < freeze_epochs * steps_per_epoch, exactly like parameters whose `.grad` is
    None in PyTorch's AdamW. They also get their own Adam moments whose step count
    starts when they unfreeze, as PyTorch's per-parameter Adam state does.
    """
    if optim_cfg.name != "adamw":
        raise ValueError(f"unknown optimizer {optim_cfg.name!r}; this version supports 'adamw'")
    freeze_steps = optim_cfg.freeze_epochs * steps_per_epoch
    frozen = path_mask(params, tuple(optim_cfg.freeze_patterns))
    adam = lambda: optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)  # noqa: E731
    unfrozen = lambda count: count >= freeze_steps  # noqa: E731
    chain = []
    if optim_cfg.clip_grad:
        chain.append(clip_by_norm_per_tensor(optim_cfg.clip_grad))
    chain += [
        optax.partition(
            {"frozen_at_start": optax.transforms.conditionally_mask(adam(), unfrozen), "trainable": adam()},
            jax.tree.map(lambda f: "frozen_at_start" if f else "trainable", frozen),
        ),
        optax.add_decayed_weights(schedules.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(schedules.learning_rate),
        optax.masked(optax.transforms.conditionally_mask(optax.identity(), unfrozen), frozen),
    ]
    return optax.chain(*chain)
