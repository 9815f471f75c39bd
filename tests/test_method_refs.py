"""Every method's loss against an independent float64 reference that reads the config.

Each test builds the method from its config file's default preset (the paper's recipe), shrunk in
sizes only (`shrink`: a 1-block 16-wide ViT or a width-8 ResNet-10, 32 px crops, batch 8, small heads,
2 local crops; float32; no stochastic depth, so the forward is a function of the params), runs
`method.loss` on fixed random views and params, and recomputes the objective in float64 numpy
(`tests/method_refs_numpy.py`, transcriptions of the official code) from the network outputs of each
view, obtained with the method's own Flax modules. The reference takes every hyper-parameter from
the config (temperatures, loss weights, targets, masks' ratios, centering momentum, label
smoothing, ...), and each test also checks the reference with one such value changed does NOT
match, so the suite proves it would catch a method that ignores or misreads it.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_refs_numpy as ref
from ssl_jax import masks
from ssl_jax.batch import example_batch
from ssl_jax.methods import build_method

RTOL = 2e-4  # float32 forward and loss vs the float64 reference
STEPS_PER_EPOCH = 2
LOSS_RNG = jax.random.key(5)


def load(config_name: str, preset: str = ""):
    return importlib.import_module(f"configs.{config_name}").get_config(preset)


def shrink(config, **overrides):
    """Sizes only: model depth/width, image and crop sizes, batch, head widths, number of local crops.
    `overrides` (dotted keys) are further sizes a method needs."""
    config.compute_dtype = "float32"
    config.batch_size = 8
    model = config.model
    if model.name == "vit":
        model.update(size="custom", embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=32,
                     drop_path_rate=0.0)
    else:
        model.update(depth=10, width=8)
    config.augment.global_crops.size = 32
    config.augment.local_crops.size = 16
    config.augment.local_crops.number = min(config.augment.local_crops.number, 2)
    for name in ("projector", "predictor"):
        if name in config.method:
            config.method[name].update(hidden_dim=32, out_dim=16)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def build(config, fields=()):
    """(method, variables, batch) with fixed random params and standard-normal views."""
    method = build_method(config, STEPS_PER_EPOCH)
    batch = example_batch(config.augment, config.batch_size, jax.random.key(1), fields=fields)
    return method, method.init(jax.random.key(0), batch), batch


def perturbed(tree, scale=0.05, seed=3):
    """A copy of `tree` with every leaf moved by scale x N(0, 1): a teacher that differs from the student."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def check(got, want, *wrong):
    """`got` equals the reference `want` and none of the references `wrong` (a changed hyper-parameter)."""
    np.testing.assert_allclose(float(got), want, rtol=RTOL)
    for w in wrong:
        assert abs(float(got) - w) > 20 * RTOL * abs(want), (float(got), want, w)


def views_of(batch, group="global"):
    """[B, V, H, W, 3] -> the list of V views [B, H, W, 3]."""
    v = batch["views"][group]
    return [v[:, i] for i in range(v.shape[1])]


def np_(x):
    return np.asarray(x, np.float64)


# ----------------------------------------------------------------------------- two views


def _two_view(config_name):
    config = shrink(load(config_name))
    method, variables, batch = build(config)
    return config, method, variables, batch


def _project(method, params, stats, x):
    return np_(method.network.apply(params, stats, x, train=True, upto="projector")[0])


def _predict(method, params, stats, x):
    z, _ = method.network.apply(params, stats, x, train=True, upto="projector")
    return np_(method.network.apply(params, stats, z, train=True, start="predictor")[0])


def test_simclr_nt_xent_with_the_configured_temperature():
    """google-research/simclr: both views through the network as one batch of 2B (BatchNorm over both),
    NT-Xent both ways at `method.temperature` (0.1)."""
    config, method, v, batch = _two_view("simclr_resnet50")
    x1, x2 = views_of(batch)
    z = _project(method, v.params, v.model_state, jnp.concatenate([x1, x2]))
    z1, z2 = z[:8], z[8:]
    loss = method.loss(v.params, None, None, v.model_state, batch, LOSS_RNG, 0)[0]
    t = config.method.temperature
    separate = (_project(method, v.params, v.model_state, x1), _project(method, v.params, v.model_state, x2))
    check(loss, ref.simclr_loss(z1, z2, t), ref.simclr_loss(z1, z2, 1.5 * t), ref.simclr_loss(*separate, t))


def test_byol_regression_on_the_ema_target():
    """deepmind byol: predictor(online) of each view against the EMA target's projection of the other."""
    config, method, v, batch = _two_view("byol_resnet50")
    teacher = perturbed(v.teacher)
    x1, x2 = views_of(batch)
    s = v.model_state
    p1, p2 = _predict(method, v.params, s, x1), _predict(method, v.params, s, x2)
    t1, t2 = _project(method, teacher, s, x1), _project(method, teacher, s, x2)
    o1, o2 = _project(method, v.params, s, x1), _project(method, v.params, s, x2)
    loss = method.loss(v.params, teacher, None, s, batch, LOSS_RNG, 0)[0]
    check(loss, ref.byol_loss(p1, p2, t1, t2), ref.byol_loss(p1, p2, o1, o2), ref.byol_loss(p1, p2, t2, t1))


def test_mocov3_contrastive_loss_with_the_configured_temperature():
    """facebookresearch/moco-v3: ctr(q1, k2) + ctr(q2, k1), momentum-encoder keys, `method.temperature` (0.2)."""
    config, method, v, batch = _two_view("mocov3_vit_small")
    teacher = perturbed(v.teacher)
    x1, x2 = views_of(batch)
    s = v.model_state
    q1, q2 = _predict(method, v.params, s, x1), _predict(method, v.params, s, x2)
    k1, k2 = _project(method, teacher, s, x1), _project(method, teacher, s, x2)
    loss = method.loss(v.params, teacher, None, s, batch, LOSS_RNG, 0)[0]
    t = config.method.temperature
    check(loss, ref.moco_v3_loss(q1, q2, k1, k2, t), ref.moco_v3_loss(q1, q2, k1, k2, 0.5 * t),
          ref.moco_v3_loss(q1, q2, *(_project(method, v.params, s, x) for x in (x1, x2)), t))


def test_simsiam_negative_cosine_on_the_online_projection():
    """facebookresearch/simsiam: -(cos(p1, z2) + cos(p2, z1)) / 2 with z the online projection (no
    teacher: the method must have none)."""
    config, method, v, batch = _two_view("simsiam_resnet50")
    assert v.teacher is None
    x1, x2 = views_of(batch)
    s = v.model_state
    p1, p2 = _predict(method, v.params, s, x1), _predict(method, v.params, s, x2)
    z1, z2 = _project(method, v.params, s, x1), _project(method, v.params, s, x2)
    loss = method.loss(v.params, None, None, s, batch, LOSS_RNG, 0)[0]
    want = ref.simsiam_loss(p1, p2, z1, z2)
    check(loss, want, 2 * want, ref.simsiam_loss(p1, p2, z2, z1))
