"""DINO-family recipe details against float64 numpy transcriptions of the official code:
facebookresearch/dinov2 `train.py` (per-module `clip_grad_norm_`, the last layer's lr-0 freeze
with AdamW moments running, `CosineScheduler` teacher temperature) and the untied-head option
(`ibot.separate_head`), which the `:smoke` presets no longer exercise end to end.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import optim, train
from ssl_jax.core.batch import example_batch
from ssl_jax.errors import UserError


def np_clip_grad_norm_per_module(grads, max_norm):
    """`for v in model.student.values(): v.clip_grad_norm_(max_norm)` (FSDP): per module, total =
    sqrt(sum of squared tensor norms), every gradient times clamp(max_norm / (total + 1e-6), max=1)."""
    out = {}
    for name, module in grads.items():
        leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(module)]
        total = np.sqrt(sum(np.sum(g * g) for g in leaves))
        coef = min(max_norm / (total + 1e-6), 1.0)
        out[name] = jax.tree.map(lambda g: np.asarray(g, np.float64) * coef, module)
    return out


def _grads(rng):
    """Three modules: one far above the threshold (many tensors, each below it), one below, one near."""
    return {"backbone": {f"blocks_{i}": {"kernel": rng.randn(6, 5).astype(np.float32) * 0.3,
                                         "bias": rng.randn(5).astype(np.float32) * 0.3} for i in range(8)},
            "dino_head": {"last_layer": {"v": rng.randn(4, 7).astype(np.float32) * 0.1}},
            "ibot_head": {"mlp": {"kernel": rng.randn(5, 3).astype(np.float32) * 0.75}}}


def test_per_module_clipping_matches_dinov2_clip_grad_norm():
    grads = _grads(np.random.RandomState(0))
    tx = optim.clip_by_global_norm_per_module(3.0)
    got, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    want = np_clip_grad_norm_per_module(grads, 3.0)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    # The three modules land in different regimes, so neither per-tensor nor one global clip equals it.
    norms = {k: np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(v))) for k, v in grads.items()}
    assert norms["backbone"] > 3.0 > norms["ibot_head"] > norms["dino_head"]
    assert all(np.linalg.norm(g) < 3.0 for g in jax.tree.leaves(grads["backbone"]))  # per tensor: untouched
    np.testing.assert_allclose(np.linalg.norm(got["ibot_head"]["mlp"]["kernel"]), norms["ibot_head"], rtol=1e-6)


def _optim_cfg(**overrides):
    cfg = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.0, "clip_grad": 3.0, "weight_decay": 0.0,
                                     "weight_decay_end": 0.0})
    cfg.update(overrides)
    return cfg


def _constant_schedules(lr, wd=0.0):
    return optim.Schedules(lambda step: jnp.asarray(lr, jnp.float32), lambda step: jnp.asarray(wd, jnp.float32),
                           None, lr)


def test_build_optimizer_selects_the_clip_scope():
    """SGD without momentum at lr 1: the update is minus the clipped gradient, per the scope."""
    grads = _grads(np.random.RandomState(1))
    params = jax.tree.map(np.zeros_like, grads)
    for scope, reference in (("module", np_clip_grad_norm_per_module(grads, 3.0)),
                             ("tensor", jax.tree.map(
                                 lambda g: g * min(3.0 / (np.linalg.norm(g.astype(np.float64)) + 1e-6), 1.0), grads))):
        tx = optim.build_optimizer(_optim_cfg(clip_grad_scope=scope), _constant_schedules(1.0), params, 1)
        updates, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(params), params)
        for u, w in zip(jax.tree.leaves(updates), jax.tree.leaves(reference)):
            np.testing.assert_allclose(-np.asarray(u), w, rtol=1e-5, atol=1e-7, err_msg=scope)
    with pytest.raises(UserError, match="clip_grad_scope"):
        optim.build_optimizer(_optim_cfg(clip_grad_scope="layer"), _constant_schedules(1.0), params, 1)


def np_torch_adamw(params, grads_per_step, lrs, wd, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.AdamW, one param group per leaf with its own lr sequence; every leaf has a
    gradient at every step (so its `step` and moments advance even at lr 0)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for k in p:
            g, lr = np.asarray(grads[k], np.float64), lrs[k][t - 1]
            p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            p[k] = p[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
    return p


def test_freeze_by_zero_lr_keeps_the_frozen_layer_adamw_moments_running():
    """DINOv2's last_layer_lr_schedule[:freeze_last_layer_epochs * epoch_length] = 0: no step (not
    even weight decay) while frozen, but AdamW's moments and step count run from step 1."""
    rng = np.random.RandomState(2)
    params = {"backbone/w": rng.randn(3, 4).astype(np.float32), "dino_head/last_layer/v": rng.randn(4, 5).astype(np.float32)}
    tree = lambda flat: {"backbone": {"w": flat["backbone/w"]},  # noqa: E731
                         "dino_head": {"last_layer": {"v": flat["dino_head/last_layer/v"]}}}
    steps, freeze_steps, lr, wd = 5, 2, 0.1, 0.05
    grads = [{k: rng.randn(*v.shape).astype(np.float32) for k, v in params.items()} for _ in range(steps)]
    cfg = _optim_cfg(name="adamw", b1=0.9, b2=0.999, eps=1e-8, clip_grad=0.0, freeze_epochs=1,
                     freeze_patterns=("_head/last_layer/",), freeze_by_zero_lr=True)
    tx = optim.build_optimizer(cfg, _constant_schedules(lr, wd), tree(params), freeze_steps)
    state, p = tx.init(tree(params)), jax.tree.map(jnp.asarray, tree(params))
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, tree(g)), state, p)
        p = jax.tree.map(lambda a, b: a + b, p, updates)
    lrs = {"backbone/w": [lr] * steps, "dino_head/last_layer/v": [0.0] * freeze_steps + [lr] * (steps - freeze_steps)}
    want = tree(np_torch_adamw(params, grads, lrs, wd))
    for (path, got), w in zip(jax.tree_util.tree_flatten_with_path(p)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def np_dinov2_cosine_scheduler(base_value, final_value, total_iters, warmup_iters=0, start_warmup_value=0):
    """dinov2/utils/utils.py CosineScheduler, `[it]` for it in [0, total_iters + 5)."""
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(total_iters - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine))
    return np.array([schedule[it] if it < total_iters else final_value for it in range(total_iters + 5)])


def _dinov2_smoke(**method):
    config = importlib.import_module("configs.dinov2_small").get_config("smoke")
    config.method.update(method)
    return config


def test_dinov2_teacher_temperature_follows_cosine_scheduler_at_every_step():
    """train.py's teacher_temp_schedule: linear per iteration over warmup_teacher_temp_epochs x the
    epoch length (np.linspace, inclusive), then teacher_temp."""
    steps_per_epoch = 7
    method = train.setup(_dinov2_smoke(warmup_teacher_temp_epochs=3), steps_per_epoch=steps_per_epoch).method
    warmup = 3 * steps_per_epoch
    want = np_dinov2_cosine_scheduler(0.07, 0.07, warmup, warmup, 0.04)
    got = np.asarray(jax.vmap(method.teacher_temp)(jnp.arange(want.size, dtype=jnp.int32)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_dinov2_separate_head_trains_ibot_head_on_masked_patches():
    """`separate_head=True` (vitl14.yaml): patch logits from `ibot_head` ([.., ibot_out_dim]), both
    heads get gradients, and the teacher tracks both."""
    config = _dinov2_smoke(separate_head=True, centering="sinkhorn_knopp")
    method = train.setup(config, steps_per_epoch=3).method
    batch = example_batch(config.augment, 8, jax.random.key(1))
    variables = method.init(jax.random.key(0), batch)
    assert set(variables.params) == {"backbone", "dino_head", "ibot_head"} == set(variables.teacher)

    def loss(params):
        out = method.forward(params, variables.teacher, batch, jax.random.key(2), jnp.asarray(1))
        return method.objective(out, variables.method_state, jnp.asarray(1))[0], out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables.params)
    assert out["student_patch_logits"].shape[-1] == config.method.ibot_out_dim != config.method.out_dim
    for name in ("dino_head", "ibot_head"):
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name
