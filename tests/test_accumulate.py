"""Gradient accumulation's state semantics (ssl_jax/core/accumulate.py), per `Method.state_accumulation`.

DINO's "mean" center against one large batch is tests/test_parallel.py's
test_accumulation_equals_large_batch (the whole trajectory); here: the two semantics on a toy
loss against their formulas, and SwAV's queue ("sequential") against the reference's push
(`queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = embedding`) applied once per micro-batch,
with the BatchNorm statistics ("mean" for every method) alongside.
"""
from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from ssl_jax.core.accumulate import accumulated_value_and_grad, split_micro_batches
from ssl_jax.core.batch import example_batch
from ssl_jax.methods import METHODS, swav
from ssl_jax.methods.base import LossOutput

MOMENTUM = 0.9


def ema_of_batch_mean(params, teacher, method_state, model_state, batch, rng, step):
    """A toy `Method.loss` with DINO's center update: state <- m state + (1 - m) mean(x), x [b, 3]."""
    x = batch["x"]
    new_state = MOMENTUM * method_state + (1.0 - MOMENTUM) * jnp.mean(x, axis=0)
    return jnp.mean((x @ params) ** 2), LossOutput({}, new_state, model_state)


@pytest.mark.parametrize("accumulation", ["mean", "sequential"])
def test_state_accumulation_on_an_ema_of_batch_means(accumulation):
    """"mean": every micro-batch starts from the step's state, so the averaged EMA is the large batch's,
    m s + (1 - m) mean(x). "sequential": the EMA applied micro-batch after micro-batch."""
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    state = np.array([1.0, -2.0, 0.5], np.float32)
    grad_fn = accumulated_value_and_grad(ema_of_batch_mean, 2, accumulation)
    (_, aux), _ = grad_fn(jnp.ones((3,)), None, state, None, {"x": x}, jax.random.key(0), 0)
    x64, s64 = x.astype(np.float64), state.astype(np.float64)
    if accumulation == "mean":
        expected = MOMENTUM * s64 + (1 - MOMENTUM) * x64.mean(0)
    else:
        first, second = x64[0::2], x64[1::2]  # micro-batch a = examples a, 2 + a, ...
        expected = MOMENTUM * (MOMENTUM * s64 + (1 - MOMENTUM) * first.mean(0)) + (1 - MOMENTUM) * second.mean(0)
    np.testing.assert_allclose(np.asarray(aux.method_state), expected, rtol=1e-6)


def test_unknown_state_accumulation_is_refused():
    with pytest.raises(ValueError, match="state_accumulation='sum'"):
        accumulated_value_and_grad(ema_of_batch_mean, 2, "sum")


def _swav_smoke_config():
    path = os.path.join(REPO, "configs", "swav_resnet50.py")
    spec = importlib.util.spec_from_file_location("swav_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.augment.local_crops.number = 0  # the queue holds the global crops' embeddings only
    return config


def test_swav_queue_receives_every_micro_batch():
    """accum_steps=2 on SwAV: the queue after the step is the reference's push of micro-batch 0's
    embeddings, then micro-batch 1's (each computed as the step computes it: the micro-batch's own
    BatchNorm statistics and rng), and the BatchNorm running statistics are the micro-batches' mean."""
    config = _swav_smoke_config()
    method = METHODS["swav"](config, steps_per_epoch=3)
    assert method.state_accumulation == "sequential"
    batch = example_batch(config.augment, 16, jax.random.key(1))
    variables = method.init(jax.random.key(0), batch)
    queue_length = config.method.queue_length
    old_queue = jax.random.normal(jax.random.key(2), variables.method_state["queue"].shape)
    method_state = {"queue": old_queue, "queue_filled": jnp.asarray(queue_length, jnp.int32)}
    rng = jax.random.key(3)

    grad_fn = jax.jit(accumulated_value_and_grad(method.loss, 2, method.state_accumulation))
    (_, aux), _ = grad_fn(variables.params, None, method_state, variables.model_state, batch, rng, 5)

    embeddings, stats = [], []
    for index, micro in enumerate(jax.tree.map(lambda x: split_micro_batches(x, 2), batch)["views"]["global"]):
        z, new_stats = swav.embed(method.network, variables.params, variables.model_state, [micro],
                                  jax.random.fold_in(rng, index))
        embeddings.append(np.asarray(z[:, jnp.asarray(method.settings.crops_for_assign)], np.float64))  # [b, A, D]
        stats.append(new_stats)
    queue = np.asarray(old_queue, np.float64).copy()
    for z in embeddings:  # main_swav.py, per crop i: queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = embedding
        bs = z.shape[0]
        for i in range(queue.shape[0]):
            queue[i, bs:] = queue[i, :-bs].copy()
            queue[i, :bs] = z[:, i]
    np.testing.assert_allclose(np.asarray(aux.method_state["queue"]), queue, rtol=1e-5, atol=1e-6)
    assert int(aux.method_state["queue_filled"]) == queue_length
    mean_stats = jax.tree.map(lambda a, b: (np.asarray(a, np.float64) + np.asarray(b, np.float64)) / 2, *stats)
    for actual, expected in zip(jax.tree.leaves(aux.model_state), jax.tree.leaves(mean_stats)):
        np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-6)
