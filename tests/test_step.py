"""The one train step, jitted over a mesh: sharding invariance, purity, EMA teacher, freezing.

No tensorflow: batches are `ssl_jax.core.batch.example_batch` noise of the configured shapes.
One module-scoped 6-step trajectory on the 8-device mesh (one compile) serves most tests.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import NUM_DEVICES, dino_cosine, dino_teacher_temp
from ssl_jax import sharding, train
from ssl_jax.core.batch import example_batch
from ssl_jax.core.step import jit_train_step, jit_train_steps, replicated

STEPS_PER_EPOCH = 3
GLOBAL_BATCH = 16


def _batch(config, step: int) -> dict:
    """The numpy global batch used at `step` (different noise each step)."""
    return example_batch(config.augment, GLOBAL_BATCH, jax.random.key(1000 + step))


def _clone(state):
    """A copy with its own buffers (the jitted step donates its input state)."""
    return jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), state)


def _snapshot(state) -> dict:
    """Host numpy copy of everything in a TrainState (rng as its raw key data)."""
    return {
        "step": int(state.step),
        "params": jax.device_get(state.params),
        "teacher": jax.device_get(state.teacher),
        "method_state": jax.device_get(state.method_state),
        "opt_state": jax.device_get(state.opt_state),
        "rng": np.asarray(jax.random.key_data(state.rng)),
    }


def _assert_trees_close(actual, expected, rtol, atol, what):
    paths_actual = jax.tree_util.tree_flatten_with_path(actual)[0]
    leaves_expected, tree_expected = jax.tree.flatten(expected)
    assert jax.tree.structure(actual) == tree_expected, f"{what}: tree structures differ"
    for (path, a), e in zip(paths_actual, leaves_expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


def _assert_trees_equal(actual, expected, what):
    paths_actual = jax.tree_util.tree_flatten_with_path(actual)[0]
    leaves_expected, tree_expected = jax.tree.flatten(expected)
    assert jax.tree.structure(actual) == tree_expected, f"{what}: tree structures differ"
    for (path, a), e in zip(paths_actual, leaves_expected):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def sharded(smoke_config_factory):
    """The tiny smoke run on all 8 devices: config, Run, jitted step, fresh state and a
    6-step trajectory (2 epochs x 3 steps) of host snapshots and metrics."""
    config = smoke_config_factory()
    run = train.setup(config, steps_per_epoch=STEPS_PER_EPOCH)
    assert run.mesh.devices.size == NUM_DEVICES, "conftest should have forced 8 host devices"
    step_fn = jit_train_step(run.method, run.tx, run.schedules, run.mesh)
    state = train.create_state(config, run)
    initial = _clone(state)
    snapshots, metrics = [_snapshot(state)], []
    for step in range(run.total_steps):
        state, m = step_fn(state, sharding.to_global_batch(_batch(config, step), run.mesh))
        snapshots.append(_snapshot(state))
        metrics.append(jax.device_get(m))
    return dict(config=config, run=run, step_fn=step_fn, initial=initial, snapshots=snapshots, metrics=metrics)


def test_steps_per_call_scans_the_same_steps(sharded):
    """`jit_train_steps` with steps_per_call=3 over batches stacked [3, B, ...] on the 8-device
    mesh: after two calls, the state of six single steps on the same batches, and each step's
    metrics, per step, as the single steps logged them."""
    config, run = sharded["config"], sharded["run"]
    steps_fn = jit_train_steps(run.method, run.tx, run.schedules, run.mesh, steps_per_call=3)
    state, per_step = _clone(sharded["initial"]), []
    for call in range(2):
        batches = sharding.to_global_batches([_batch(config, 3 * call + i) for i in range(3)], run.mesh)
        state, metrics = steps_fn(state, batches)
        metrics = jax.device_get(metrics)
        per_step += [{k: v[i] for k, v in metrics.items()} for i in range(3)]
    for step, (got, want) in enumerate(zip(per_step, sharded["metrics"]), start=1):
        assert sorted(got) == sorted(want), step
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=f"step {step} {key}")
    _assert_trees_close(_snapshot(state), sharded["snapshots"][6], rtol=2e-5, atol=1e-6, what="after 2 calls")


def test_sharded_step_equals_single_device(sharded):
    """3 steps on an 8-device mesh == 3 steps on 1 device, same global batches.

    Not bit-equal: on 8 devices the batch means (loss, centre update) are reduced as a
    sum of 8 per-device partial sums, in a different order than on one device, so they
    differ by float32 rounding; Adam's normalisation m/sqrt(v) can amplify that on
    near-zero gradient entries, hence rtol/atol 1e-5 rather than exact equality.
    """
    config, run8 = sharded["config"], sharded["run"]
    mesh1 = Mesh(np.array(jax.devices()[:1]), ("data",))
    run1 = run8._replace(mesh=mesh1)
    step1 = jit_train_step(run1.method, run1.tx, run1.schedules, mesh1)
    state = train.create_state(config, run1)
    assert len(state.params["head"]["last_layer"]["v"].sharding.device_set) == 1
    initial = _snapshot(state)
    for key in ("params", "teacher", "method_state", "opt_state", "rng"):  # init does not depend on the mesh
        _assert_trees_equal(initial[key], sharded["snapshots"][0][key], what=f"initial {key}")
    metrics1 = []
    for step in range(3):
        state, m = step1(state, sharding.to_global_batch(_batch(config, step), mesh1))
        metrics1.append(jax.device_get(m))
    single, multi = _snapshot(state), sharded["snapshots"][3]

    assert single["step"] == multi["step"] == 3
    np.testing.assert_array_equal(single["rng"], multi["rng"])
    for key in ("params", "teacher", "method_state", "opt_state"):
        _assert_trees_close(single[key], multi[key], rtol=1e-5, atol=1e-5, what=key)
    for step in range(3):
        _assert_trees_close(metrics1[step], sharded["metrics"][step], rtol=1e-5, atol=1e-5,
                            what=f"metrics[step {step}]")


def test_train_step_is_pure(sharded):
    """Same state and batch twice -> bit-identical new state and metrics; step +1; new rng."""
    run, step_fn = sharded["run"], sharded["step_fn"]
    batch = sharding.to_global_batch(_batch(sharded["config"], 0), run.mesh)
    before = _snapshot(sharded["initial"])
    state_a, metrics_a = step_fn(_clone(sharded["initial"]), batch)
    state_b, metrics_b = step_fn(_clone(sharded["initial"]), batch)
    a, b = _snapshot(state_a), _snapshot(state_b)

    for key in ("params", "teacher", "method_state", "opt_state", "rng"):
        _assert_trees_equal(a[key], b[key], what=key)
    _assert_trees_equal(jax.device_get(metrics_a), jax.device_get(metrics_b), what="metrics")
    assert a["step"] == before["step"] + 1 == 1
    assert not np.array_equal(a["rng"], before["rng"]), "the state's rng must be split every step"
    # And the module trajectory, produced by the same step, agrees with it.
    _assert_trees_equal(a["params"], sharded["snapshots"][1]["params"], what="params vs trajectory")
    # The state the clones came from is untouched (the step only donates its own argument).
    _assert_trees_equal(_snapshot(sharded["initial"])["params"], before["params"], what="initial params")


def _momentum_closed_form(config, total_steps: int) -> np.ndarray:
    """DINO's teacher momentum per step, float64: cosine_scheduler(momentum_teacher, 1, ...)."""
    return dino_cosine(config.optim.teacher_momentum, config.optim.teacher_momentum_end, total_steps)


def test_teacher_is_ema_of_student(sharded):
    """After each step i: teacher == m_i * teacher_old + (1 - m_i) * params_new, leaf by leaf, with m_i
    from the reference's closed form (not from the step's own schedule object).

    A fresh state's teacher is a copy of the student and DINO's warm-up gives lr(0) = 0, so
    there teacher_old == params_new and any m would pass. Step 0 is therefore also taken from
    a state whose teacher has been moved away from the student (teacher_old = 0.5 * params
    + 0.01): then a wrong momentum (even m_1 instead of m_0) is off by ~1e-4 relative.
    The trajectory's steps 1-5 (teacher and student apart by the lr-sized updates) are checked
    the same way, so a schedule shifted by one step fails at each of them.
    """
    config, run, step_fn = sharded["config"], sharded["run"], sharded["step_fn"]
    momentum = _momentum_closed_form(config, run.total_steps)
    assert np.all(np.diff(momentum) > 1e-5), "the test needs a momentum that changes every step"
    initial = sharded["initial"]
    teacher_old = jax.tree.map(lambda p: 0.5 * np.asarray(p) + np.float32(0.01), jax.device_get(initial.params))
    state = _clone(initial).replace(teacher=jax.device_put(teacher_old, replicated(run.mesh)))
    new, metrics = step_fn(state, sharding.to_global_batch(_batch(config, 0), run.mesh))
    new = _snapshot(new)
    m = np.float32(momentum[0])
    np.testing.assert_allclose(float(metrics["teacher_momentum"]), m, rtol=1e-7)
    t_old = jax.tree_util.tree_flatten_with_path(teacher_old)[0]
    t_new, p_new = jax.tree.leaves(new["teacher"]), jax.tree.leaves(new["params"])
    assert len(t_old) == len(t_new) == len(p_new)
    for (path, to), tn, pn in zip(t_old, t_new, p_new):
        np.testing.assert_allclose(tn, m * to + (np.float32(1) - m) * pn, rtol=1e-6, atol=1e-7,
                                   err_msg=f"teacher{jax.tree_util.keystr(path)}")

    snapshots = sharded["snapshots"]
    for step in range(1, run.total_steps):
        old, after = snapshots[step], snapshots[step + 1]
        m = np.float32(momentum[step])
        for to, tn, pn in zip(jax.tree.leaves(old["teacher"]), jax.tree.leaves(after["teacher"]),
                              jax.tree.leaves(after["params"])):
            np.testing.assert_allclose(tn, m * to + (np.float32(1) - m) * pn, rtol=1e-6, atol=1e-7,
                                       err_msg=f"teacher after step {step}")


def test_every_schedule_at_every_step_equals_dino_closed_form(sharded):
    """The lr, weight decay, teacher momentum and teacher temperature the step reports at each of
    the 6 steps equal main_dino.py's schedules (float64 closed forms, conftest.dino_cosine):
    lr warm-up from 0 over `warmup_epochs` then cosine to min_lr (peak lr * batch / 256), wd
    cosine from weight_decay to weight_decay_end, momentum cosine to 1, teacher temperature
    warmed up per epoch (the step's i-th call is the reference's iteration `it` = i)."""
    config, run = sharded["config"], sharded["run"]
    o, total, spe = config.optim, run.total_steps, run.steps_per_epoch
    peak = o.lr * GLOBAL_BATCH / 256
    want = {
        "learning_rate": dino_cosine(peak, o.min_lr, total, o.warmup_epochs * spe),
        "weight_decay": dino_cosine(o.weight_decay, o.weight_decay_end, total),
        "teacher_momentum": _momentum_closed_form(config, total),
        "teacher_temp": dino_teacher_temp(config.method.warmup_teacher_temp, config.method.teacher_temp,
                                          config.method.warmup_teacher_temp_epochs, total, spe),
    }
    for key, values in want.items():
        assert len(set(np.round(values, 12))) > 1, f"{key} is constant in this run: the check would be weak"
        got = [float(m[key]) for m in sharded["metrics"]]
        np.testing.assert_allclose(got, values, rtol=1e-6, atol=1e-12, err_msg=key)


def test_nonfinite_step_changes_only_step_and_rng(sharded):
    """A NaN batch (NaN loss and gradients) goes through `lax.cond`'s identity branch: params,
    optimiser state, teacher and center are bit for bit the old ones, the step counter and rng
    move on, and the metric `nonfinite` is 1 (0 on the trajectory's finite steps)."""
    config, run, step_fn = sharded["config"], sharded["run"], sharded["step_fn"]
    state = _clone(sharded["initial"])
    before = _snapshot(state)
    nan_batch = jax.tree.map(lambda x: np.full_like(x, np.nan), _batch(config, 0))
    new, metrics = step_fn(state, sharding.to_global_batch(nan_batch, run.mesh))
    after = _snapshot(new)
    assert np.isnan(float(metrics["loss"])) and float(metrics["nonfinite"]) == 1.0
    for key in ("params", "teacher", "method_state", "opt_state"):
        _assert_trees_equal(after[key], before[key], what=key)
    assert after["step"] == before["step"] + 1 and not np.array_equal(after["rng"], before["rng"])
    assert [float(m["nonfinite"]) for m in sharded["metrics"]] == [0.0] * run.total_steps


def test_last_layer_frozen_in_first_epoch(sharded):
    """freeze_epochs=1, 3 steps/epoch: head/last_layer is unchanged by steps 0-2 and changes
    at step 3 (the 4th), while the backbone and the rest of the head change at every step
    with lr > 0 (lr(0) = 0 by DINO's linear warm-up from 0, so step 0 moves nothing)."""
    config, run, snapshots = sharded["config"], sharded["run"], sharded["snapshots"]
    assert config.optim.freeze_epochs == 1 and run.steps_per_epoch == 3
    assert "head/last_layer/" in config.optim.freeze_patterns

    def last_layer(i):
        return snapshots[i]["params"]["head"]["last_layer"]

    def changed(a, b):
        return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    for i in range(1, 4):
        _assert_trees_equal(last_layer(i), last_layer(0), what=f"last_layer after {i} steps")
    assert changed(last_layer(4), last_layer(3)), "last_layer must train from step 3 (epoch 1) on"
    assert changed(last_layer(5), last_layer(4))

    for step in range(run.total_steps):
        lr = float(run.schedules.learning_rate(step))
        before, after = snapshots[step]["params"], snapshots[step + 1]["params"]
        if lr == 0.0:
            assert step == 0
            continue
        assert changed(after["backbone"], before["backbone"]), f"backbone unchanged at step {step}"
        for name in after["backbone"]:
            assert changed(after["backbone"][name], before["backbone"][name]), f"backbone/{name} unchanged at step {step}"
        head_rest = {k: v for k, v in after["head"].items() if k != "last_layer"}
        head_rest_before = {k: v for k, v in before["head"].items() if k != "last_layer"}
        assert changed(head_rest, head_rest_before), f"head (not last_layer) unchanged at step {step}"
