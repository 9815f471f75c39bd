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
from ssl_jax import optim
from ssl_jax.core import batch_augment
from ssl_jax.tree_paths import path_name


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
    from ssl_jax.core.batch import example_batch

    config = load_config(config_name, "smoke")
    run = train.setup(config, steps_per_epoch=3)
    params = jax.tree.map(jnp.ones_like, jax.jit(run.method.init)(jax.random.key(0),
                                                                   example_batch(config.augment, 1)).params)
    schedules = optim.Schedules(lambda s: 1.0, lambda s: 0.5, None, 1.0)
    tx = optim.build_optimizer(load_config(config_name, "").optim, schedules, params, steps_per_epoch=3)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    moved = jax.tree_util.tree_map_with_path(lambda p, u: bool(np.any(np.asarray(u) != 0)), updates)
    return {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(moved)[0]}


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


@pytest.mark.parametrize("mode", ["global", "tensor"])
def test_clipping_modes_follow_torch_and_dino(mode):
    """SGD (no momentum, no decay, lr 1) so the update is minus the clipped gradient. 'global':
    torch.nn.utils.clip_grad_norm_ (all gradients x max_norm / (total norm + 1e-6) when that is < 1,
    SimMIM); 'tensor': DINO's utils.clip_gradients, tensor by tensor."""
    cfg = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.0, "clip_grad": 5.0, "clip_grad_scope": mode})
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


# ----------------------------------------------------------------------------- SiT


def test_sit_heads_and_temperature_come_from_the_config():
    """Linear(D, contrastive_dim) and Linear(D, 4) heads; the pixel head is ConvTranspose2d(D, 3, p, p)
    (numpy transcription, one bias per channel); the contrastive loss is SiT's ContrastiveLoss at the
    config's temperature (float64 transcription of losses.py)."""
    from ssl_jax import train
    from ssl_jax.core.batch import example_batch
    from ssl_jax.methods.sit import PatchPixels

    config = load_config("sit_vit_small", "smoke")
    config.method.contrastive_dim, config.method.temperature = 24, 0.3
    method = train.setup(config, steps_per_epoch=3).method
    params = jax.jit(method.init)(jax.random.key(0), example_batch(config.augment, 1)).params
    dim = config.model.embed_dim
    assert params["contrastive"]["mlp_0"]["kernel"].shape == (dim, 24)
    assert params["rotation"]["mlp_0"]["kernel"].shape == (dim, 4)

    rng = np.random.RandomState(0)
    z1, z2 = rng.randn(6, 24), rng.randn(6, 24)
    z = np.concatenate([z1, z2]) / np.linalg.norm(np.concatenate([z1, z2]), axis=1, keepdims=True)
    sim = z @ z.T
    positives = np.concatenate([np.diag(sim, 6), np.diag(sim, -6)])
    denominator = (np.exp(sim / 0.3) * ~np.eye(12, dtype=bool)).sum(1)
    want = -np.log(np.exp(positives / 0.3) / denominator).sum() / 12
    np.testing.assert_allclose(method.contrastive_loss(jnp.asarray(z1), jnp.asarray(z2)), want, rtol=1e-5)

    p, grid = 4, 2
    head = PatchPixels(p, 3)
    tokens = rng.randn(2, grid * grid, dim).astype(np.float32)
    v = head.init(jax.random.key(1), jnp.asarray(tokens))["params"]
    weight = np.asarray(v["proj"]["kernel"]).reshape(dim, p, p, 3)  # [D, i, j, c]
    x = tokens.reshape(2, grid, grid, dim)
    image = np.einsum("bhwd,dijc->bhiwjc", x, weight).reshape(2, grid * p, grid * p, 3) + np.asarray(v["bias"])
    from ssl_jax.models.vit import patchify
    np.testing.assert_allclose(head.apply({"params": v}, jnp.asarray(tokens)), patchify(jnp.asarray(image), p),
                               rtol=1e-5, atol=1e-5)
    bound = 1 / math.sqrt(3 * p * p)  # ConvTranspose2d default init: fan_in = out_channels x k x k
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.8 * bound


# ----------------------------------------------------------------------------- batch augmentations


def test_label_smoothing_and_mixup_targets_follow_timm():
    """mixup_target: y1 lam + y2 (1 - lam), y = one_hot with on 1 - s + s / C, off s / C, y2 of the
    batch reversed; the images mixed with the same pairs and lam; every target sums to 1."""
    labels = jnp.asarray([0, 3, 1, 2])
    smooth = np.asarray(batch_augment.smoothed_one_hot(labels, 5, 0.1))
    want = np.full((4, 5), 0.1 / 5)
    want[np.arange(4), np.asarray(labels)] = 1 - 0.1 + 0.1 / 5
    np.testing.assert_allclose(smooth, want, rtol=1e-6)
    images = jnp.asarray(np.random.RandomState(1).randn(4, 8, 8, 3), jnp.float32)
    mixed, targets = batch_augment.mixup_cutmix(jax.random.key(3), images, jnp.asarray(smooth), mixup_alpha=0.8,
                                                cutmix_alpha=0.0)
    lam = float((np.asarray(targets)[0, 0] - want[3, 0]) / (want[0, 0] - want[3, 0]))  # image 0 pairs with image 3
    assert 0 < lam < 1
    np.testing.assert_allclose(targets, lam * want + (1 - lam) * want[::-1], rtol=1e-5)
    np.testing.assert_allclose(mixed, lam * np.asarray(images) + (1 - lam) * np.asarray(images)[::-1], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_cutmix_box_matches_corrected_lambda(seed):
    """CutMix: pixels inside one rectangle come from the partner, the rest are the image's own, and
    the returned lam is 1 - box area / image area (timm correct_lam); the box side is
    2 (int(S sqrt(1 - lam)) // 2) before clipping to the image (rand_bbox)."""
    size = 32
    images = jnp.asarray(np.random.RandomState(seed).randn(6, size, size, 3), jnp.float32)
    partner = jnp.asarray([5, 4, 3, 2, 1, 0])
    lam = 0.3 + 0.1 * seed
    mixed, lam_corrected = batch_augment.cutmix(jax.random.key(seed), images, partner, jnp.asarray(lam))
    mixed, own, other = np.asarray(mixed), np.asarray(images), np.asarray(images)[np.asarray(partner)]
    from_partner = np.all(mixed == other, axis=-1) & ~np.all(mixed == own, axis=-1)
    assert np.all(np.all(mixed == own, axis=-1) | from_partner)
    box = from_partner[0]
    assert np.array_equal(box, from_partner[3])  # one box for the whole batch
    rows, cols = np.where(box.any(1))[0], np.where(box.any(0))[0]
    assert box.sum() == len(rows) * len(cols) and np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    np.testing.assert_allclose(float(lam_corrected), 1 - box.sum() / size**2, rtol=1e-6)
    side = 2 * (int(size * math.sqrt(1 - lam)) // 2)
    assert len(rows) <= side and len(cols) <= side


def test_random_erasing_fraction_and_boxes_follow_timm():
    """RandomErasing(p, mode='pixel'): about a fraction p of the images get one box of N(0, 1) noise,
    of area 2 % to 1/3 of the image (rounded sides) and aspect ratio in [0.3, 1 / 0.3]."""
    size, count = 32, 400
    images = jnp.full((count, size, size, 3), 7.0)
    out = np.asarray(batch_augment.random_erasing(jax.random.key(0), images, 0.25))
    erased = np.any(out != 7.0, axis=-1)
    hit = erased.any((1, 2))
    assert abs(hit.mean() - 0.25) < 0.07
    for box in erased[hit]:
        rows, cols = np.where(box.any(1))[0], np.where(box.any(0))[0]
        h, w = len(rows), len(cols)
        assert 0.02 * size**2 * 0.7 <= h * w <= size**2 / 3 * 1.3 and h < size and w < size
        assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3
    noise = out[np.broadcast_to(erased[..., None], out.shape)]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05


def test_finetune_global_pool_and_batch_augment():
    """global_pool: logits = head(LayerNorm_eps1e-6(mean of the last block's patch tokens, [CLS] left
    out)), not the backbone's normed [CLS]; without erasing / mixing the targets are the smoothed
    one-hot labels."""
    from ssl_jax.eval import finetune
    from ssl_jax.models.backbones import backbone_kwargs, build_backbone

    config = load_config("mae_base", "smoke")
    cfg = load_config("eval_protocols", "smoke").finetune
    backbone = build_backbone(config.model, with_drop_path=False, **backbone_kwargs(config))
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    params = backbone.init(jax.random.key(0), images)["params"]
    tuner = finetune.FineTuner(config, cfg, params, num_classes=10)
    tokens = np.float64(backbone.apply({"params": params}, images, method="block_outputs")[0][-1])[:, 1:].mean(1)
    normed = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(tokens.var(-1, keepdims=True) + 1e-6)
    head = tuner.params["head"]
    np.testing.assert_allclose(tuner.logits(tuner.params, images),
                               normed @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), rtol=1e-4, atol=1e-5)
    cfg.update({"reprob": 0.0, "mixup": 0.0, "cutmix": 0.0})
    x, targets = finetune.FineTuner(config, cfg, params, num_classes=10).batch_augment(images, jnp.asarray([2, 7]),
                                                                                       jax.random.key(2))
    np.testing.assert_array_equal(x, images)
    np.testing.assert_allclose(targets, batch_augment.smoothed_one_hot(jnp.asarray([2, 7]), 10, cfg.label_smoothing))


def test_mp3_finetuning_adds_learned_position_embeddings():
    """MP3 pre-trains without position embeddings and fine-tunes with them added (paper Sec. 3):
    the fine-tuned ViT has a fresh pos_embed on top of the pre-trained weights, and on an image of
    identical patches its tokens differ by position (the pre-trained ViT's are all equal)."""
    from ssl_jax.eval import finetune
    from ssl_jax.models.backbones import backbone_kwargs, build_backbone

    config = load_config("mp3_vit_small", "smoke")
    size = config.augment.global_crops.size
    config.model.img_size = size
    backbone = build_backbone(config.model, with_drop_path=False, **backbone_kwargs(config))
    images = jax.random.normal(jax.random.key(1), (1, size, size, 3))
    params = backbone.init(jax.random.key(0), images)["params"]
    assert "pos_embed" not in params
    cfg = load_config("eval_protocols", "smoke").finetune
    tuner = finetune.FineTuner(config, cfg, params, num_classes=10)
    assert tuner.params["backbone"]["pos_embed"].shape[1] == 1 + (size // config.model.patch_size) ** 2
    np.testing.assert_array_equal(tuner.params["backbone"]["blocks_0"]["fc1"]["kernel"], params["blocks_0"]["fc1"]["kernel"])
    flat = jnp.ones((1, size, size, 3))  # every patch the same: only positions can tell tokens apart

    def token_spread(module, variables):
        tokens = np.asarray(module.apply({"params": variables}, flat, method="block_outputs")[0][-1])
        return np.abs(tokens - tokens.mean(1, keepdims=True)).max()

    assert token_spread(backbone, params) < 1e-5
    assert token_spread(tuner.backbone, tuner.params["backbone"]) > 1e-3
