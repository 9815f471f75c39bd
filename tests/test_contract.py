"""The method contract (ssl_jax/methods/base.py): what each method declares, and the step and the
evaluation that rely on it.

  * `ema_teacher`: declared by every method, true exactly for the papers with a momentum teacher,
    and the train step's EMA update follows it (a toy method against the formula);
  * `state_accumulation`: declared by every method (its semantics: tests/test_accumulate.py);
  * `class_logits(state, images)`: the one signature `ssl_jax.evaluate --eval=classifier` calls,
    here through `run_classifier` on an SLA run, against a numpy transcription of SLA's
    aggregated inference.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from ssl_jax import evaluate, train
from ssl_jax.core.accumulate import STATE_ACCUMULATIONS
from ssl_jax.core.state import TrainState
from ssl_jax.core.step import train_step
from ssl_jax.errors import UserError
from ssl_jax.methods import METHODS
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.optim import Schedules

# The papers whose recipe keeps a momentum (EMA) teacher: DINO, iBOT, DINOv2 and Daino (teacher
# network), BYOL (target network), MoCo v3 (momentum encoder), I-JEPA (target encoder).
EMA_TEACHER_METHODS = {"dino", "ibot", "dinov2", "daino", "byol", "mocov3", "ijepa"}


def load_config(name: str, preset: str = ""):
    spec = importlib.util.spec_from_file_location(f"{name}_config", os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def test_every_method_declares_the_contract():
    for name, cls in METHODS.items():
        assert isinstance(cls.ema_teacher, bool), name
        assert cls.ema_teacher == (name in EMA_TEACHER_METHODS), name
        assert cls.state_accumulation in STATE_ACCUMULATIONS, name


def test_every_recipe_sets_teacher_momentum_exactly_for_an_ema_teacher():
    """The config files agree with the declarations (config_check enforces it at start)."""
    configs = {path: load_config(os.path.basename(path)[:-3]) for path in glob.glob(os.path.join(REPO, "configs", "*.py"))}
    configs = {path: c for path, c in configs.items() if "method" in c}  # training configs, not the tools'
    assert len(configs) >= 26
    for path, config in configs.items():
        has_momentum = config.optim.get("teacher_momentum") is not None
        assert has_momentum == METHODS[config.method.name].ema_teacher, path


class ToyMethod:
    """params {'w': [3]}, loss |w - 1|^2; the teacher (when declared) tracks all of params."""

    state_accumulation = "mean"

    def __init__(self, ema_teacher: bool):
        self.ema_teacher = ema_teacher

    def init(self, rng, batch):
        params = {"w": jnp.array([0.0, 2.0, -1.0])}
        return MethodVariables(params, jax.tree.map(jnp.copy, params) if self.ema_teacher else None, None, None)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        return jnp.sum((params["w"] - 1.0) ** 2), LossOutput({}, method_state, model_state)

    def teacher_targets(self, params):
        return params


def _toy_state(method, teacher=None):
    variables = method.init(None, None)
    tx = optax.sgd(0.1)
    return tx, TrainState(step=jnp.zeros((), jnp.int32), params=variables.params, opt_state=tx.init(variables.params),
                          teacher=teacher if teacher is not None else variables.teacher, method_state=None,
                          model_state=None, rng=jax.random.key(0))


def test_step_updates_the_teacher_exactly_when_declared():
    """teacher <- m teacher + (1 - m) params_new with the scheduled m (DINO's momentum update)."""
    m = 0.75
    schedules = Schedules(lambda s: 0.1, lambda s: 0.0, lambda s: m, 0.1)
    method = ToyMethod(ema_teacher=True)
    teacher = {"w": jnp.array([5.0, 5.0, 5.0])}
    tx, state = _toy_state(method, teacher)
    new, metrics = train_step(state, {}, method=method, tx=tx, schedules=schedules)
    w = np.array([0.0, 2.0, -1.0])
    w_new = w - 0.1 * 2 * (w - 1.0)
    np.testing.assert_allclose(np.asarray(new.teacher["w"]), m * 5.0 + (1 - m) * w_new, rtol=1e-6)
    assert float(metrics["teacher_momentum"]) == m

    no_teacher = ToyMethod(ema_teacher=False)
    tx, state = _toy_state(no_teacher)
    with pytest.raises(ValueError, match="ema_teacher=False but the teacher momentum schedule is set"):
        train_step(state, {}, method=no_teacher, tx=tx, schedules=schedules)
    with pytest.raises(ValueError, match="ema_teacher=True but the teacher momentum schedule is missing"):
        train_step(*_toy_state(method, teacher)[1:], {}, method=method, tx=tx, schedules=schedules._replace(
            teacher_momentum=None))


def sla_aggregated_logits(network_apply, images: np.ndarray) -> np.ndarray:
    """SLA's aggregated inference, transcribed: for each rotation r of the batch (torch.rot90(x, r,
    (2, 3)) = np.rot90 over H, W), the joint logits' columns 4 y + r; their mean over r: [B, C]."""
    per_rotation = [np.asarray(network_apply(np.rot90(images, r, axes=(1, 2))), np.float64) for r in range(4)]
    return np.mean([logits[:, r::4] for r, logits in enumerate(per_rotation)], axis=0)


def test_sla_classifier_evaluation_goes_through_class_logits():
    """`--eval=classifier` on an SLA run: `evaluate.run_classifier` calls `method.class_logits(state,
    images)`; its logits are SLA's aggregated inference over the four rotations."""
    config = load_config("sla_resnet", "smoke")
    config.eval.test_split = "test[:64]"
    config.eval.batch_size = 64
    config.dataset.download = False
    run = train.setup(config, steps_per_epoch=3)
    state = train.create_state(config, run)
    method = run.method

    images = np.asarray(jax.random.normal(jax.random.key(1), (8, 16, 16, 3)), np.float32)

    def apply(x):
        return method.network.apply(state.params, state.model_state, jnp.asarray(x.copy()), train=False)[0]

    np.testing.assert_allclose(np.asarray(method.class_logits(state, images)), sla_aggregated_logits(apply, images),
                               rtol=1e-4, atol=1e-5)
    frozen = types.SimpleNamespace(config=config, run=run, state=state)
    results = evaluate.run_classifier(frozen, None)
    assert set(results) >= {"classifier_top1", "classifier_top5"}
    assert 0.0 <= results["classifier_top1"] <= results["classifier_top5"] <= 1.0


def test_rotnet_has_no_classifier():
    config = load_config("rotation_resnet50", "smoke")
    method = METHODS["rotation"](config, steps_per_epoch=3)
    with pytest.raises(UserError, match="method.joint_labels=False"):
        method.class_logits(None, jnp.zeros((1, 16, 16, 3)))
