"""Tests for ssl_jax.optim: DINO's schedules, per-tensor gradient clipping, the weight-decay
mask and the AdamW optimiser with the frozen-last-layer start (plus ssl_jax.core.state.ema_update,
the teacher update those momentum schedules drive).

References are written here from facebookresearch/dino's definitions:
`utils.cosine_scheduler` (numpy), the teacher-temperature schedule of `DINOLoss`,
`utils.clip_gradients`, `utils.get_params_groups`, `utils.cancel_gradients_last_layer`
and torch.optim.AdamW's update rule, all in float64 numpy.
"""
from __future__ import annotations


import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import dino_cosine
from configs.dino_small import get_config
from ssl_jax import optim
from ssl_jax.core.state import ema_update
from ssl_jax.models.heads import DINOHead
from ssl_jax.models.vit import VisionTransformer
from ssl_jax.tree_paths import path_name, path_parts


# ----------------------------------------------------------------------------- numpy references

def np_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0):
    """dino/utils.py cosine_scheduler."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def evaluate(schedule, num_steps: int) -> np.ndarray:
    """The schedule at int32 steps 0..num_steps-1, as optax calls it with its step count."""
    fn = jax.jit(schedule)
    return np.array([float(fn(jnp.asarray(i, jnp.int32))) for i in range(num_steps)])


# ----------------------------------------------------------------------------- cosine_schedule

@pytest.mark.parametrize("base,final,epochs,niter,warmup_epochs,warmup_start", [
    (1.0, 0.1, 5, 7, 2, 0.0),
    (0.3, 1e-3, 5, 7, 0, 0.0),
    (2.0, 0.5, 4, 3, 1, 0.25),
    (0.996, 1.0, 6, 5, 0, 0.0),  # increasing (teacher momentum)
    (1.0, 0.0, 4, 1, 1, 0.5),  # a one-step warm-up: linspace(start, base, 1) == [start]
])
def test_cosine_schedule_equals_dino_cosine_scheduler_at_every_step(base, final, epochs, niter, warmup_epochs,
                                                                      warmup_start):
    sched = optim.cosine_schedule(base, final, epochs * niter, warmup_epochs * niter, warmup_start)
    want = np_cosine_scheduler(base, final, epochs, niter, warmup_epochs, warmup_start)
    np.testing.assert_allclose(evaluate(sched, epochs * niter), want, rtol=1e-6, atol=1e-9)


def test_cosine_schedule_closed_form_values():
    epochs, niter, warmup_epochs, base, final = 5, 7, 2, 1.0, 0.1
    total, warmup = epochs * niter, warmup_epochs * niter
    with_warmup = evaluate(optim.cosine_schedule(base, final, total, warmup), total)
    assert with_warmup[0] == 0.0
    np.testing.assert_allclose(with_warmup[warmup - 1], base, rtol=1e-6)  # linspace is inclusive
    np.testing.assert_allclose(with_warmup[warmup], base, rtol=1e-6)  # cosine starts at base
    n = total - warmup
    np.testing.assert_allclose(with_warmup[-1], final + 0.5 * (base - final) * (1 + np.cos(np.pi * (n - 1) / n)),
                               rtol=1e-6)
    assert np.all(np.diff(with_warmup[:warmup]) > 0) and np.all(np.diff(with_warmup[warmup:]) < 0)

    without = evaluate(optim.cosine_schedule(base, final, total), total)
    np.testing.assert_allclose(without[0], base, rtol=1e-6)
    np.testing.assert_allclose(without[-1], final + 0.5 * (base - final) * (1 + np.cos(np.pi * (total - 1) / total)),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- build_schedules

def test_build_schedules_follow_the_imagenet_recipe():
    cfg = get_config("")
    batch, steps_per_epoch, epochs = 512, 10, 100
    total = epochs * steps_per_epoch
    warmup = 10 * steps_per_epoch  # --warmup_epochs 10
    s = optim.build_schedules(cfg.optim, total, steps_per_epoch, batch)
    lr, wd, mom = (jax.jit(f) for f in (s.learning_rate, s.weight_decay, s.teacher_momentum))
    at = lambda f, i: float(f(jnp.asarray(i, jnp.int32)))  # noqa: E731

    peak = 0.0005 * batch / 256  # linear scaling rule of main_dino.py
    assert at(lr, 0) == 0.0
    np.testing.assert_allclose(at(lr, warmup - 1), peak, rtol=1e-6)
    np.testing.assert_allclose(at(lr, warmup // 2), peak * (warmup // 2) / (warmup - 1), rtol=1e-5)
    np.testing.assert_allclose(at(lr, total - 1), 1e-6, rtol=1e-2)  # approaches --min_lr 1e-6
    assert at(lr, total - 1) > 1e-6

    # Every step: main_dino.py's cosine_scheduler calls (float64, closed form and the numpy port).
    steps = jnp.arange(total, dtype=jnp.int32)
    for fn, want, rtol in ((lr, np_cosine_scheduler(peak, 1e-6, epochs, steps_per_epoch, 10), 1e-5),
                           (lr, dino_cosine(peak, 1e-6, total, warmup), 1e-5),
                           (wd, dino_cosine(0.04, 0.4, total), 1e-6),  # --weight_decay 0.04 --weight_decay_end 0.4
                           (mom, dino_cosine(0.996, 1.0, total), 1e-7)):  # --momentum_teacher 0.996 -> 1
        np.testing.assert_allclose(np.asarray(jax.vmap(fn)(steps)), want, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(at(wd, total // 2), 0.22, rtol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(at(mom, total // 2), 0.998, rtol=1e-6)


# ----------------------------------------------------------------------------- teacher temperature

@pytest.mark.parametrize("warmup_epochs", [0, 1, 3])
def test_per_epoch_linear_warmup_equals_dino_teacher_temp_schedule(warmup_epochs):
    epochs, steps_per_epoch = 6, 4
    reference = np.concatenate((np.linspace(0.04, 0.07, warmup_epochs), np.ones(epochs - warmup_epochs) * 0.07))
    sched = optim.per_epoch_linear_warmup(0.04, 0.07, warmup_epochs, steps_per_epoch)
    got = evaluate(sched, epochs * steps_per_epoch)
    want = reference[np.arange(epochs * steps_per_epoch) // steps_per_epoch]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ema_update_is_momentum_average_leaf_by_leaf():
    """ssl_jax.core.state.ema_update, DINO's teacher update: t <- m t + (1 - m) s, per parameter."""
    rng = np.random.RandomState(5)
    teacher = {"a": rng.randn(3, 4).astype(np.float32), "b": {"c": rng.randn(5).astype(np.float32)}}
    student = {"a": rng.randn(3, 4).astype(np.float32), "b": {"c": rng.randn(5).astype(np.float32)}}
    for m in (0.996, 0.5, 1.0):
        got = ema_update(jax.tree.map(jnp.asarray, teacher), jax.tree.map(jnp.asarray, student), jnp.float32(m))
        for path in (("a",), ("b", "c")):
            t, s_, g = teacher, student, got
            for k in path:
                t, s_, g = t[k], s_[k], g[k]
            np.testing.assert_allclose(np.asarray(g), m * t.astype(np.float64) + (1 - m) * s_, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- clipping

def _np_clip_per_tensor(tree, max_norm):
    """utils.clip_gradients: clip_coef = max / (norm + 1e-6), applied when < 1."""
    out = {}
    for name, g in tree.items():
        g = np.asarray(g, np.float64)
        coef = max_norm / (np.linalg.norm(g) + 1e-6)
        out[name] = g * coef if coef < 1 else g
    return out


def test_clip_by_norm_per_tensor_matches_dino_clip_gradients_and_is_not_global():
    rng = np.random.RandomState(0)
    grads = {"big": (10.0 * rng.randn(3, 4)).astype(np.float32), "small": (0.1 * rng.randn(5)).astype(np.float32)}
    tx = optim.clip_by_norm_per_tensor(3.0)
    got, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    want = _np_clip_per_tensor(grads, 3.0)
    for name in grads:
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(got["big"])), 3.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got["small"]), grads["small"])  # below the threshold: untouched

    global_tx = optax.clip_by_global_norm(3.0)
    global_clipped, _ = global_tx.update(jax.tree.map(jnp.asarray, grads), global_tx.init(grads))
    assert not np.allclose(np.asarray(global_clipped["small"]), np.asarray(got["small"]), rtol=1e-3)


# ----------------------------------------------------------------------------- decay mask

def test_decay_mask_excludes_one_dimensional_params_like_get_params_groups():
    """Built on real model trees: a tiny ViT and a DINO head with a trainable weight-norm scale."""
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    backbone = jax.eval_shape(vit.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    head = jax.eval_shape(DINOHead(32, 16, 8, 3, norm_last_layer=False).init, jax.random.key(0),
                          jnp.zeros((1, 16)))["params"]
    params = {"backbone": backbone, "head": head}
    mask = optim.decay_mask(params)

    flat = {path_name(path): (leaf, m) for (path, leaf), m in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask))}
    for name, (leaf, decayed) in flat.items():
        # get_params_groups: not regularised when the name ends with .bias or the tensor is 1-D.
        reference_decayed = not (name.endswith("bias") or len(leaf.shape) == 1)
        assert bool(decayed) == reference_decayed, name
    assert flat["backbone/cls_token"][1] and flat["backbone/pos_embed"][1]
    assert flat["backbone/patch_embed/kernel"][1] and flat["head/last_layer/v"][1]
    assert flat["head/last_layer/g"][1]  # torch's weight_g is [out_dim, 1]: 2-D, decayed
    assert not flat["backbone/patch_embed/bias"][1]
    assert not flat["backbone/norm/scale"][1] and not flat["backbone/blocks_0/norm1/bias"][1]
    assert flat["backbone/blocks_0/attn/qkv/kernel"][1] and not flat["backbone/blocks_0/attn/qkv/bias"][1]


@flax.struct.dataclass
class _EmaPair:
    step: int
    params: list


def test_path_names_read_dict_keys_fields_and_indices_alike():
    """The names parameter regexes and FSDP rules match: a TrainState-like tree of a dataclass,
    an optax namedtuple state, a tuple and dicts (one key holding a '/')."""
    tree = {"opt_state": (optax.ScaleByAdamState(count=0, mu={"head": {"a/b": 1}}, nu={}),),
            "state": optax.EmptyState(), "ema": _EmaPair(step=2, params=[3])}
    names = [(path_name(p), path_parts(p)) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert names == [("ema/step", ("ema", "step")), ("ema/params/0", ("ema", "params", "0")),
                     ("opt_state/0/count", ("opt_state", "0", "count")),
                     ("opt_state/0/mu/head/a/b", ("opt_state", "0", "mu", "head", "a/b"))]


# ----------------------------------------------------------------------------- build_optimizer

def _optim_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = get_config("smoke").optim
    cfg.lr = 0.05  # large enough that every update is visible in float32
    cfg.min_lr = 1e-3
    cfg.warmup_epochs = 1
    cfg.update(overrides)
    return cfg


def _tiny_params(rng: np.random.RandomState) -> dict:
    return {
        "backbone": {
            "cls_token": rng.randn(1, 1, 4).astype(np.float32),
            "fc": {"kernel": rng.randn(4, 3).astype(np.float32), "bias": rng.randn(3).astype(np.float32)},
            "norm": {"scale": (1.0 + 0.1 * rng.randn(4)).astype(np.float32)},
        },
        "head": {
            "last_layer": {"v": rng.randn(4, 5).astype(np.float32)},
            "mlp": {"mlp_0": {"kernel": rng.randn(4, 4).astype(np.float32), "bias": rng.randn(4).astype(np.float32)}},
        },
    }


class NumpyAdamW:
    """torch.optim.AdamW + utils.clip_gradients + cancel_gradients_last_layer, float64.

    A parameter whose grad is None (the last layer during the frozen epochs) is skipped
    entirely by torch: no decay, no moment update, its `step` does not advance.
    """

    def __init__(self, params, cfg, lr, wd, freeze_steps, decayed):
        self.p = {k: np.asarray(v, np.float64) for k, v in params.items()}
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.t = {k: 0 for k in self.p}
        self.cfg, self.lr, self.wd, self.freeze_steps, self.decayed = cfg, lr, wd, freeze_steps, decayed

    def step(self, it, grads):
        cfg = self.cfg
        grads = _np_clip_per_tensor(grads, cfg.clip_grad)
        for k, g in grads.items():
            if "last_layer" in k and it < self.freeze_steps:
                continue
            lr, wd = self.lr[it], (self.wd[it] if self.decayed[k] else 0.0)
            self.t[k] += 1
            self.p[k] = self.p[k] * (1 - lr * wd)
            self.m[k] = cfg.b1 * self.m[k] + (1 - cfg.b1) * g
            self.v[k] = cfg.b2 * self.v[k] + (1 - cfg.b2) * g * g
            m_hat = self.m[k] / (1 - cfg.b1 ** self.t[k])
            v_hat = self.v[k] / (1 - cfg.b2 ** self.t[k])
            self.p[k] = self.p[k] - lr * m_hat / (np.sqrt(v_hat) + cfg.eps)


def _trajectory(tx, params, grads) -> list:
    """[params, params after grads[0], after grads[1], ...] under the optax transformation tx."""
    state = tx.init(params)

    @jax.jit
    def update(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    history = [params]
    for g in grads:
        params, state = update(params, state, g)
        history.append(params)
    return history


def _run_build_optimizer(num_steps, steps_per_epoch=3, epochs=4):
    cfg = _optim_cfg()
    rng = np.random.RandomState(0)
    params = jax.tree.map(jnp.asarray, _tiny_params(rng))
    # Gradients differ every step and some exceed clip_grad=3, so clipping, moments and
    # bias corrections all matter.
    grads = [jax.tree.map(lambda p: jnp.asarray((rng.uniform(0.2, 4.0) * rng.randn(*p.shape)).astype(np.float32)),
                          params) for _ in range(num_steps)]
    total = epochs * steps_per_epoch
    schedules = optim.build_schedules(cfg, total, steps_per_epoch, global_batch=256)
    history = _trajectory(optim.build_optimizer(cfg, schedules, params, steps_per_epoch), params, grads)
    lr = np_cosine_scheduler(cfg.lr, cfg.min_lr, epochs, steps_per_epoch, cfg.warmup_epochs)
    wd = np_cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, epochs, steps_per_epoch)
    return cfg, history, grads, lr, wd


@pytest.fixture(scope="module")
def optimizer_run():
    return _run_build_optimizer(num_steps=6)


def test_build_optimizer_freezes_last_layer_completely_during_first_epoch(optimizer_run):
    _, history, _, lr, _ = optimizer_run
    assert lr[0] == 0.0 and lr[1] > 0 and lr[2] > 0  # warm-up: nothing moves at step 0
    for step in range(3):
        before, after = history[step], history[step + 1]
        # No update at all, not even weight decay (which would shrink v since lr*wd > 0).
        np.testing.assert_array_equal(np.asarray(after["head"]["last_layer"]["v"]),
                                      np.asarray(before["head"]["last_layer"]["v"]))
        if step > 0:  # every other parameter (decayed or not) moves
            others = lambda tree: jax.tree.leaves(tree["backbone"]) + jax.tree.leaves(tree["head"]["mlp"])  # noqa: E731
            for leaf_before, leaf_after in zip(others(before), others(after)):
                assert not np.allclose(np.asarray(leaf_before), np.asarray(leaf_after), rtol=0, atol=1e-6)
    for step in range(3, 6):
        assert not np.allclose(np.asarray(history[step + 1]["head"]["last_layer"]["v"]),
                               np.asarray(history[step]["head"]["last_layer"]["v"]), rtol=0, atol=1e-6)


def test_build_optimizer_last_layer_first_update_is_a_fresh_adamw_step(optimizer_run):
    """At step 3 the last layer's Adam moments start from zero with step count 1:
    m_hat = g, v_hat = g^2, so p <- p (1 - lr wd) - lr g / (|g| + eps)."""
    cfg, history, grads, lr, wd = optimizer_run
    p = np.asarray(history[3]["head"]["last_layer"]["v"], np.float64)
    g = _np_clip_per_tensor({"v": grads[3]["head"]["last_layer"]["v"]}, cfg.clip_grad)["v"]
    want = p * (1 - lr[3] * wd[3]) - lr[3] * g / (np.abs(g) + cfg.eps)
    np.testing.assert_allclose(np.asarray(history[4]["head"]["last_layer"]["v"]), want, rtol=1e-5, atol=1e-6)


def test_build_optimizer_matches_numpy_torch_adamw_with_clipping_decay_mask_and_freezing(optimizer_run):
    cfg, history, grads, lr, wd = optimizer_run
    def flat(tree):
        return {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    init = flat(history[0])
    decayed = {k: v.ndim > 1 for k, v in init.items()}  # get_params_groups (checked in its own test)
    reference = NumpyAdamW(init, cfg, lr, wd, freeze_steps=3, decayed=decayed)
    for step, g in enumerate(grads):
        reference.step(step, flat(g))
        got = flat(history[step + 1])
        for name in init:
            np.testing.assert_allclose(got[name], reference.p[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} after step {step}")


def test_build_optimizer_rejects_unknown_optimizer():
    cfg = _optim_cfg(name="rmsprop")
    params = {"w": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="rmsprop.*adamw"):
        optim.build_optimizer(cfg, optim.build_schedules(cfg, 10, 2, 256), params, 2)


# ----------------------------------------------------------------------------- LARS and SGD (SimCLR, BYOL, SimSiam)

def _two_view_params(rng: np.random.RandomState) -> dict:
    """A parameter tree shaped like a contrastive method's: backbone conv + BN, projector, predictor."""
    return {
        "backbone": {"conv1": {"kernel": rng.randn(3, 3, 2, 4).astype(np.float32)},
                     "bn1": {"scale": (1 + 0.1 * rng.randn(4)).astype(np.float32), "bias": rng.randn(4).astype(np.float32)}},
        "projector": {"linear_0": {"kernel": rng.randn(4, 6).astype(np.float32)}},
        "predictor": {"linear_0": {"kernel": rng.randn(6, 6).astype(np.float32), "bias": rng.randn(6).astype(np.float32)}},
    }


def _contrastive_optim_cfg(**fields) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({"lr": 0.4, "lr_reference_batch": 256, "min_lr": 0.0, "warmup_epochs": 1,
                                     "weight_decay": 0.05, "weight_decay_end": 0.05, "momentum": 0.9,
                                     "trust_coefficient": 0.01})
    cfg.update(fields)
    return cfg


def _run_optimizer(cfg, num_steps=6, steps_per_epoch=2, epochs=3):
    """Runs build_optimizer on random gradients; returns (history of flat params, flat grads, schedules)."""
    rng = np.random.RandomState(1)
    params = jax.tree.map(jnp.asarray, _two_view_params(rng))
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape).astype(np.float32)), params) for _ in range(num_steps)]
    schedules = optim.build_schedules(cfg, epochs * steps_per_epoch, steps_per_epoch, global_batch=256)
    history = _trajectory(optim.build_optimizer(cfg, schedules, params, steps_per_epoch), params, grads)

    def flat(tree):
        return {path_name(k): np.asarray(v, np.float64) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    lr = evaluate(schedules.learning_rate, num_steps)
    return [flat(p) for p in history], [flat(g) for g in grads], lr


class NumpyMomentumSGD:
    """torch.optim.SGD (momentum, weight_decay) and the LARS of BYOL / MoCo v3 / SimCLR, float64.

    Per parameter p with gradient g: d = g + wd p (only where `decayed`); LARS scales d by
    eta ||p|| / ||d|| (only where `decayed`, 1 if a norm is 0). Then either
    v = m v + d; p -= lr v   (PyTorch SGD, BYOL/MoCo v3 LARS)   or
    v = m v + lr d; p -= v   (SimCLR's LARS, `lr_inside_momentum`).
    """

    def __init__(self, params, *, wd, momentum, decayed, lars_eta=None, lr_inside=False):
        self.p = {k: v.copy() for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.wd, self.m, self.decayed, self.eta, self.lr_inside = wd, momentum, decayed, lars_eta, lr_inside

    def step(self, grads, lr_of):
        for k, g in grads.items():
            d = g + self.wd * self.p[k] if self.decayed[k] else g.copy()
            if self.eta is not None and self.decayed[k]:
                p_norm, d_norm = np.linalg.norm(self.p[k]), np.linalg.norm(d)
                d = d * (self.eta * p_norm / d_norm if p_norm > 0 and d_norm > 0 else 1.0)
            lr = lr_of(k)
            if self.lr_inside:
                self.v[k] = self.m * self.v[k] + lr * d
                self.p[k] = self.p[k] - self.v[k]
            else:
                self.v[k] = self.m * self.v[k] + d
                self.p[k] = self.p[k] - lr * self.v[k]


@pytest.mark.parametrize("lr_inside", [False, True], ids=["byol_mocov3_order", "simclr_order"])
def test_lars_matches_numpy_reference_with_bn_and_bias_excluded(lr_inside):
    cfg = _contrastive_optim_cfg(name="lars", lr_inside_momentum=lr_inside)
    history, grads, lr = _run_optimizer(cfg)
    decayed = {k: v.ndim > 1 for k, v in history[0].items()}
    assert sorted(k for k, d in decayed.items() if not d) == ["backbone/bn1/bias", "backbone/bn1/scale",
                                                              "predictor/linear_0/bias"]
    reference = NumpyMomentumSGD(history[0], wd=cfg.weight_decay, momentum=cfg.momentum, decayed=decayed,
                                 lars_eta=cfg.trust_coefficient, lr_inside=lr_inside)
    for step, g in enumerate(grads):
        reference.step(g, lambda _: lr[step])
        for name, value in history[step + 1].items():
            np.testing.assert_allclose(value, reference.p[name], rtol=1e-5, atol=1e-7, err_msg=f"{name} at step {step}")


def test_lars_orders_differ_while_the_lr_changes():
    """SimCLR's and BYOL's LARS agree at a constant lr but not during warm-up: the flag matters."""
    inside = _run_optimizer(_contrastive_optim_cfg(name="lars", lr_inside_momentum=True))[0]
    outside = _run_optimizer(_contrastive_optim_cfg(name="lars", lr_inside_momentum=False))[0]
    key = "projector/linear_0/kernel"
    assert not np.allclose(inside[3][key], outside[3][key], rtol=1e-4, atol=0)


def test_simsiam_sgd_decays_everything_keeps_predictor_lr_fixed_and_steps_lr_per_epoch():
    """SimSiam: torch SGD with weight decay on every parameter, the cosine lr set once per
    epoch, and the predictor at the fixed initial lr (--fix-pred-lr)."""
    cfg = _contrastive_optim_cfg(name="sgd", warmup_epochs=0, exclude_1d_from_decay=False, schedule_per_epoch=True,
                                 fixed_lr_patterns=("^predictor/",))
    history, grads, lr = _run_optimizer(cfg)
    peak = cfg.lr  # batch 256 = lr_reference_batch
    # per epoch: lr = peak * 0.5 * (1 + cos(pi * epoch / epochs)), 2 steps per epoch, 3 epochs
    want_lr = [peak * 0.5 * (1 + np.cos(np.pi * (step // 2) / 3)) for step in range(6)]
    np.testing.assert_allclose(lr, want_lr, rtol=1e-6)
    decayed = {k: True for k in history[0]}
    reference = NumpyMomentumSGD(history[0], wd=cfg.weight_decay, momentum=cfg.momentum, decayed=decayed)
    for step, g in enumerate(grads):
        reference.step(g, lambda name: peak if name.startswith("predictor/") else want_lr[step])
        for name, value in history[step + 1].items():
            np.testing.assert_allclose(value, reference.p[name], rtol=1e-5, atol=1e-6, err_msg=f"{name} at step {step}")


def test_frozen_patterns_are_never_updated_not_even_by_weight_decay():
    """MoCo v3's --stop-grad-conv1 (AdamW, decay on every parameter): the frozen tensor keeps its
    initial value for the whole run while the others move."""
    cfg = _contrastive_optim_cfg(name="adamw", b1=0.9, b2=0.999, eps=1e-8, exclude_1d_from_decay=False,
                                 frozen_patterns=("^backbone/conv1/",))
    history, _, _ = _run_optimizer(cfg)
    for params in history[1:]:
        np.testing.assert_array_equal(params["backbone/conv1/kernel"], history[0]["backbone/conv1/kernel"])
    for name in history[0]:
        if name != "backbone/conv1/kernel":
            assert not np.allclose(history[-1][name], history[0][name]), name


def test_sqrt_lr_scaling():
    cfg = _contrastive_optim_cfg(name="lars", lr=0.075, lr_scaling="sqrt")
    assert optim.peak_learning_rate(cfg, 128) == pytest.approx(0.075 * np.sqrt(128))
    assert optim.peak_learning_rate(_contrastive_optim_cfg(lr=0.3), 4096) == pytest.approx(4.8)
