"""MAE, SimMIM and I-JEPA: losses vs float64 numpy, what each encoder sees, where gradients
flow, 8 devices vs 1, the schedule options they added, and each :smoke preset end to end."""
from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import REPO, run_smoke_preset, smoke_params
from ssl_jax import losses, masks, optim, train
from ssl_jax.core.batch import example_batch
from ssl_jax.methods.mim import encode_kept
from ssl_jax.models.mim_heads import unshuffle
from ssl_jax.models.vit import patchify
from ssl_jax.sharding import batch_sharding, replicated

CONFIG_FILES = {"mae": "mae_base", "simmim": "simmim_vit_base", "ijepa": "ijepa_small"}


def smoke_config(name: str):
    """The method's :smoke preset: a 1-block 16-wide ViT on 32 px images (8 px patches; 4 px for
    I-JEPA, whose blocks need an 8 x 8 grid), batch 16."""
    path = os.path.join(REPO, "configs", f"{CONFIG_FILES[name]}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke")


@functools.lru_cache(maxsize=None)
def build(name: str):
    """(config, run on the 8 devices, fresh MethodVariables, a noise batch of 16 images), built once."""
    config = smoke_config(name)
    run = train.setup(config, steps_per_epoch=3)
    batch = example_batch(config.augment, 16, jax.random.key(3))
    variables = jax.device_get(jax.jit(run.method.init)(jax.random.key(0), batch))
    if variables.teacher is not None:  # a target encoder that differs from the online one
        variables = variables._replace(teacher=jax.tree.map(lambda t: t + 0.01, variables.teacher))
    return config, run, variables, batch


LOSS_RNG = jax.random.key(5)


def _extras(name: str, method, params, teacher, images):
    """What each numpy re-implementation needs, from the masks the loss draws (LOSS_RNG)."""
    mask_rng = jax.random.split(LOSS_RNG)[0]
    if name == "mae":
        pred, m = method.reconstruct(params, images, mask_rng)
        return {"pred": pred, "mask": m.mask}
    if name == "simmim":
        mask = masks.simmim_masks(mask_rng, images.shape[0], 32, 16, 8, 0.6)
        return {"pred": method.reconstruct(params, images, mask), "mask": mask}
    m = method._masks(mask_rng, images.shape[0])
    h = method.target_encoder.apply({"params": teacher["backbone"]}, images, method="tokens")
    z = encode_kept(method.encoder, params["backbone"], images, m.context, m.context_valid)
    pred = method.predictor.apply({"params": params["predictor"]}, z, m.context, m.context_valid, m.targets,
                                  m.targets_valid)
    return {"pred": pred, "h": h, "targets": m.targets, "targets_valid": m.targets_valid}


@functools.lru_cache(maxsize=None)
def probe(name: str, devices: int):
    """The loss, its metrics, the gradients w.r.t. params and teacher, and `_extras`, computed by
    one jitted function on a mesh of `devices` devices (state replicated, batch split)."""
    _, run, variables, batch = build(name)
    method = run.method
    mesh = run.mesh if devices == 8 else Mesh(np.array(jax.devices()[:devices]), ("data",))
    assert mesh.devices.size == devices

    @jax.jit
    def fn(params, teacher, batch):
        loss_fn = lambda p, t: method.loss(p, t, None, None, batch, LOSS_RNG, jnp.int32(0))  # noqa: E731
        (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, teacher)
        return loss, aux.metrics, grads, _extras(name, method, params, teacher, batch["views"]["global"][:, 0])

    put = jax.device_put
    return jax.device_get(fn(put(variables.params, replicated(mesh)), put(variables.teacher, replicated(mesh)),
                             put(batch, batch_sharding(mesh))))


def _assert_trees_close(a, b, rtol, atol, what):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


def _patches64(images, p):
    """numpy patchify in float64: [B, H, W, 3] -> [B, N, p*p*3] (row, column, channel in a patch)."""
    b, h, w, c = images.shape
    x = np.asarray(images, np.float64).reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


# ----------------------------------------------------------------------------- losses vs numpy

def test_mim_losses_equal_float64_numpy():
    rng = np.random.RandomState(0)
    b, n, p = 3, 6, 4 * 4 * 3
    pred, pixels = rng.randn(b, n, p).astype(np.float32), rng.randn(b, n, p).astype(np.float32)
    mask = rng.rand(b, n) < 0.5
    mask[:, 0] = True

    # MAE norm-pix target (torch's unbiased var) and masked-patch MSE.
    x = pixels.astype(np.float64)
    want_target = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-6)
    target = losses.normalized_patch_targets(jnp.asarray(pixels))
    np.testing.assert_allclose(target, want_target, rtol=1e-5, atol=1e-5)
    per_patch = ((pred.astype(np.float64) - want_target) ** 2).mean(-1)
    np.testing.assert_allclose(losses.masked_patch_mse(jnp.asarray(pred), target, jnp.asarray(mask)),
                               (per_patch * mask).sum() / mask.sum(), rtol=1e-5)
    # Only masked patches count: the gradient w.r.t. visible patches' predictions is exactly 0.
    grad = jax.grad(losses.masked_patch_mse)(jnp.asarray(pred), target, jnp.asarray(mask))
    assert not np.any(np.asarray(grad)[~mask]) and np.all(np.any(np.asarray(grad)[mask] != 0, axis=-1))

    # SimMIM: the reference's formula on pixel maps [B, 3, H, W] with the mask upsampled to pixels.
    side, ps = 8, 4  # 2 x 2 patches of 4 px
    images = rng.randn(b, side, side, 3)
    recon = rng.randn(b, side, side, 3)
    patch_mask = rng.rand(b, 4) < 0.5
    patch_mask[:, 0] = True
    pixel_mask = np.repeat(np.repeat(patch_mask.reshape(b, 2, 2), ps, 1), ps, 2)[:, None]  # [B, 1, H, W]
    l1 = np.abs(images.transpose(0, 3, 1, 2) - recon.transpose(0, 3, 1, 2))
    want = (l1 * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3
    got = losses.masked_pixel_l1(patchify(jnp.asarray(recon, jnp.float32), ps),
                                 patchify(jnp.asarray(images, jnp.float32), ps), jnp.asarray(patch_mask))
    np.testing.assert_allclose(got, want, rtol=1e-5)

    # I-JEPA smooth L1 (beta 1) over valid tokens; differences on both sides of |d| = 1.
    z, h = rng.randn(b, 2, 5, 8) * 1.5, rng.randn(b, 2, 5, 8)
    valid = np.ones((b, 2, 5), bool)
    valid[..., 3:] = False
    d = np.abs(z - h)
    huber = np.where(d < 1, 0.5 * d**2, d - 0.5)
    want = huber[valid].mean()
    got = losses.masked_smooth_l1(jnp.asarray(z, jnp.float32), jnp.asarray(h, jnp.float32), jnp.asarray(valid))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert (d < 1).any() and (d >= 1).any()


def test_unshuffle_restores_patch_order():
    """Visible tokens go back to their patches, the mask token fills the removed ones."""
    m = masks.random_masks(jax.random.key(0), 3, 10, 0.6)
    visible = jax.random.normal(jax.random.key(1), (3, 4, 5))
    token = jnp.full((1, 1, 5), 7.0)
    out = np.asarray(unshuffle(visible, token, m.restore))
    keep, mask = np.asarray(m.keep), np.asarray(m.mask)
    for b in range(3):
        np.testing.assert_array_equal(out[b, keep[b]], np.asarray(visible[b]))
        np.testing.assert_array_equal(out[b, mask[b]], 7.0)


# ----------------------------------------------------------------------------- the methods

def test_mae_encoder_sees_exactly_the_visible_patches():
    config, run, variables, batch = build("mae")
    method, params = run.method, variables.params
    images = batch["views"]["global"][:4, 0]
    m = masks.random_masks(jax.random.key(4), 4, method.num_patches, method.mask_ratio)
    encode = jax.jit(lambda x: encode_kept(method.encoder, params["backbone"], x, m.keep))
    latent = np.asarray(encode(images))
    assert latent.shape == (4, 1 + 4, 16)  # [CLS] + 4 of 16 patches
    p = config.model.patch_size
    changed = images.reshape(4, 4, p, 4, p, 3).copy()
    for n in np.flatnonzero(np.asarray(m.mask[0])):  # new pixels in every removed patch of image 0 ...
        changed[0, n // 4, :, n % 4] += 3.0
    np.testing.assert_array_equal(encode(changed.reshape(images.shape)), latent)  # ... move nothing
    kept = int(m.keep[0, 0])
    changed[0, kept // 4, :, kept % 4] += 3.0  # one visible patch: its image's latent moves
    assert not np.allclose(encode(changed.reshape(images.shape))[0], latent[0])


def test_mae_loss_equals_numpy_on_masked_patches():
    config, _, _, batch = build("mae")
    loss, _, _, extras = probe("mae", 1)
    pixels = _patches64(batch["views"]["global"][:, 0], config.model.patch_size)
    target = (pixels - pixels.mean(-1, keepdims=True)) / np.sqrt(pixels.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((np.asarray(extras["pred"], np.float64) - target) ** 2).mean(-1)
    mask = extras["mask"]
    assert mask.sum(1).tolist() == [12] * 16
    np.testing.assert_allclose(float(loss), (per_patch * mask).sum() / mask.sum(), rtol=1e-5)


def test_simmim_mask_token_replaces_masked_patches_and_loss_equals_numpy():
    _, run, variables, batch = build("simmim")
    method, params = run.method, variables.params
    images = batch["views"]["global"][:4, 0]
    mask = masks.simmim_masks(jax.random.key(1), 4, 32, 16, 8, 0.6)  # 3 of 4 16 px cells = 12 of 16 patches
    variables = {"params": params["backbone"]}
    encode = jax.jit(lambda x: method.encoder.apply(  # noqa: E731
        variables, method.encoder.apply(variables, x, mask, method="embed"), method="encode"))
    tokens = np.asarray(encode(images))
    noisy = images.reshape(4, 4, 8, 4, 8, 3).copy()
    for n in np.flatnonzero(np.asarray(mask[0])):
        noisy[0, n // 4, :, n % 4] = 100.0
    np.testing.assert_allclose(encode(noisy.reshape(images.shape)), tokens, rtol=1e-6, atol=1e-6)

    loss, _, _, extras = probe("simmim", 1)
    b = batch["views"]["global"].shape[0]
    recon = np.asarray(extras["pred"], np.float64).reshape(b, 4, 4, 8, 8, 3).transpose(0, 1, 3, 2, 4, 5)
    pixel_mask = np.repeat(np.repeat(extras["mask"].reshape(b, 4, 4), 8, 1), 8, 2)[..., None]  # [B, H, W, 1]
    diff = np.abs(recon.reshape(b, 32, 32, 3) - np.asarray(batch["views"]["global"][:, 0], np.float64))
    np.testing.assert_allclose(float(loss), (diff * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3, rtol=1e-5)


def test_ijepa_loss_equals_numpy_and_no_gradient_reaches_the_target_encoder():
    loss, _, (grads, teacher_grads), extras = probe("ijepa", 1)
    assert all(not np.any(g) for g in jax.tree.leaves(teacher_grads))
    assert all(np.any(g) for g in jax.tree.leaves(grads["predictor"]))
    h = np.asarray(extras["h"], np.float64)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)  # F.layer_norm
    targets = np.take_along_axis(h[:, None], extras["targets"][..., None], axis=2)  # [B, M, Kt, D]
    d = np.abs(np.asarray(extras["pred"], np.float64) - targets)
    want = np.where(d < 1, 0.5 * d**2, d - 0.5).mean(-1)[extras["targets_valid"]].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_ijepa_padding_changes_nothing():
    """Padding entries of the context and target index lists (valid=False) can point anywhere:
    the valid predictions do not change."""
    _, run, variables, batch = build("ijepa")
    method, params = run.method, variables.params
    images = batch["views"]["global"][:4, 0]
    m = jax.device_get(jax.jit(lambda key: method._masks(key, 4))(jax.random.key(10)))
    targets_valid = m.targets_valid.copy()
    targets_valid[..., -3:] = False  # pad the targets too, whatever this draw's size
    assert not m.context_valid.all()

    @jax.jit
    def predict(context, targets):
        z = encode_kept(method.encoder, params["backbone"], images, context, m.context_valid)
        return method.predictor.apply({"params": params["predictor"]}, z, context, m.context_valid, targets,
                                      targets_valid)

    base = np.asarray(predict(m.context, m.targets))
    other = np.asarray(predict(np.where(m.context_valid, m.context, 0), np.where(targets_valid, m.targets, 5)))
    np.testing.assert_allclose(other[targets_valid], base[targets_valid], rtol=1e-5, atol=1e-6)


def test_method_config_errors_name_the_fix():
    config = smoke_config("simmim")
    config.model.mask_token = ""
    with pytest.raises(ValueError, match="mask_token='trunc_normal'"):
        train.setup(config, steps_per_epoch=3)
    config = smoke_config("ijepa")
    config.model.class_token = True
    with pytest.raises(ValueError, match="class_token=False"):
        train.setup(config, steps_per_epoch=3)
    config = smoke_config("mae")
    config.augment.global_crops.number = 2
    with pytest.raises(ValueError, match="single_view_augment"):
        train.setup(config, steps_per_epoch=3)
    for name in CONFIG_FILES:  # their encoders' outputs are [CLS] (if any) and patches only
        config = smoke_config(name)
        config.model.num_register_tokens = 1
        with pytest.raises(ValueError, match="num_register_tokens=0"):
            train.setup(config, steps_per_epoch=3)


# ----------------------------------------------------------------------------- devices, schedules

@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_sharded_loss_and_gradients_equal_single_device(name):
    """The global batch split over 8 devices gives the single-device loss, metrics and gradients
    (the masks are drawn for the global batch from one rng, whatever the sharding)."""
    loss8, metrics8, grads8, _ = probe(name, 8)
    loss1, metrics1, grads1, _ = probe(name, 1)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    _assert_trees_close(grads8, grads1, rtol=1e-4, atol=1e-5, what=f"{name} grads")
    _assert_trees_close(metrics8, metrics1, rtol=1e-5, atol=1e-6, what=f"{name} metrics")


def test_schedule_options_follow_the_references():
    """SimMIM's warm-up from warmup_lr then multistep decay; I-JEPA's linear momentum and a
    schedule horizon longer than the run (ipe_scale)."""
    cfg = ml_collections.ConfigDict({"lr": 1e-4, "lr_reference_batch": 512, "min_lr": 0.0, "warmup_epochs": 2,
                                     "warmup_lr": 5e-7, "lr_schedule": "multistep", "lr_milestones": (7,),
                                     "lr_gamma": 0.1, "weight_decay": 0.05, "weight_decay_end": 0.05})
    s = optim.build_schedules(cfg, total_steps=80, steps_per_epoch=10, global_batch=2048)
    lr = np.array([float(s.learning_rate(i)) for i in range(80)])
    peak, start = 4e-4, 2e-6  # x 2048 / 512
    np.testing.assert_allclose(lr[:20], start + (peak - start) * np.arange(20) / 20, rtol=1e-5)
    np.testing.assert_allclose(lr[20:70], peak, rtol=1e-6)
    np.testing.assert_allclose(lr[70:], peak * 0.1, rtol=1e-5)

    cfg = ml_collections.ConfigDict({"lr": 1e-3, "lr_reference_batch": 256, "min_lr": 1e-6, "warmup_epochs": 0,
                                     "weight_decay": 0.04, "weight_decay_end": 0.4, "schedule_horizon": 1.25,
                                     "teacher_momentum": 0.996, "teacher_momentum_end": 1.0,
                                     "teacher_momentum_schedule": "linear"})
    s = optim.build_schedules(cfg, total_steps=80, steps_per_epoch=10, global_batch=256)
    steps = np.arange(80)
    np.testing.assert_allclose([float(s.teacher_momentum(i)) for i in steps], 0.996 + 0.004 * steps / 100, rtol=1e-6)
    np.testing.assert_allclose(float(s.weight_decay(50)), 0.4 + (0.04 - 0.4) * 0.5 * (1 + np.cos(np.pi * 0.5)),
                               rtol=1e-5)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("name", smoke_params(sorted(CONFIG_FILES)))
def test_smoke_preset_end_to_end(name, tfds_data_dir, tmp_path):
    """`python -m ssl_jax.main --config=configs/<paper>.py:smoke` trains 6 steps on CIFAR-10,
    checkpoints and reports kNN."""
    run_smoke_preset(CONFIG_FILES[name], tmp_path / name)
