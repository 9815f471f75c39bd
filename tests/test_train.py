"""The whole program: `python -m ssl_jax.main` end to end, eval mode, exact resume, bad input.

Every run is the smoke preset made tinier by conftest.TINY_OVERRIDES, on 8 virtual CPU
devices and the real CIFAR-10 files. One uninterrupted 6-step run (module fixture) is
shared by the end-to-end, eval-mode and resume tests.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import NUM_DEVICES, make_smoke_config, run_main

TOTAL_STEPS = 6  # smoke: 2 epochs x 3 steps
RESUME_AT = 3
# Metrics that are a function of the computation only (not of wall-clock time).
DETERMINISTIC_METRICS = ("loss", "grad_norm", "center_norm", "teacher_entropy", "student_entropy",
                         "teacher_kl_uniform", "learning_rate", "weight_decay", "teacher_momentum", "teacher_temp")


def _read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_rows(workdir) -> dict[int, dict]:
    return {row["step"]: row for row in _read_metrics(workdir) if row["split"] == "train"}


def _describe(proc) -> str:
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def _one_line_error(proc) -> str:
    """The single error line a handled bad input must end the process with.

    Fails when the process succeeded, printed a traceback, or its message spans several lines.
    """
    assert proc.returncode != 0, _describe(proc)
    assert "Traceback" not in proc.stderr, f"expected a one-line error, got a traceback:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    prefixes = ("error:", "FATAL Flags parsing error:")
    starts = [i for i, line in enumerate(lines) if line.startswith(prefixes)]
    assert len(starts) == 1, f"expected exactly one error line on stderr, got:\n{proc.stderr[-3000:]}"
    trailing = [line for line in lines[starts[0] + 1:] if not line.startswith("Pass --helpshort")]
    assert not trailing, (f"the error message must be one line; {len(trailing)} more line(s) follow it:\n"
                          + "\n".join(lines[starts[0]:starts[0] + 10]))
    return lines[starts[0]]


@pytest.fixture(scope="module")
def smoke_run(tfds_data_dir, tmp_path_factory):
    """One uninterrupted tiny smoke run in a subprocess: (workdir, CompletedProcess)."""
    workdir = tmp_path_factory.mktemp("smoke_run")
    proc = run_main(workdir)
    return workdir, proc


def test_smoke_main_end_to_end(smoke_run):
    """`python -m ssl_jax.main --config=configs/dino_small.py:smoke` trains, logs, checkpoints, evaluates."""
    workdir, proc = smoke_run
    assert proc.returncode == 0, _describe(proc)
    assert "Traceback" not in proc.stderr
    assert f"on {NUM_DEVICES} device(s)" in proc.stdout
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in proc.stdout

    checkpoints = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    assert steps and steps[-1] == TOTAL_STEPS, f"checkpoints/ holds steps {steps}"
    assert steps == [RESUME_AT, TOTAL_STEPS]  # every 3 steps, max_to_keep=2

    rows = _read_metrics(workdir)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, TOTAL_STEPS + 1))  # log_every_steps=1
    for r in train_rows:
        assert math.isfinite(r["loss"]) and r["loss"] > 0, r
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in eval_rows] == [TOTAL_STEPS]
    accuracy = eval_rows[0]["knn_top1@20"]
    assert 0.0 <= accuracy <= 1.0
    assert f"eval step {TOTAL_STEPS}: knn_top1@20={100 * accuracy:.2f}%" in proc.stdout

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model"]["depth"] == 1 and saved["batch_size"] == 16 and saved["dataset"]["name"] == "cifar10"
    assert glob.glob(os.path.join(workdir, "metrics", "events.out.tfevents*")), os.listdir(os.path.join(workdir, "metrics"))


def test_eval_mode_reads_checkpoint(smoke_run, tmp_path):
    """--mode=eval evaluates the latest checkpoint: prints the kNN accuracy the run ended with
    (same teacher weights, same eval data) and writes checkpoints/eval_<step>.json."""
    trained, proc = smoke_run
    assert proc.returncode == 0, _describe(proc)
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    proc = run_main(workdir, "--mode=eval")
    assert proc.returncode == 0, _describe(proc)

    final = [r for r in _read_metrics(trained) if r["split"] == "eval"][-1]["knn_top1@20"]
    assert f"eval step {TOTAL_STEPS}: knn_top1@20={100 * final:.2f}%" in proc.stdout, proc.stdout
    with open(workdir / "checkpoints" / f"eval_{TOTAL_STEPS}.json") as f:
        written = json.load(f)
    assert written["step"] == TOTAL_STEPS
    assert 0.0 <= written["knn_top1@20"] <= 1.0
    assert written["knn_top1@20"] == pytest.approx(final, abs=1e-9)


def _train_first_steps(config, workdir, num_steps):
    """The first `num_steps` of a run through the public pieces the loop uses, saved as a checkpoint
    (stands in for a run killed after its step-`num_steps` checkpoint)."""
    from ssl_jax import sharding, train
    from ssl_jax.checkpoint import Checkpointer
    from ssl_jax.data import pipeline
    from ssl_jax.step import jit_train_step

    run = train.setup(config)
    assert run.total_steps == TOTAL_STEPS  # the schedules are those of the full 6-step run
    checkpointer = Checkpointer(str(workdir), config.checkpoint.every_steps, config.checkpoint.max_to_keep)
    state = train.restore_or_create(config, run, checkpointer)
    assert int(state.step) == 0
    batches = pipeline.train_batches(config, 0, run.steps_per_epoch, run.local_batch)
    step_fn = jit_train_step(run.method, run.tx, run.schedules, run.mesh)
    metrics = []
    for _ in range(num_steps):
        state, m = step_fn(state, sharding.to_global_batch(next(batches), run.mesh))
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    assert checkpointer.save(num_steps, state, force=True)
    checkpointer.wait()
    checkpointer.close()
    return run, state, metrics


def _restore_params(config, run, workdir, step, like):
    from ssl_jax.checkpoint import Checkpointer, abstract_like

    checkpointer = Checkpointer(str(workdir), config.checkpoint.every_steps, config.checkpoint.max_to_keep)
    try:
        return jax.device_get(checkpointer.restore(step, abstract_like(like)))
    finally:
        checkpointer.close()


def test_resume_matches_uninterrupted_run(smoke_run, tmp_path):
    """3 steps, checkpoint, then a fresh `python -m ssl_jax.main` on the same workdir finishes the
    run: its losses at steps 4-6 and final weights equal the uninterrupted run's. Checks the data
    order, the augmentation rng, the schedules and the restored state (params, teacher, centre,
    Adam moments, freezing counters, rng)."""
    straight_dir, proc = smoke_run
    assert proc.returncode == 0, _describe(proc)
    straight = _train_rows(straight_dir)

    config = make_smoke_config()
    workdir = tmp_path / "resumed"
    run, state, first = _train_first_steps(config, workdir, RESUME_AT)
    for step, m in enumerate(first, start=1):  # the in-process steps are the run's first steps
        for key in DETERMINISTIC_METRICS:
            np.testing.assert_allclose(m[key], straight[step][key], rtol=1e-5, err_msg=f"step {step} {key}")

    proc = run_main(workdir)
    assert proc.returncode == 0, _describe(proc)
    assert f"resuming from step {RESUME_AT}" in proc.stdout, proc.stdout
    resumed = _train_rows(workdir)
    assert sorted(resumed) == list(range(RESUME_AT + 1, TOTAL_STEPS + 1)), "the resumed run must log steps 4-6 only"
    for step in resumed:
        for key in DETERMINISTIC_METRICS:
            np.testing.assert_allclose(resumed[step][key], straight[step][key], rtol=1e-5,
                                       err_msg=f"step {step} {key}: resumed vs uninterrupted")

    final_resumed = _restore_params(config, run, workdir, TOTAL_STEPS, state)
    final_straight = _restore_params(config, run, straight_dir, TOTAL_STEPS, state)
    assert int(final_resumed.step) == int(final_straight.step) == TOTAL_STEPS
    for field in ("params", "teacher", "method_state", "opt_state"):
        got, want = getattr(final_resumed, field), getattr(final_straight, field)
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{field}{jax.tree_util.keystr(path)}")
    np.testing.assert_array_equal(jax.random.key_data(final_resumed.rng), jax.random.key_data(final_straight.rng))


# --- bad input: a non-zero exit and one clear line on stderr -------------------------------------


def test_unknown_config_field_is_a_one_line_error(tmp_path):
    """A typo in an override names the field (and the likely intended one), without a traceback."""
    proc = run_main(tmp_path, "--config.optim.lrr=1")
    message = _one_line_error(proc)
    assert "lrr" in message
    assert "did you mean" in message.lower() and '"lr"' in message.replace("'", '"'), message


def test_batch_not_divisible_by_device_count(tfds_data_dir, tmp_path):
    proc = run_main(tmp_path, "--config.batch_size=12")
    message = _one_line_error(proc)
    assert "batch_size=12" in message and f"({NUM_DEVICES})" in message, message
    assert f"--config.batch_size to a multiple of {NUM_DEVICES}" in message, message
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def test_eval_batch_not_divisible_by_device_count_fails_before_training(tfds_data_dir, tmp_path):
    """An eval batch that does not split over the devices must be reported up front, naming
    --config.eval.batch_size, not after the whole training run."""
    proc = run_main(tmp_path, "--config.eval.batch_size=250")
    message = _one_line_error(proc)
    assert "eval.batch_size" in message, f"the message should name --config.eval.batch_size: {message}"
    checkpoints = tmp_path / "checkpoints"
    assert not checkpoints.exists() or not os.listdir(checkpoints), \
        f"training ran before the error: checkpoints {os.listdir(checkpoints)}"


def test_dataset_not_found_names_tfds_data_dir(tmp_path):
    proc = run_main(tmp_path, "--config.dataset.data_dir=/nonexistent")
    message = _one_line_error(proc)
    assert "/nonexistent" in message and "cifar10" in message, message
    assert "TFDS_DATA_DIR" in message and "--config.dataset.data_dir" in message, message


def test_unknown_dataset_name_is_a_one_line_error(tmp_path):
    proc = run_main(tmp_path, "--config.dataset.name=cifar11")
    message = _one_line_error(proc)
    assert "cifar11" in message and "config.dataset.name" in message, message
    assert len(message) < 500, f"message of {len(message)} characters"
