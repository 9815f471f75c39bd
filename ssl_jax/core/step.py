"""The one train step every method shares, and its jit over a device mesh.

    state, metrics = train_step(state, batch)

split rng -> value_and_grad of `method.loss` w.r.t. params (the teacher is a plain
argument, so it receives no gradient by construction) -> optax update -> EMA
teacher update with the scheduled momentum (exactly when the method declares
`ema_teacher`) -> new method/model state returned by
the loss. A step whose loss or gradient norm is NaN/Inf changes nothing but the
step counter and the rng (metric `nonfinite` = 1): the loop then stops or goes on,
per `config.nonfinite.policy`. Nothing method-specific happens here. Importable
without tensorflow.

With `accum_steps` > 1 the gradient is averaged over that many micro-batches of the
global batch (`ssl_jax.core.accumulate`, method_state combined as `method.state_accumulation`
declares) before the one optimiser update.

`jit_train_steps` runs `steps_per_call` of these steps in one compiled call, a `lax.scan`
of `train_step` over that many stacked batches (the same function, step after step). What it
saves is per call, not per FLOP: XLA:CPU allocates a call's temporaries (about 1.4 GB for the
DINO ViT-S/16 CPU benchmark) as one block, which glibc maps fresh and faults in 4 KiB at a time
on every call; the scan pays that once per `steps_per_call` steps.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ssl_jax.core.accumulate import accumulated_value_and_grad
from ssl_jax.core.state import TrainState, ema_update, tree_global_norm
from ssl_jax.optim import Schedules
from ssl_jax.sharding import batch_sharding, replicated, stacked_batch_sharding


def train_step(state: TrainState, batch: dict, *, method, tx: optax.GradientTransformation,
               schedules: Schedules, accum_steps: int = 1) -> tuple[TrainState, dict]:
    """One optimisation step on a global batch. Pure: returns the new state and scalar metrics."""
    if method.ema_teacher != (schedules.teacher_momentum is not None):
        raise ValueError(f"{type(method).__name__}.ema_teacher={method.ema_teacher} but the teacher momentum "
                         f"schedule is {'missing' if method.ema_teacher else 'set'} (ssl_jax.guards.config_check validates "
                         "config.optim.teacher_momentum before this)")
    rng, step_rng = jax.random.split(state.rng)
    grad_fn = accumulated_value_and_grad(method.loss, accum_steps, method.state_accumulation)
    (loss, aux), grads = grad_fn(state.params, state.teacher, state.method_state, state.model_state, batch,
                                 step_rng, state.step)
    grad_norm = tree_global_norm(grads)
    metrics = dict(aux.metrics, loss=loss, grad_norm=grad_norm, learning_rate=schedules.learning_rate(state.step),
                   weight_decay=schedules.weight_decay(state.step))
    if method.ema_teacher:
        metrics["teacher_momentum"] = schedules.teacher_momentum(state.step)

    def update(state: TrainState) -> TrainState:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        teacher = state.teacher
        if method.ema_teacher:
            teacher = ema_update(teacher, method.teacher_targets(params), metrics["teacher_momentum"])
        return state.replace(params=params, opt_state=opt_state, teacher=teacher, method_state=aux.method_state,
                             model_state=aux.model_state)

    # A non-finite loss or gradient would poison every parameter; such a step keeps the old
    # values instead, so that the loop can either stop with the last good state or skip this
    # step, without a second compiled step. `lax.cond` runs only the taken branch: a finite
    # step pays nothing for the check (a select per leaf would read and write every
    # parameter, moment and teacher weight once more).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    new_state = jax.lax.cond(finite, update, lambda state: state, state)
    new_state = new_state.replace(step=state.step + 1, rng=rng)
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def jit_train_step(method, tx, schedules: Schedules, mesh: Mesh, state_sharding=None, accum_steps: int = 1):
    """`train_step` jitted over `mesh`: state donated, batch split over the devices. The state is
    replicated unless `state_sharding` (a TrainState of NamedShardings, `ssl_jax.sharding`) says otherwise."""
    return jit_train_steps(method, tx, schedules, mesh, state_sharding, accum_steps, steps_per_call=1)


def jit_train_steps(method, tx, schedules: Schedules, mesh: Mesh, state_sharding=None, accum_steps: int = 1,
                    steps_per_call: int = 1):
    """`state, metrics = steps(state, batches)`: `steps_per_call` consecutive `train_step`s in one
    jitted call, over batches stacked on a new leading axis ([S, B, ...]); every metric comes back
    per step, [S]. With steps_per_call=1 it is `train_step` itself on one unstacked batch."""
    step = functools.partial(train_step, method=method, tx=tx, schedules=schedules, accum_steps=accum_steps)
    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    if steps_per_call == 1:
        return jax.jit(step, in_shardings=(state_sharding, batch_sharding(mesh)),
                       out_shardings=(state_sharding, replicated(mesh)), donate_argnums=0)

    def steps(state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        return jax.lax.scan(step, state, batches, length=steps_per_call)

    return jax.jit(steps, in_shardings=(state_sharding, stacked_batch_sharding(mesh)),
                   out_shardings=(state_sharding, replicated(mesh)), donate_argnums=0)
