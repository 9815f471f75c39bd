"""iBOT and DINOv2: their losses against float64 numpy transcriptions of the references
(bytedance/ibot `iBOTLoss`; facebookresearch/dinov2 `SSLMetaArch.forward_backward`,
`DINOLoss`, `iBOTPatchLoss`, `KoLeoLoss`, `get_vit_lr_decay_rate`), the KoLeo guard, where
gradients flow, their masks, 8-device sharding and each `:smoke` preset end to end.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import REPO, run_config, smoke_params
from ssl_jax import losses, sharding, train
from ssl_jax.core.batch import example_batch
from ssl_jax.optim import build_optimizer, build_schedules, lr_multipliers
from ssl_jax.sharding import batch_sharding, replicated
from ssl_jax.tree_paths import path_name

CONFIGS = {"ibot": "ibot_small", "dinov2": "dinov2_small"}


def load_config(method: str, preset: str = "smoke"):
    return importlib.import_module(f"configs.{CONFIGS[method]}").get_config(preset)


@functools.lru_cache(maxsize=None)
def smoke_run(method: str):
    """(config, Run) of the method's smoke preset (no compilation)."""
    config = load_config(method)
    return config, train.setup(config, steps_per_epoch=3)


# ----------------------------------------------------------------------------- numpy references (float64)

def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_softmax(x):
    return np.exp(np_log_softmax(x))


def view_major(x):
    """[B, V, ...] -> [V*B, ...], the references' torch.cat(crops) layout."""
    x = np.asarray(x, np.float64)
    return x.transpose((1, 0) + tuple(range(2, x.ndim))).reshape((-1,) + x.shape[2:])


def np_ibot_loss(s_cls, s_patch, t_cls, t_patch, mask, center, center2, temp, temp2, student_temp, lambda1, lambda2,
                 center_momentum):
    """`iBOTLoss.forward` then `update_center`: (cls term, patch term, center, center2)."""
    views, crops = s_cls.shape[1], t_cls.shape[1]
    s_cls_c = np.split(view_major(s_cls) / student_temp, views)
    s_patch_c = np.split(view_major(s_patch) / student_temp, crops)
    t_cls_flat, t_patch_flat = view_major(t_cls), view_major(t_patch)
    t_cls_c = np.split(np_softmax((t_cls_flat - center) / temp), crops)
    t_patch_c = np.split(np_softmax((t_patch_flat - center2) / temp2), crops)
    masks = np.split(view_major(mask), crops)
    total1 = total2 = 0.0
    n1 = n2 = 0
    for q in range(crops):
        for v in range(views):
            if v == q:
                loss2 = np.sum(-t_patch_c[q] * np_log_softmax(s_patch_c[v]), axis=-1)
                loss2 = np.sum(loss2 * masks[v], axis=-1) / np.maximum(masks[v].sum(axis=-1), 1.0)
                total2 += loss2.mean()
                n2 += 1
            else:
                total1 += np.sum(-t_cls_c[q] * np_log_softmax(s_cls_c[v]), axis=-1).mean()
                n1 += 1
    new_center = center * center_momentum + t_cls_flat.mean(axis=0) * (1 - center_momentum)
    new_center2 = center2 * center_momentum + t_patch_flat.mean(axis=1).mean(axis=0) * (1 - center_momentum)
    return total1 / n1 * lambda1, total2 / n2 * lambda2, new_center, new_center2


def np_sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=3):
    """`DINOLoss.sinkhorn_knopp_teacher` on one process."""
    q = np.exp(np.asarray(teacher_output, np.float64) / teacher_temp).T
    samples, prototypes = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= prototypes
        q /= q.sum(axis=0, keepdims=True)
        q /= samples
    return (q * samples).T


def np_koleo(x, eps=1e-8, dtype=np.float64):
    """`KoLeoLoss.forward`: F.normalize, max inner product excluding self, PairwiseDistance(eps)."""
    x = np.asarray(x, dtype)
    eps_ = dtype(eps)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps_)
    dots = x @ x.T
    np.fill_diagonal(dots, -1)
    neighbour = x[np.argmax(dots, axis=1)]
    distances = np.linalg.norm(x - neighbour + eps_, axis=-1)
    return -np.log(distances + eps_).mean()


def np_dinov2_loss(s_cls, t_cls, s_patch, t_patch, mask, s_backbone_cls, *, centering, center, center2, temp,
                   student_temp, koleo_weight, koleo_group):
    """`SSLMetaArch.forward_backward`'s loss_accumulator (2 global crops, loss weights 1) from the head
    outputs: s_cls [B, 2+L, K] (globals first), t_cls [B, 2, K], full patch logits [B, 2, N, K_p]
    of which `mask` [B, 2, N] selects the masked ones (`mask_indices_list`), backbone [CLS] [B, 2, D]."""
    batch, views = s_cls.shape[:2]
    n_local = views - 2
    t_flat = view_major(t_cls)
    t_chunks = np.split(t_flat, 2)
    t_reversed = np.concatenate([t_chunks[1], t_chunks[0]])  # A matched to B
    flat_mask = view_major(mask).astype(bool)  # [2B, N]
    t_masked = view_major(t_patch)[flat_mask]  # [M, K_p]
    s_masked = view_major(s_patch)[flat_mask]
    if centering == "sinkhorn_knopp":
        t_probs = np_sinkhorn_knopp(t_reversed, temp)
        t_patch_probs = np_sinkhorn_knopp(t_masked, temp)
    else:
        t_probs = np_softmax((t_reversed - center) / temp)
        t_patch_probs = np_softmax((t_masked - center2) / temp)
    t_probs_list = np.split(t_probs, 2)

    def dino_loss(student_list, teacher_list):
        total = 0.0
        for s in student_list:
            lsm = np_log_softmax(s / student_temp)
            for t in teacher_list:
                total -= np.sum(t * lsm, axis=-1).mean()
        return total

    n_terms = 2 + max(n_local * 2, 1)
    s_flat = view_major(s_cls)
    local = dino_loss(np.split(s_flat[2 * batch:], n_local), t_probs_list) / n_terms if n_local > 0 else 0.0
    glob = dino_loss([s_flat[:2 * batch]], [t_probs]) * 2 / n_terms
    koleo = 0.0
    for crop in np.split(view_major(s_backbone_cls), 2):  # per GPU: each group of koleo_group images
        koleo += np.mean([np_koleo(g) for g in np.split(crop, batch // koleo_group)])
    weights = np.repeat(1.0 / np.maximum(flat_mask.sum(axis=1), 1), flat_mask.sum(axis=1))
    ibot = -np.sum(np.sum(t_patch_probs * np_log_softmax(s_masked / student_temp), axis=-1) * weights) / (2 * batch)
    return local + glob + koleo_weight * koleo + ibot, {"cls": local + glob, "koleo": koleo, "patch": ibot}


def get_vit_lr_decay_rate(name, lr_decay_rate=1.0, num_layers=12, force_is_backbone=False):
    """dinov2/utils/param_groups.py (chunked_blocks=False), transcribed."""
    layer_id = num_layers + 1
    if name.startswith("backbone") or force_is_backbone:
        if ".pos_embed" in name or ".patch_embed" in name or ".mask_token" in name or ".cls_token" in name:
            layer_id = 0
        elif force_is_backbone and ("pos_embed" in name or "patch_embed" in name or "mask_token" in name
                                    or "cls_token" in name):
            layer_id = 0
        elif ".blocks." in name and ".residual." not in name:
            layer_id = int(name[name.find(".blocks."):].split(".")[2]) + 1
        elif "blocks." in name and "residual." not in name:
            layer_id = int(name[name.find("blocks."):].split(".")[1]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


# ----------------------------------------------------------------------------- pure losses

def _random_mask(rng, shape, max_count):
    """[..., N] bool with a random number (0..max_count) of random positions per row."""
    counts = rng.randint(0, max_count + 1, size=shape[:-1])
    ranks = np.argsort(rng.rand(*shape), axis=-1).argsort(axis=-1)
    return ranks < counts[..., None]


def test_masked_patch_loss_matches_ibot_and_ignores_unmasked_patches():
    """`iBOTLoss` loss2 per crop / mean; unmasked student logits change neither value nor get gradient."""
    rng = np.random.RandomState(0)
    student = rng.randn(4, 2, 6, 5).astype(np.float32)
    probs = np_softmax(rng.randn(4, 2, 6, 5)).astype(np.float32)
    mask = _random_mask(rng, (4, 2, 6), 6)
    mask[0, 0] = False  # a crop without masked patches contributes 0
    want = 0.0
    for v in range(2):
        ce = np.sum(-probs[:, v] * np_log_softmax(np.float64(student[:, v]) / 0.1), axis=-1)
        want += np.mean(np.sum(ce * mask[:, v], axis=-1) / np.maximum(mask[:, v].sum(-1), 1.0)) / 2
    got = losses.masked_patch_cross_entropy(student, probs, mask, 0.1)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)

    changed = np.where(mask[..., None], student, student + 10 * rng.randn(*student.shape).astype(np.float32))
    np.testing.assert_allclose(float(losses.masked_patch_cross_entropy(changed, probs, mask, 0.1)), float(got),
                               rtol=1e-6)
    grad = np.asarray(jax.grad(losses.masked_patch_cross_entropy)(jnp.asarray(student), probs, mask, 0.1))
    assert not np.any(grad[~mask]) and np.all(np.abs(grad[mask]).sum(-1) > 0)


def test_sinkhorn_knopp_matches_reference_and_balances():
    rng = np.random.RandomState(1)
    logits = 3 * rng.randn(24, 10).astype(np.float32)
    got = np.asarray(losses.sinkhorn_knopp(logits, 0.5))
    np.testing.assert_allclose(got, np_sinkhorn_knopp(logits, 0.5), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)  # each sample: a distribution
    balanced = np.asarray(losses.sinkhorn_knopp(logits, 0.5, num_iters=200))
    np.testing.assert_allclose(balanced.sum(axis=0), 24 / 10, rtol=1e-3)  # each prototype: M / K
    # Left-out rows (unmasked patches, padding) get 0 and change nothing for the others.
    keep = rng.rand(24) < 0.5
    subset = np.asarray(losses.sinkhorn_knopp(logits, 0.5, weights=keep))
    np.testing.assert_allclose(subset[keep], np_sinkhorn_knopp(logits[keep], 0.5), rtol=1e-4, atol=1e-7)
    assert not np.any(subset[~keep])
    # exp(t / tau) overflows float32 at t / tau > 88 (here ~200); shifting by the max is exact.
    np.testing.assert_allclose(np.asarray(losses.sinkhorn_knopp(100 + logits, 0.5)), got, rtol=1e-4, atol=1e-7)


def test_koleo_matches_reference_per_set():
    rng = np.random.RandomState(2)
    x = rng.randn(3, 8, 6).astype(np.float32)
    want = np.mean([np_koleo(s) for s in x])
    np.testing.assert_allclose(float(losses.koleo(x)), want, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        losses.koleo(x[:, :1])


def test_koleo_guard_keeps_duplicates_and_zeros_finite():
    """Duplicate samples: the reference in float16 gives inf (eps underflows); here finite, with
    finite gradients (zero from the duplicate pair), also for all-zero features."""
    rng = np.random.RandomState(3)
    x = rng.randn(6, 16).astype(np.float32)
    x[1] = x[0]
    with np.errstate(divide="ignore"):
        assert np.isinf(np_koleo(x, dtype=np.float16))
    for features in (x, np.zeros_like(x), x.astype(jnp.bfloat16)):
        value, grad = jax.value_and_grad(losses.koleo)(jnp.asarray(features))
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad, np.float32)))
    # Samples 0 and 1 each add -log(2 eps); the rest as the reference.
    others = -np.log(np.linalg.norm(np.float64(x[2:, None]) / np.linalg.norm(x[2:, None], axis=-1, keepdims=True)
                                    - np.float64(x) / np.linalg.norm(x, axis=-1, keepdims=True)
                                    + np.eye(6)[2:, :, None] * 9, axis=-1).min(axis=1) + 1e-8)
    np.testing.assert_allclose(float(losses.koleo(x)), (2 * -np.log(2e-8) + others.sum()) / 6, rtol=1e-5)
    grad = np.asarray(jax.grad(losses.koleo)(jnp.asarray(x)))
    assert np.abs(grad).max() < 10


# ----------------------------------------------------------------------------- method objectives

def test_ibot_objective_matches_ibotloss_and_centers():
    config, run = smoke_run("ibot")
    method, cfg = run.method, config.method
    rng = np.random.RandomState(4)
    b, n, k = 4, method.num_patches, cfg.out_dim
    views = 2 + config.augment.local_crops.number
    out = {"student_logits": rng.randn(b, views, k), "teacher_logits": rng.randn(b, 2, k),
           "student_patch_logits": rng.randn(b, 2, n, k), "teacher_patch_logits": rng.randn(b, 2, n, k),
           "mask": _random_mask(rng, (b, 2, n), n // 2), "student_global_cls": rng.randn(b, 2, 8)}
    out = {key: np.asarray(v, bool if key == "mask" else np.float32) for key, v in out.items()}
    out["patch_weights"] = out["mask"]
    state = {"center": 0.3 * rng.randn(k).astype(np.float32), "center2": 0.3 * rng.randn(k).astype(np.float32)}
    step = 0  # epoch 0 of a 2-epoch warm-up: both teacher temperatures 0.04
    loss, new_state, metrics = jax.jit(method.objective)(out, state, jnp.asarray(step))
    cls, patch, center, center2 = np_ibot_loss(
        out["student_logits"], out["student_patch_logits"], out["teacher_logits"], out["teacher_patch_logits"],
        out["mask"], state["center"], state["center2"], 0.04, 0.04, cfg.student_temp, cfg.lambda1, cfg.lambda2,
        cfg.center_momentum)
    np.testing.assert_allclose(float(loss), cls + patch, rtol=1e-5)
    np.testing.assert_allclose([float(metrics["cls_loss"]), float(metrics["patch_loss"])], [cls, patch], rtol=1e-5)
    np.testing.assert_allclose(new_state["center"], center, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state["center2"], center2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("centering,n_local", [("sinkhorn_knopp", None), ("centering", None), ("centering", 0)])
def test_dinov2_objective_matches_forward_backward(centering, n_local):
    """The total loss (DINO local + global, KoLeo per 'GPU' group, iBOT on masked patches) from
    random head outputs, with the patches gathered by the method's `patch_positions`. With no
    local crops the DINO term is its 2 pairs / (2 + max(0, 1)), not their mean."""
    config, _ = smoke_run("dinov2")
    config = config.copy_and_resolve_references()
    config.method.centering = centering
    method = train.setup(config, steps_per_epoch=3).method
    cfg = config.method
    rng = np.random.RandomState(5)
    n_local = config.augment.local_crops.number if n_local is None else n_local
    b, n, views = config.batch_size, method.num_patches, 2 + n_local
    mask = _random_mask(rng, (b, 2, n), method.max_masked)
    s_patch, t_patch = (rng.randn(b, 2, n, cfg.ibot_out_dim).astype(np.float32) for _ in range(2))
    indices, weights = method.patch_positions(jnp.asarray(mask))
    gather = lambda x: jnp.take_along_axis(jnp.asarray(x), indices[..., None], axis=2)  # noqa: E731
    out = {"student_logits": rng.randn(b, views, cfg.out_dim).astype(np.float32),
           "teacher_logits": rng.randn(b, 2, cfg.out_dim).astype(np.float32),
           "student_patch_logits": gather(s_patch), "teacher_patch_logits": gather(t_patch),
           "patch_weights": weights, "mask": mask, "student_global_cls": rng.randn(b, 2, 8).astype(np.float32)}
    state = {"center": 0.3 * rng.randn(cfg.out_dim).astype(np.float32),
             "center2": 0.3 * rng.randn(cfg.ibot_out_dim).astype(np.float32)}
    step = 4  # mid warm-up: 0.04 + (0.07 - 0.04) * 4 / 5 per iteration
    temp = 0.04 + 0.03 * 4 / 5
    loss, new_state, metrics = jax.jit(method.objective)(out, state, jnp.asarray(step))
    want, terms = np_dinov2_loss(out["student_logits"], out["teacher_logits"], s_patch, t_patch, mask,
                                 out["student_global_cls"], centering=centering, center=state["center"],
                                 center2=state["center2"], temp=temp, student_temp=cfg.student_temp,
                                 koleo_weight=cfg.koleo_loss_weight, koleo_group=cfg.koleo_group_size)
    np.testing.assert_allclose(float(metrics["teacher_temp"]), temp, rtol=1e-6)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    for name, value in terms.items():
        np.testing.assert_allclose(float(metrics[f"{name}_loss"]), value, rtol=1e-5, err_msg=name)
    if centering == "centering":
        flat = view_major(t_patch)[view_major(mask).astype(bool)]
        np.testing.assert_allclose(new_state["center2"], 0.9 * state["center2"] + 0.1 * flat.mean(axis=0),
                                   rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- masks, lr decay

def test_masks_follow_the_references():
    """iBOT (pred_ratio (0, 0.3)): about half the crops unmasked; DINOv2: exactly
    int(2B * 0.5) masked crops, each at most max_masked patches. On a 16 x 16 grid."""
    counts = {}
    for name in ("ibot", "dinov2"):
        config = load_config(name)
        config.augment.global_crops.size = 128
        method = train.setup(config, steps_per_epoch=3).method
        sample = jax.jit(method.sample_masks, static_argnums=(1, 2))
        mask = np.asarray(sample(jax.random.key(0), 32, 2, jnp.asarray(0)))
        assert mask.shape == (32, 2, 256)
        counts[name] = mask.sum(axis=-1).ravel()
        if name == "dinov2":
            assert np.sum(counts[name] > 0) == 32 and counts[name].max() <= method.max_masked
    masked = counts["ibot"] > 0
    assert 16 < masked.sum() < 48 and counts["ibot"][masked].max() <= 0.5 * 256


def _torch_name(path: str) -> tuple[str, str]:
    """('backbone', 'blocks.2.attn.qkv.weight') for 'backbone/blocks_2/attn/qkv/kernel'."""
    module, *rest = path.split("/")
    name = ".".join(rest).replace("blocks_", "blocks.").replace("kernel", "weight").replace("scale", "weight")
    return module, name.replace("patch_embed.", "patch_embed.proj.")


def test_layer_decay_multipliers_match_get_vit_lr_decay_rate():
    """Per parameter: decay ** (L + 1 - layer id) x 0.2 on the patch embedding, as DINOv2's
    get_params_groups_with_decay on each of student.backbone / dino_head / ibot_head."""
    config = load_config("dinov2")
    config.model.depth = 3
    method = train.setup(config, steps_per_epoch=3).method
    params = jax.eval_shape(method.init, jax.random.key(0), example_batch(config.augment, 1)).params
    got = lr_multipliers(params, 0.9, (("backbone/patch_embed/", 0.2),))
    checked = set()
    for path, value in jax.tree_util.tree_flatten_with_path(got)[0]:
        module, name = _torch_name(path_name(path))
        n_blocks = 3 if module == "backbone" else 0
        want = get_vit_lr_decay_rate(name, 0.9, num_layers=n_blocks, force_is_backbone=n_blocks > 0)
        want *= 0.2 if "patch_embed" in name else 1.0
        np.testing.assert_allclose(value, want, rtol=1e-12, err_msg=f"{module}.{name}")
        checked.add(round(value, 6))
    # patch embedding, [CLS], block 1, heads
    assert {round(0.9 ** 4 * 0.2, 6), round(0.9 ** 4, 6), round(0.9 ** 2, 6), 1.0} <= checked


def test_lr_multipliers_scale_the_adamw_step():
    """The multiplier scales a parameter's whole AdamW step (lr and decoupled decay)."""
    optim_cfg = load_config("dinov2").optim
    optim_cfg.warmup_epochs = 0  # a non-zero lr at step 0
    params = {"backbone": {"blocks_0": {"w": jnp.ones((2, 2))}, "blocks_1": {"w": jnp.ones((2, 2))},
                           "patch_embed": {"kernel": jnp.ones((2, 2))}}, "head": {"w": jnp.ones((2, 2))}}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    schedules = build_schedules(optim_cfg, 100, 10, 16)

    def step(cfg):
        tx = build_optimizer(cfg, schedules, params, 10)
        return tx.update(grads, tx.init(params), params)[0]

    plain = optim_cfg.copy_and_resolve_references()
    plain.layer_decay, plain.lr_multipliers = 1.0, ()
    decayed, reference = step(optim_cfg), step(plain)
    ratio = jax.tree.map(lambda a, b: float(np.asarray(a)[0, 0] / np.asarray(b)[0, 0]), decayed, reference)
    want = {"backbone": {"blocks_0": {"w": 0.81}, "blocks_1": {"w": 0.9}, "patch_embed": {"kernel": 0.729 * 0.2}},
            "head": {"w": 1.0}}
    close = jax.tree.map(lambda a, b: np.isclose(a, b, rtol=1e-5), ratio, want)
    assert all(jax.tree.leaves(close)), ratio


# ----------------------------------------------------------------------------- methods on the mesh

@pytest.fixture(scope="module", params=sorted(CONFIGS))
def loss_on_meshes(request):
    """Loss, aux and gradients w.r.t. (params, teacher) on 8 devices and on 1, from one state and batch."""
    # No drop-path: in a 1-block ViT a dropped attention branch leaves [CLS] independent of the
    # image, so KoLeo meets exact duplicates, whose ~1/eps gradient float rounding decides.
    config = load_config(request.param)
    config.model.drop_path_rate = 0.0
    run8 = train.setup(config, steps_per_epoch=3)
    state = jax.jit(run8.method.init)(jax.random.key(0), example_batch(config.augment, 1))
    # DINOv2's LayerScale starts at 1e-5, so at init every image has almost the same [CLS]
    # (nearest-neighbour distances ~1e-7, where KoLeo's -log d turns float32 rounding into
    # percent differences). Scales of 1, as after training, make the features image-dependent.
    trained_scales = functools.partial(jax.tree_util.tree_map_with_path, lambda path, p: jnp.ones_like(p) if
                                       jax.tree_util.keystr(path).endswith("['gamma']") else p)
    state = state._replace(params=trained_scales(state.params), teacher=trained_scales(state.teacher))
    batch = example_batch(config.augment, config.batch_size, jax.random.key(3))
    args, lowered = {}, {}
    for devices in (8, 1):
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        rep = replicated(mesh)
        fn = jax.jit(jax.value_and_grad(run8.method.loss, argnums=(0, 1), has_aux=True),
                     in_shardings=(rep, rep, rep, rep, batch_sharding(mesh), rep, rep), out_shardings=rep)
        args[devices] = (*jax.device_put(tuple(state), rep), sharding.to_global_batch(batch, mesh),
                         jax.random.key(7), jnp.asarray(1, jnp.int32))
        lowered[devices] = fn.lower(*args[devices])
    with ThreadPoolExecutor(2) as pool:  # XLA compiles without the GIL: both meshes at once on 2 cores
        compiled = dict(zip(lowered, pool.map(lambda lower: lower.compile(), lowered.values())))
    return request.param, {devices: jax.device_get(compiled[devices](*args[devices])) for devices in compiled}


def test_sharded_loss_and_gradients_equal_single_device(loss_on_meshes):
    name, results = loss_on_meshes
    ((loss8, aux8), (grads8, _)), ((loss1, aux1), (grads1, _)) = results[8], results[1]
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path((grads8, aux8.method_state, aux8.metrics))[0],
                            jax.tree.leaves((grads1, aux1.method_state, aux1.metrics))):
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4 * float(np.max(np.abs(b))) + 5e-6,
                                   err_msg=f"{name}{jax.tree_util.keystr(path)}")
    assert float(aux8.metrics["masked_fraction"]) > 0
    patch_embed = grads8["backbone"]["patch_embed"]["kernel"]
    assert np.abs(grads8["backbone"]["mask_token"]).max() > 0 and np.abs(patch_embed).max() > 0


def test_teacher_gets_no_gradient(loss_on_meshes):
    name, results = loss_on_meshes
    (_, (_, teacher_grads)) = results[8]
    for path, g in jax.tree_util.tree_flatten_with_path(teacher_grads)[0]:
        assert not np.any(np.asarray(g)), f"{name}: gradient reached teacher{jax.tree_util.keystr(path)}"


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("method", smoke_params(sorted(CONFIGS)))
def test_smoke_preset_end_to_end(method, tfds_data_dir, tmp_path):
    """The `:smoke` preset trains 6 steps on CIFAR-10 from the command line, checkpoints and reports kNN."""
    workdir = tmp_path
    result = run_config(os.path.join(REPO, "configs", f"{CONFIGS[method]}.py") + ":smoke", workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in open(workdir / "metrics" / "metrics.jsonl")]
    train_records = [r for r in records if r["split"] == "train"]
    assert train_records and all(np.isfinite(r["loss"]) for r in train_records)
    assert train_records[-1]["step"] == 6 and all(r["patch_loss"] > 0 for r in train_records)
    evals = [r for r in records if r["split"] == "eval"]
    assert evals and 0.0 < evals[-1]["knn_top1@20"] <= 1.0
    assert os.path.isdir(workdir / "checkpoints" / "6")
