"""Distillation from frozen teachers (ssl_jax/methods/frozen_teacher.py): DeiT and attention transfer.

Frozen teachers get no gradient and stay bit-identical over steps (a ResNet teacher of a ViT
student); `config.teacher_init_from` fills every teacher array or stops with one line; each loss
against a float64 numpy transcription of the official code; attention copy gives the student the
teacher's attention; every `:smoke` preset from the command line.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from configs import attention_transfer_vit_large, deit_small, unic_vit_base
from conftest import run_smoke_preset, smoke_params
from ssl_jax import export, init_from, sharding, train
from ssl_jax.core.batch import example_batch
from ssl_jax.core.batch_augment import supervised_batch
from ssl_jax.errors import UserError
from ssl_jax.methods import build_method, frozen_teacher
from ssl_jax.methods.attention_transfer import attention_distillation_loss

PLACEHOLDER = "set-by-the-test"  # teacher_init_from: the method only checks that one is named


def _config(module, preset="smoke", **overrides):
    config = module.get_config(preset)
    if isinstance(config.teacher_init_from, str):
        config.teacher_init_from = PLACEHOLDER
    else:  # several teachers (UNIC)
        config.teacher_init_from = {name: PLACEHOLDER for name in config.teacher_init_from}
    for field, value in overrides.items():
        target = config
        *parents, leaf = field.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def _batch(config, batch_size=8, seed=0):
    batch = example_batch(config.augment, batch_size, jax.random.key(seed), fields=("label",))
    batch["label"] = np.arange(batch_size, dtype=np.int32) % config.dataset.num_classes
    return batch


def _init(method, batch):
    first = jax.tree.map(lambda x: x[:1], batch)
    return method.init(jax.random.key(1), first)


# ---- float64 numpy transcriptions of the official losses ----

def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_deit_loss(logits, dist_logits, teacher_logits, targets, kind, alpha, tau):
    """facebookresearch/deit losses.py DistillationLoss.forward with SoftTargetCrossEntropy as base_criterion."""
    base = np.mean(np.sum(-np.asarray(targets, np.float64) * np_log_softmax(logits), -1))
    if kind == "none":
        return base
    if kind == "soft":
        log_s, log_t = np_log_softmax(np.asarray(dist_logits) / tau), np_log_softmax(np.asarray(teacher_logits) / tau)
        # F.kl_div(log_s, log_t, reduction='sum', log_target=True) * T * T / outputs_kd.numel()
        distill = np.sum(np.exp(log_t) * (log_t - log_s)) * tau * tau / np.asarray(dist_logits).size
    else:  # F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
        labels = np.argmax(teacher_logits, -1)
        distill = -np.mean(np_log_softmax(dist_logits)[np.arange(len(labels)), labels])
    return base * (1 - alpha) + distill * alpha


def np_attention_distill(student_logits, teacher_logits):
    """models_dual_vit.py DualVisionTransformer.forward, mode 'distill': the sum over blocks of
    -(teacher_map.softmax(-1) * log_softmax(student_map)).sum(-1).mean()."""
    total = 0.0
    for s, t in zip(student_logits, teacher_logits):
        total += np.mean(-np.sum(np.exp(np_log_softmax(t)) * np_log_softmax(s), -1))
    return total


# ---- frozen teachers ----

def test_frozen_resnet_teacher_is_not_optimised_and_stays_bit_identical():
    """DeiT's :smoke (a ViT student, a ResNet teacher with BatchNorm): the optimiser holds no teacher
    state, and 2 jitted train steps leave every teacher array (BatchNorm statistics included)
    bit-identical while the student moves."""
    config = _config(deit_small)
    run = train.setup(config, steps_per_epoch=3)
    state = train.create_state(config, run)
    assert jax.tree.leaves(state.teacher["model_state"]), "the ResNet teacher has BatchNorm statistics"
    teacher_before = jax.device_get(state.teacher)
    params_before = jax.device_get(state.params)

    size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(state.opt_state) - 2 * size(state.params) < 10  # Adam's moments of params (+ counts) only

    step = train.jit_step(config, run)
    for i in range(2):
        state, _ = step(state, sharding.to_global_batch(_batch(config, 16, seed=i), run.mesh))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.teacher), teacher_before)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(state.params), params_before)
    assert all(jax.tree.leaves(moved["head_dist"]))


def _tiny_vit_file(tmp_path, config, seed=0, name=""):
    """A fresh ViT of config.teacher's (config.teacher[name]'s) shape written in timm's names
    (ssl_jax.export), as a user's converted official checkpoint would be; returns (path, its params)."""
    backbone = frozen_teacher.teacher_network(config, "test", name=name).modules["backbone"]
    size = config.augment.global_crops.size
    params = backbone.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))["params"]
    path = str(tmp_path / f"teacher{name}.safetensors")
    export.save_atomically(export.timm_state_dict(jax.device_get(params)), path, {})
    return path, params


def test_teacher_init_from_fills_the_teacher_or_refuses(tmp_path):
    """A converted checkpoint fills state.teacher (and nothing else); a teacher of another shape is
    one UserError naming the arrays that do not fit."""
    config = _config(attention_transfer_vit_large)
    path, params = _tiny_vit_file(tmp_path, config)
    config.teacher_init_from = path
    run = train.setup(config, steps_per_epoch=3)
    state = train.create_state(config, run)
    loaded = init_from.initialize_teacher(config, state, log=lambda line: None)
    jax.tree.map(np.testing.assert_allclose, jax.device_get(loaded.teacher["params"]["backbone"]),
                 jax.device_get(params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.params), jax.device_get(state.params))

    wider = _config(attention_transfer_vit_large, **{"model.embed_dim": 32, "teacher.embed_dim": 32})
    wider.teacher_init_from = path
    run = train.setup(wider, steps_per_epoch=3)
    with pytest.raises(UserError, match="teacher arrays not loaded"):
        init_from.initialize_teacher(wider, train.create_state(wider, run), log=lambda line: None)


def test_teacher_weights_are_required():
    config = deit_small.get_config("smoke")
    with pytest.raises(UserError, match="teacher_init_from"):
        build_method(config, 3)


# ---- DeiT ----

@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_deit_loss_matches_numpy_reference(kind):
    """DeiT's loss (base soft-target CE on [CLS], distillation on the distillation token) against
    losses.py DistillationLoss in float64, on the same mixed images; tau 2 and alpha 0.3 so that
    a lost temperature or swapped weight shows."""
    config = _config(deit_small, **{"method.distillation_type": kind, "method.distillation_tau": 2.0,
                                    "method.distillation_alpha": 0.3})
    method = build_method(config, 3)
    batch = _batch(config)
    variables = _init(method, batch)
    rng = jax.random.key(3)
    loss, out = method.loss(variables.params, variables.teacher, None, None, batch, rng, 0)

    augment_rng, drop_rng = jax.random.split(rng)
    images, targets = supervised_batch(augment_rng, batch["views"]["global"][:, 0], batch["label"],
                                       method.num_classes, config.method)
    logits, dist_logits = method.logits(variables.params, images, True, drop_rng)
    teacher_logits = frozen_teacher.teacher_outputs(method.teacher, variables.teacher, images)
    expected = np_deit_loss(logits, dist_logits, teacher_logits, targets, kind, 0.3, 2.0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert not np.allclose(logits, dist_logits)  # two heads on two tokens


def test_deit_eval_averages_both_heads():
    """DistilledVisionTransformer in eval mode: (head(x_cls) + head_dist(x_dist)) / 2."""
    config = _config(deit_small)
    method = build_method(config, 3)
    batch = _batch(config)
    variables = _init(method, batch)
    images = batch["views"]["global"][:, 0]
    state = train.TrainState(step=0, params=variables.params, opt_state=None, teacher=variables.teacher,
                             method_state=None, model_state=None, rng=None)
    logits, dist_logits = method.logits(variables.params, images, False)
    np.testing.assert_allclose(method.class_logits(state, images), (np.asarray(logits) + dist_logits) / 2, rtol=1e-6)


# ---- attention transfer ----

def test_attention_distillation_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 2, 2, 5, 5)) * 3  # [n, B, H, T, T] attention logits
    softmax = lambda x: jax.nn.softmax(jnp.asarray(x, jnp.float32), -1)  # noqa: E731
    ours = attention_distillation_loss(softmax(student), softmax(teacher))
    np.testing.assert_allclose(float(ours), np_attention_distill(student, teacher), rtol=1e-5)


@pytest.mark.parametrize("end_layer", [0, -1])
def test_attention_copy_gives_the_student_the_teacher_attention(end_layer):
    """In copy mode the student's first depth + end_layer blocks use exactly the teacher's attention
    weights (its own q, k differ); later blocks compute their own."""
    config = _config(attention_transfer_vit_large, **{"method.mode": "copy", "method.end_layer": end_layer,
                                                      "model.depth": 2, "teacher.depth": 2})
    method = build_method(config, 3)
    batch = _batch(config)
    variables = _init(method, batch)
    images = batch["views"]["global"][:, 0]
    given = method.teacher_attention(variables.teacher, images, None)
    assert given.shape[0] == 2 + end_layer
    _, copied = method.student(variables.params, images, given, None)
    _, own = method.student(variables.params, images, None, None)
    np.testing.assert_array_equal(copied[:2 + end_layer], given)
    assert not np.allclose(own[0], given[0], atol=1e-3)  # a fresh student attends otherwise
    if end_layer:
        assert not np.allclose(copied[-1], method.teacher_attention(variables.teacher, images, None)[-1], atol=1e-3)
    loss, out = method.loss(variables.params, variables.teacher, None, None, batch, jax.random.key(0), 0)
    assert np.isfinite(float(loss)) and "attention_loss" not in out.metrics


def test_attention_distillation_loss_in_the_method():
    """Distill mode: CE + atd_weight x the attention loss of the first depth + end_layer blocks, the
    teacher under the student's drop-path masks (the same rng over the same module paths)."""
    config = _config(attention_transfer_vit_large, **{"model.depth": 3, "teacher.depth": 3, "method.end_layer": -1,
                                                      "model.drop_path_rate": 0.5, "method.atd_weight": 2.5})
    method = build_method(config, 3)
    batch = _batch(config)
    variables = _init(method, batch)
    rng = jax.random.key(4)
    loss, out = method.loss(variables.params, variables.teacher, None, None, batch, rng, 0)
    np.testing.assert_allclose(float(loss), float(out.metrics["classification_loss"])
                               + 2.5 * float(out.metrics["attention_loss"]), rtol=1e-6)
    # The student's weights as the teacher's: the shared drop-path masks (blocks 2 and 3 drop, at
    # rates 0.25 and 0.5) give the same attention in every block (block 3's input is masked).
    same = {"params": {"backbone": variables.params["backbone"]}, "model_state": {}}
    augment_rng, drop_rng = jax.random.split(rng)
    images, _ = supervised_batch(augment_rng, batch["views"]["global"][:, 0], batch["label"], method.num_classes,
                                 config.method)
    method.num_blocks = 3
    teacher_attention = method.teacher_attention(same, images, drop_rng)
    _, student_attention = method.student(variables.params, images, None, drop_rng)
    np.testing.assert_allclose(teacher_attention, student_attention, atol=1e-6)
    _, unmasked = method.student(variables.params, images, None, None)
    assert not np.allclose(unmasked[2], student_attention[2], atol=1e-6)  # the masks do change block 3's input


# ---- UNIC ----

def np_unic(outputs, raw, stats, uniform, momentum, lam_cos, lam_sl1, drop_prob, eps=1e-6):
    """naver/unic get_teacher_output (utils.standard_normalize), losses.loss_per_teacher and
    teacher_dropping.aggregate_losses in float64, with the dropping draws `uniform` [T, B] (random.random())."""
    names = sorted(outputs)
    per_teacher, new_stats = [], {}
    for n in names:
        losses, new_stats[n] = [], {}
        for t in ("cls", "patch"):
            x = np.asarray(raw[n][t], np.float64)
            mean_ema, std_ema = (np.asarray(stats[n][t][k], np.float64) for k in ("mean", "std"))
            dims = tuple(range(x.ndim - 1))
            mean, std = x.mean(dims), x.std(dims, ddof=1) + eps  # torch .std(): unbiased
            target = (x - mean_ema) / (std_ema + eps)
            new_stats[n][t] = {"mean": mean_ema * (1 - momentum) + mean * momentum,
                               "std": std_ema * (1 - momentum) + std * momentum}
            s = np.asarray(outputs[n][t], np.float64)
            cos = np.sum(s * target, -1) / np.maximum(np.linalg.norm(s, axis=-1) * np.linalg.norm(target, axis=-1), 1e-8)
            d = np.abs(s - target)
            sl1 = np.where(d < 1, 0.5 * d * d, d - 0.5).mean(-1)
            loss = lam_cos * (1 - cos) + lam_sl1 * sl1
            losses.append(loss.mean(1) if loss.ndim == 2 else loss)
        per_teacher.append(np.mean(losses, 0))
    per_teacher = np.stack(per_teacher)  # [T, B]
    coeffs = np.ones_like(per_teacher)
    for b in range(per_teacher.shape[1]):
        top = np.argmax(per_teacher[:, b])
        for i in range(len(names)):
            if i != top and uniform[i, b] < drop_prob:
                coeffs[i, b] = 0
    coeffs /= coeffs.sum()
    return np.sum(coeffs * per_teacher), new_stats


def test_unic_loss_matches_numpy_reference():
    """Standardisation by the EMA statistics, their update, the cosine + smooth-L1 loss and teacher
    dropping against naver/unic in float64, at step 2 of 6 (momentum 0.75 of the cosine 1 -> 0.001)
    with non-trivial statistics and a drop probability of 0.7."""
    config = _config(unic_vit_base, **{"method.teacher_drop_prob": 0.7, "method.lam_cos": 0.3})
    method = build_method(config, 3)
    batch = _batch(config)
    variables = _init(method, batch)
    rng = np.random.default_rng(0)
    stats = jax.tree.map(lambda x: jnp.asarray(x * 1.5 + rng.normal(size=x.shape) * 0.1, jnp.float32),
                         variables.method_state)  # means ~ N(0, 0.1), stds ~ 1.5
    key, step = jax.random.key(5), 2
    loss, out = method.loss(variables.params, variables.teacher, stats, None, batch, key, step)

    drop_rng, path_rng = jax.random.split(key)
    images = batch["views"]["global"][:, 0]
    outputs = method.student(variables.params, images, path_rng)
    raw = {}
    for n in method.names:
        backbone = method.teachers[n].modules["backbone"]
        tokens = np.asarray(backbone.apply({"params": variables.teacher[n]["params"]["backbone"]}, images,
                                           method="tokens"))
        raw[n] = {"cls": tokens[:, 0], "patch": tokens[:, backbone.num_prefix_tokens:]}
    uniform = np.asarray(jax.random.uniform(drop_rng, (len(method.names), images.shape[0])))
    momentum = 0.001 + 0.5 * (1 - 0.001) * (1 + np.cos(np.pi * step / 6))  # utils.cosine_scheduler, 6 steps
    expected, expected_stats = np_unic(outputs, raw, stats, uniform, momentum, 0.3, 0.5, 0.7)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=2e-5, atol=1e-6), out.method_state,
                 expected_stats)
    assert sorted(out.metrics) == ["coeff_a", "coeff_b", "loss_a", "loss_b", "tnorm_momentum"]


# ---- `:smoke` presets from the command line ----

@pytest.mark.parametrize("config_name", smoke_params(["deit_small", "attention_transfer_vit_large", "unic_vit_base"]))
def test_smoke_preset_end_to_end(config_name, tfds_data_dir, tmp_path):
    """`python -m ssl_jax.main --config=configs/<paper>.py:smoke --config.teacher_init_from=T`: DeiT's
    teacher is first trained by its `:smoke_teacher` preset (a ResNet classifier, 6 steps); attention
    transfer's and UNIC's two are fresh tiny ViTs written in timm's names."""
    if config_name == "deit_small":
        teacher = tmp_path / "teacher"
        run_smoke_preset(config_name, teacher, preset="smoke_teacher")
        flags = [f"--config.teacher_init_from={teacher}"]
    elif config_name == "unic_vit_base":  # two teachers of widths 16 and 24
        config = _config(unic_vit_base)
        flags = [f"--config.teacher_init_from.{n}={_tiny_vit_file(tmp_path, config, i, n)[0]}"
                 for i, n in enumerate(("a", "b"))]
    else:
        flags = [f"--config.teacher_init_from={_tiny_vit_file(tmp_path, _config(attention_transfer_vit_large))[0]}"]
    run_smoke_preset(config_name, tmp_path / config_name, *flags)
