"""Gradient accumulation: one optimiser update from `accum_steps` micro-batches.

    grad_fn = accumulated_value_and_grad(method.loss, accum_steps)
    (loss, aux), grads = grad_fn(params, teacher, method_state, model_state, batch, rng, step)

The global batch [B, ...] is split into A = accum_steps micro-batches of B / A examples
(micro-batch a holds examples a, A + a, 2A + a, ..., so each stays spread over every
device), and `jax.lax.scan` runs the loss and its gradient on one at a time: activation
memory is that of B / A examples. The returned loss, gradients and metrics are the means
over the micro-batches. For a loss that is a mean over examples of per-example terms
this is the large-batch update exactly (up to float rounding): DINO with a ViT (its
cross-entropy is a batch mean; every micro-batch is centred with the step's center).

What differs from one large batch, by construction:
  * method_state, as the method declares (`Method.state_accumulation`):
    "mean": every micro-batch starts from the step's state and the new state is the mean of
      the micro-batches' results. For DINO's center (iBOT's, DINOv2's), m c + (1 - m) mean(t),
      the mean over equal micro-batches is exactly the large batch's (tests/test_parallel.py);
    "sequential": micro-batch a + 1 starts from micro-batch a's result and the step keeps the
      last one. SwAV's queue thus receives every micro-batch's embeddings, as two pushes of
      B / A rows (tests/test_accumulate.py); micro-batch a + 1's codes already see them;
  * model_state (BatchNorm running statistics) is the mean of the micro-batches' results:
    each micro-batch is normalised with its own statistics, the running mean is exactly the
    large batch's, and the running variance averages the micro-batch variances (it misses
    the spread between micro-batch means), as per-GPU BatchNorm does in PyTorch;
  * contrastive losses (SimCLR, MoCo v3) take their negatives from the micro-batch only;
  * each micro-batch gets its own rng (`fold_in(rng, a)`), so drop-path masks differ.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

STATE_ACCUMULATIONS = ("mean", "sequential")


def split_micro_batches(x: jax.Array, accum_steps: int) -> jax.Array:
    """[B, ...] -> [A, B / A, ...] with micro-batch a = examples a, A + a, 2A + a, ...

    Interleaved rather than contiguous: with the batch axis sharded over D devices, each
    device's B / D rows then give every micro-batch B / (A D) rows, and no data moves.
    """
    batch = x.shape[0]
    if batch % accum_steps:
        raise ValueError(f"batch of {batch} does not split into accum_steps={accum_steps} micro-batches")
    return x.reshape((batch // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1)


def accumulated_value_and_grad(loss_fn: Callable, accum_steps: int, state_accumulation: str = "mean") -> Callable:
    """`jax.value_and_grad(loss_fn, has_aux=True)` over `accum_steps` micro-batches.

    loss_fn(params, teacher, method_state, model_state, batch, rng, step) -> (loss, aux), as
    `Method.loss`; `state_accumulation` (STATE_ACCUMULATIONS) says how the micro-batches'
    method_state combine. accum_steps == 1 is plain value_and_grad (same program as before).
    """
    if state_accumulation not in STATE_ACCUMULATIONS:
        raise ValueError(f"state_accumulation={state_accumulation!r}: choose one of {STATE_ACCUMULATIONS}")
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        return grad_fn
    sequential = state_accumulation == "sequential"

    def accumulated(params, teacher, method_state, model_state, batch, rng, step):
        micro_batches = jax.tree.map(lambda x: split_micro_batches(x, accum_steps), batch)

        def one(carry, inputs):
            loss_sum, grad_sum, carried_state = carry
            micro_batch, index = inputs
            (loss, aux), grads = grad_fn(params, teacher, carried_state if sequential else method_state,
                                         model_state, micro_batch, jax.random.fold_in(rng, index), step)
            carry = (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads),
                     aux.method_state if sequential else carried_state)
            return carry, aux._replace(method_state=None if sequential else aux.method_state)

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params), method_state)
        (loss_sum, grad_sum, last_state), auxes = jax.lax.scan(one, zeros, (micro_batches, jnp.arange(accum_steps)))
        aux = jax.tree.map(lambda x: jnp.mean(x, axis=0).astype(x.dtype), auxes)
        if sequential:
            aux = aux._replace(method_state=last_state)
        return (loss_sum / accum_steps, aux), jax.tree.map(lambda g: g / accum_steps, grad_sum)

    return accumulated
