"""The recipe details the fidelity tables of MAE, SimMIM, I-JEPA, SiT, instance discrimination and
MAE fine-tuning rest on, against float64 transcriptions of the references: per-iteration lr / wd
schedules (MAE `util/lr_sched.py`, I-JEPA `src/utils/schedulers.py`, SimMIM `lr_scheduler.py`
stepped as `main_simmim.py` steps it), which parameters get weight decay, global-norm clipping,
SiT's heads and contrastive loss, timm's Mixup / CutMix / RandomErasing and MAE's global pool."""
from __future__ import annotations

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from ssl_jax import batch_augment, optim


def load_config(name: str, preset: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def schedule_values(optim_cfg, total_steps, steps_per_epoch, batch):
    s = optim.build_schedules(optim_cfg, total_steps, steps_per_epoch, batch)
    steps = jnp.arange(total_steps)
    return np.asarray(jax.vmap(s.learning_rate)(steps)), np.asarray(jax.vmap(s.weight_decay)(steps))


# ----------------------------------------------------------------------------- schedules


def test_mae_lr_is_adjust_learning_rate_per_iteration():
    """MAE util/lr_sched.adjust_learning_rate(epoch = it / ipe + ep): lr * epoch / warmup, then
    min_lr + (lr - min_lr) / 2 (1 + cos(pi (epoch - warmup) / (epochs - warmup)))."""
    c = load_config("mae_base", "")
    ipe, epochs = 7, 50
    c.optim.warmup_epochs = 5
    lr, _ = schedule_values(c.optim, ipe * epochs, ipe, 512)
    blr = c.optim.lr * 512 / 256
    want = []
    for it in range(ipe * epochs):
        e = it / ipe
        if e < 5:
            want.append(blr * e / 5)
        else:
            want.append(c.optim.min_lr + (blr - c.optim.min_lr) * 0.5 * (1 + math.cos(math.pi * (e - 5) / (epochs - 5))))
    np.testing.assert_allclose(lr, want, rtol=1e-5, atol=1e-6 * blr)  # float32 cos near the end


def test_ijepa_lr_and_wd_are_its_schedulers_stepped_before_each_iteration():
    """I-JEPA WarmupCosineSchedule / CosineWDSchedule: `step()` increments first, so iteration i
    runs at step i + 1; T = ipe_scale x epochs x ipe."""
    c = load_config("ijepa_small", "")
    ipe, epochs, warm = 5, 30, 4
    c.optim.warmup_epochs = warm
    lr, wd = schedule_values(c.optim, ipe * epochs, ipe, c.batch_size)
    o, total, w = c.optim, ipe * epochs, warm * ipe
    want_lr, want_wd = [], []
    for i in range(total):
        step = i + 1
        if step < w:
            want_lr.append(o.warmup_lr + step / w * (o.lr - o.warmup_lr))
        else:
            progress = (step - w) / (total - w)
            want_lr.append(max(o.min_lr, o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))))
        new_wd = o.weight_decay_end + (o.weight_decay - o.weight_decay_end) * 0.5 * (1 + math.cos(math.pi * step / total))
        want_wd.append(min(o.weight_decay_end, new_wd))
    np.testing.assert_allclose(lr, want_lr, rtol=1e-5)
    np.testing.assert_allclose(wd, want_wd, rtol=1e-5)


def test_simmim_lr_is_multistep_scheduler_updated_after_each_iteration():
    """SimMIM MultiStepLRScheduler(t_in_epochs=False): warmup_lr + t (lr - warmup_lr) / warmup_t, then
    lr x gamma^bisect_right(milestones, t); main_simmim.py calls step_update(t) after iteration t,
    so iteration t runs at the value of t - 1 (and the warm-up start at t = 0)."""
    c = load_config("simmim_vit_base", "")
    ipe, epochs = 4, 20
    c.optim.warmup_epochs, c.optim.lr_milestones = 3, (15,)
    lr, _ = schedule_values(c.optim, ipe * epochs, ipe, 1024)
    base, warm_init = c.optim.lr * 1024 / 512, c.optim.warmup_lr * 1024 / 512
    warm_t, milestones = 3 * ipe, [15 * ipe]

    def f(t):
        if t < warm_t:
            return warm_init + t * (base - warm_init) / warm_t
        return base * c.optim.lr_gamma ** sum(m <= t for m in milestones)

    np.testing.assert_allclose(lr, [f(max(t - 1, 0)) for t in range(ipe * epochs)], rtol=1e-5)


# ----------------------------------------------------------------------------- weight decay and clipping


def decayed_leaves(config_name):
    """{'/'-joined path: True if weight decay moved the parameter} for one step with zero gradients of
    the paper preset's optimiser on the :smoke preset's (same-named, small) parameters."""
    from ssl_jax import train
    from ssl_jax.batch import example_batch

    config = load_config(config_name, "smoke")
    run = train.setup(config, steps_per_epoch=3)
    params = jax.tree.map(jnp.ones_like, jax.jit(run.method.init)(jax.random.key(0),
                                                                   example_batch(config.augment, 1)).params)
    schedules = optim.Schedules(lambda s: 1.0, lambda s: 0.5, None, 1.0)
    tx = optim.build_optimizer(load_config(config_name, "").optim, schedules, params, steps_per_epoch=3)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    moved = jax.tree_util.tree_map_with_path(lambda p, u: bool(np.any(np.asarray(u) != 0)), updates)
    return {optim.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(moved)[0]}


def test_weight_decay_exclusions_follow_each_reference():
    """SiT: not pos_embed / tokens (no_weight_decay), nor 1-D; SimMIM: not cls_token but mask_token;
    MAE: add_weight_decay without a skip list decays cls/mask tokens; instance: every parameter."""
    sit = decayed_leaves("sit_vit_small")
    assert not sit["backbone/cls_token"] and not sit["backbone/register_tokens"] and not sit["backbone/pos_embed"]
    assert sit["backbone/blocks_0/attn/qkv/kernel"] and not sit["backbone/blocks_0/attn/qkv/bias"]
    assert sit["contrastive/mlp_0/kernel"] and not sit["task_weights/rotation"]
    simmim = decayed_leaves("simmim_vit_base")
    assert not simmim["backbone/cls_token"] and simmim["backbone/mask_token"]
    mae = decayed_leaves("mae_base")
    assert mae["backbone/cls_token"] and mae["decoder/mask_token"] and not mae["decoder/decoder_embed/bias"]
    instance = decayed_leaves("instance_vit_tiny")
    assert instance["backbone/norm/scale"] and instance["instances/mlp_0/bias"]


@pytest.mark.parametrize("mode", ["global", "per_tensor"])
def test_clipping_modes_follow_torch_and_dino(mode):
    """SGD (no momentum, no decay, lr 1) so the update is minus the clipped gradient. 'global':
    torch.nn.utils.clip_grad_norm_ (all gradients x max_norm / (total norm + 1e-6) when that is < 1,
    SimMIM); 'per_tensor': DINO's utils.clip_gradients, tensor by tensor."""
    cfg = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.0, "clip_grad": 5.0, "clip_mode": mode})
    grads = {"a": jnp.full((3,), 4.0), "b": jnp.full((2, 2), 0.5)}
    tx = optim.build_optimizer(cfg, optim.Schedules(lambda s: 1.0, lambda s: 0.0, None, 1.0), grads, 1)
    updates, _ = tx.update(grads, tx.init(grads), grads)
    g = {k: np.float64(v) for k, v in grads.items()}
    if mode == "global":
        coef = 5.0 / (math.sqrt(sum((v**2).sum() for v in g.values())) + 1e-6)
        want = {k: v * min(coef, 1.0) for k, v in g.items()}
    else:
        want = {k: v * min(5.0 / (np.linalg.norm(v) + 1e-6), 1.0) for k, v in g.items()}
    for k in g:
        np.testing.assert_allclose(-np.asarray(updates[k]), want[k], rtol=1e-5)
