"""FSDP parameter sharding and gradient accumulation against the plain replicated step.

No tensorflow: batches are `ssl_jax.core.batch.example_batch` noise of the tiny smoke config's
shapes, on the 8 simulated CPU devices of conftest. One replicated 3-step trajectory
(module fixture) is the reference for both.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import NUM_DEVICES
from ssl_jax import sharding, train
from ssl_jax.core.accumulate import split_micro_batches
from ssl_jax.core.batch import example_batch
from ssl_jax.errors import UserError

STEPS = 3
GLOBAL_BATCH = 16


def _trajectory(config, steps: int = STEPS):
    """(per-step metrics, final state's arrays as host numpy by field, the state's shardings) of `steps` steps
    on the same noise batches, for any config (mesh, accumulation, precision)."""
    run = train.setup(config, steps_per_epoch=3)
    step_fn = train.jit_step(config, run)
    state = train.create_state(config, run)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    metrics = []
    for step in range(steps):
        batch = example_batch(config.augment, GLOBAL_BATCH, jax.random.key(1000 + step))
        state, m = step_fn(state, sharding.to_global_batch(batch, run.mesh))
        metrics.append(jax.device_get(m))
    host = {what: jax.device_get(getattr(state, what)) for what in ("params", "teacher", "opt_state", "method_state")}
    return metrics, host, shardings


def _assert_close(actual, expected, rtol, atol, what):
    assert jax.tree.structure(actual) == jax.tree.structure(expected), f"{what}: tree structures differ"
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def replicated_run(smoke_config_factory):
    """The tiny DINO smoke config without drop-path (so micro-batches draw no different masks)."""
    config = smoke_config_factory(**{"model.drop_path_rate": 0.0})
    return config, _trajectory(config)


def test_fsdp_equals_replicated(replicated_run, smoke_config_factory):
    """parallel.fsdp=4 (mesh data 2 x fsdp 4): the large parameters and their Adam moments and
    teacher copies are sharded over 4 devices, and 3 steps give the replicated run's
    metrics and state (float32 reduction-order noise)."""
    config, (metrics, state, _) = replicated_run
    fsdp = smoke_config_factory(**{"model.drop_path_rate": 0.0, "parallel.fsdp": 4})
    metrics_fsdp, state_fsdp, shardings = _trajectory(fsdp)

    qkv = shardings.params["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv.spec == P("fsdp", None) and dict(qkv.mesh.shape) == {"data": 2, "fsdp": 4}
    assert shardings.teacher["head"]["last_layer"]["v"].spec == P(None, "fsdp")
    assert shardings.params["backbone"]["norm"]["scale"].spec == P()  # 1-D: replicated
    assert shardings.method_state["center"].spec == P()
    for step in range(STEPS):
        _assert_close(metrics_fsdp[step], metrics[step], 1e-5, 1e-6, f"metrics[{step}]")
    for what in ("params", "teacher", "opt_state", "method_state"):
        _assert_close(state_fsdp[what], state[what], 1e-5, 1e-5, what)


def test_accumulation_equals_large_batch(replicated_run, smoke_config_factory):
    """accum_steps=2 (two micro-batches of 8): the same loss, gradient norm, parameters, Adam
    moments, teacher and DINO center as one batch of 16, step after step."""
    config, (metrics, state, _) = replicated_run
    accum = smoke_config_factory(**{"model.drop_path_rate": 0.0, "accum_steps": 2})
    metrics_accum, state_accum, _ = _trajectory(accum)
    for step in range(STEPS):
        for name in ("loss", "grad_norm", "teacher_entropy", "student_entropy"):
            np.testing.assert_allclose(metrics_accum[step][name], metrics[step][name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} at step {step}")
    for what in ("params", "teacher", "opt_state", "method_state"):
        _assert_close(state_accum[what], state[what], 1e-5, 1e-5, what)


def test_micro_batches_interleave_and_cover_the_batch():
    x = np.arange(12 * 2).reshape(12, 2)
    micro = np.asarray(split_micro_batches(x, 3))
    assert micro.shape == (3, 4, 2)
    np.testing.assert_array_equal(micro[1][:, 0], x[1::3][:, 0])
    assert sorted(micro.reshape(-1, 2)[:, 0].tolist()) == x[:, 0].tolist()


def test_rules_fall_back_to_replicated_where_they_do_not_fit():
    mesh = sharding.make_mesh(4)
    rules = sharding.DEFAULT_RULES
    assert sharding.leaf_spec("params/backbone/blocks_0/fc1/kernel", (16, 64), mesh, rules) == P("fsdp", None)
    assert sharding.leaf_spec("params/backbone/blocks_0/fc1/kernel", (6, 64), mesh, rules) == P()  # 6 % 4
    assert sharding.leaf_spec("params/backbone/layer1_0/conv1/kernel", (3, 3, 8, 16), mesh, rules) == \
        P(None, None, None, "fsdp")
    assert sharding.leaf_spec("params/backbone/blocks_0/fc1/bias", (64,), mesh, rules) == P()
    assert sharding.leaf_spec("opt_state/0/mu/head/last_layer/v", (16, 64), mesh, rules) == P(None, "fsdp")


def test_batch_not_divisible_names_mesh_and_accumulation():
    mesh = sharding.make_mesh(4)
    with pytest.raises(ValueError, match=r"batch_size=24 is not divisible by 2 micro-batches \(accum_steps\) x "
                                         r"the number of devices \(8 = data 2 x fsdp 4\); set --config.batch_size "
                                         r"to a multiple of 16"):
        sharding.check_global_batch(24, mesh, accum_steps=2)
    with pytest.raises(UserError, match="parallel.fsdp=3 does not divide the 8 devices"):
        sharding.make_mesh(3)
    assert NUM_DEVICES == 8


def test_process_settings_from_environment(monkeypatch, smoke_config):
    """SSL_JAX_* variables (local_multiprocess.sh) win over the config; incomplete ones are an error."""
    assert sharding.process_settings(smoke_config) is None
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(sharding.ENV_COORDINATOR, "127.0.0.1:1234")
    monkeypatch.setenv(sharding.ENV_PROCESS_ID, "1")
    assert sharding.process_settings(smoke_config) == {"coordinator_address": "127.0.0.1:1234",
                                                       "num_processes": 2, "process_id": 1}
    monkeypatch.setenv(sharding.ENV_PROCESS_ID, "2")
    with pytest.raises(UserError, match=r"process id 2 is outside \[0, 2\)"):
        sharding.process_settings(smoke_config)
    monkeypatch.delenv(sharding.ENV_COORDINATOR)
    with pytest.raises(UserError, match="SSL_JAX_COORDINATOR"):
        sharding.process_settings(smoke_config)
    monkeypatch.delenv(sharding.ENV_NUM_PROCESSES)
    smoke_config.distributed.num_processes = 4
    with pytest.raises(UserError, match="coordinator_address"):
        sharding.process_settings(smoke_config)
