"""The whole program: `python -m ssl_jax.main` end to end, eval mode, exact resume, bad input.

Every run is the smoke preset made tinier by conftest.TINY_OVERRIDES (with RNG_OVERRIDES:
drop-path on, so the step's rng shows in the losses), on 8 virtual CPU devices and the real
CIFAR-10 files. One uninterrupted 6-step run (module fixture) is
shared by the end-to-end, eval-mode and resume tests; the resume test restarts a fresh
process from that run's step-3 checkpoint, as if the run had been killed right after it.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import warnings

import jax
import numpy as np
import pytest

from conftest import NUM_DEVICES, RNG_OVERRIDES, dino_cosine, dino_teacher_temp, finish, make_smoke_config, start_main

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


# Independent subprocesses start together (module fixture `launched`) and each test waits for
# its own: on 2 cores, most of each process is importing tensorflow/jax, which overlaps well.
BAD_INPUTS = {
    "unknown_field": ["--config.optim.lrr=1"],
    "batch": ["--config.batch_size=12"],
    "eval_batch": ["--config.eval.batch_size=250"],
    "data_dir": ["--config.dataset.data_dir=/nonexistent"],
    "dataset_name": ["--config.dataset.name=cifar11"],
    "steps_per_call": ["--config.steps_per_call=4"],  # the tiny smoke run logs every step
}
# The smoke run again, 4 steps per compiled call: steps 1-4 in one call, 5 and 6 one by one.
CHUNKED = ["--config.steps_per_call=4", "--config.log_every_steps=4", "--config.checkpoint.every_steps=4"]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """{name: (workdir, Popen)}: the uninterrupted smoke run, its steps_per_call=4 twin and every
    bad-input run, started at once."""
    runs = {}
    for name, args in {"smoke": [], "chunked": CHUNKED, **BAD_INPUTS}.items():
        workdir = tmp_path_factory.mktemp(name)
        runs[name] = (workdir, start_main(workdir, *args, **RNG_OVERRIDES))
    yield runs
    for _, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def smoke_run(tfds_data_dir, launched):
    """One uninterrupted tiny smoke run (6 steps, checkpoints at 3 and 6): (workdir, CompletedProcess)."""
    workdir, proc = launched["smoke"]
    return workdir, finish(proc)


@pytest.fixture(scope="module")
def followups(smoke_run, tmp_path_factory):
    """Started together once the smoke run is done:
    'eval': --mode=eval on a copy of the finished run;
    'resume': a fresh training process on a workdir holding only the run's step-3 checkpoint,
    i.e. the run as it is when killed after writing that checkpoint."""
    trained, proc = smoke_run
    assert proc.returncode == 0, _describe(proc)
    eval_dir = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(trained, eval_dir)
    resume_dir = tmp_path_factory.mktemp("resume")
    shutil.copytree(trained / "checkpoints" / str(RESUME_AT), resume_dir / "checkpoints" / str(RESUME_AT))
    runs = {"eval": (eval_dir, start_main(eval_dir, "--mode=eval", **RNG_OVERRIDES)),
            "resume": (resume_dir, start_main(resume_dir, **RNG_OVERRIDES))}
    yield runs
    for _, p in runs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_smoke_main_end_to_end(smoke_run):
    """`python -m ssl_jax.main --config=configs/dino_small.py:smoke` trains, logs, checkpoints, evaluates."""
    workdir, proc = smoke_run
    assert proc.returncode == 0, _describe(proc)
    assert "Traceback" not in proc.stderr
    assert f"on {NUM_DEVICES} device(s)" in proc.stdout
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in proc.stdout

    checkpoints = os.path.join(workdir, "checkpoints")
    entries = os.listdir(checkpoints)
    steps = sorted(int(d) for d in entries if d.isdigit())
    assert steps and steps[-1] == TOTAL_STEPS, f"checkpoints/ holds {entries}"
    assert RESUME_AT in steps, f"checkpoint.every_steps=3 should have saved step 3: {entries}"
    assert not [d for d in entries if "tmp" in d], f"unfinished checkpoint left: {entries}"

    rows = _read_metrics(workdir)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, TOTAL_STEPS + 1))  # log_every_steps=1
    assert all(math.isfinite(r["loss"]) for r in train_rows), train_rows
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in eval_rows] == [TOTAL_STEPS]
    accuracy = eval_rows[0]["knn_top1@20"]
    assert accuracy > 0.1, "kNN at chance (10 classes): see test_knn.py for the pipeline on known answers"
    assert f"eval step {TOTAL_STEPS}: knn_top1@20={100 * accuracy:.2f}%" in proc.stdout

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model"]["depth"] == 2 and saved["batch_size"] == 16 and saved["dataset"]["name"] == "cifar10"
    assert glob.glob(os.path.join(workdir, "metrics", "events.out.tfevents*")), os.listdir(os.path.join(workdir, "metrics"))


def test_logged_schedules_equal_dino_closed_form_at_every_step(smoke_run):
    """The lr, weight decay, teacher momentum and teacher temperature logged at steps 1-6 equal
    main_dino.py's schedules at its iteration it = step - 1 (float64 closed forms in conftest):
    a schedule read one step early or late fails here."""
    workdir, _ = smoke_run
    config, total, spe = make_smoke_config(**RNG_OVERRIDES), TOTAL_STEPS, TOTAL_STEPS // 2
    o, m = config.optim, config.method
    want = {
        "learning_rate": dino_cosine(o.lr * config.batch_size / 256, o.min_lr, total, o.warmup_epochs * spe),
        "weight_decay": dino_cosine(o.weight_decay, o.weight_decay_end, total),
        "teacher_momentum": dino_cosine(o.teacher_momentum, o.teacher_momentum_end, total),
        "teacher_temp": dino_teacher_temp(m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs,
                                          total, spe),
    }
    rows = _train_rows(workdir)
    for key, values in want.items():
        np.testing.assert_allclose([rows[step][key] for step in range(1, total + 1)], values, rtol=1e-6,
                                   atol=1e-12, err_msg=key)


def test_eval_mode_reads_checkpoint(smoke_run, followups):
    """--mode=eval evaluates the latest checkpoint: prints the kNN accuracy the run ended with
    (same teacher weights, same eval data) and writes checkpoints/eval_<step>.json."""
    trained, _ = smoke_run
    workdir, proc = followups["eval"]
    proc = finish(proc)
    assert proc.returncode == 0, _describe(proc)

    final = [r for r in _read_metrics(trained) if r["split"] == "eval"][-1]["knn_top1@20"]
    assert f"eval step {TOTAL_STEPS}: knn_top1@20={100 * final:.2f}%" in proc.stdout, proc.stdout
    with open(workdir / "checkpoints" / f"eval_{TOTAL_STEPS}.json") as f:
        written = json.load(f)
    assert written["step"] == TOTAL_STEPS
    assert written["knn_top1@20"] == pytest.approx(final, abs=1e-9)


def _restore_raw(workdir, step) -> dict:
    """A checkpoint as saved (nested dicts of arrays), without building the model."""
    import orbax.checkpoint as ocp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sharding info not provided when restoring"
        return jax.device_get(ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "default")))


def test_resume_matches_uninterrupted_run(smoke_run, followups):
    """A fresh `python -m ssl_jax.main` given only the step-3 checkpoint finishes the run exactly as
    the uninterrupted run did: same losses (and every other computed metric) at steps 4-6 and same
    final state. Checks the data order and augmentation rng after a restart, the schedules, and the
    restored state (params, teacher, centre, Adam moments, freezing counters, rng)."""
    straight_dir, _ = smoke_run
    workdir, proc = followups["resume"]
    proc = finish(proc)
    assert proc.returncode == 0, _describe(proc)
    assert f"resuming from step {RESUME_AT}" in proc.stdout, proc.stdout

    straight, resumed = _train_rows(straight_dir), _train_rows(workdir)
    assert sorted(resumed) == list(range(RESUME_AT + 1, TOTAL_STEPS + 1)), "the resumed run must log steps 4-6 only"
    for step in resumed:
        for key in DETERMINISTIC_METRICS:
            np.testing.assert_allclose(resumed[step][key], straight[step][key], rtol=1e-5,
                                       err_msg=f"step {step} {key}: resumed vs uninterrupted")

    _assert_states_close(workdir, straight_dir, TOTAL_STEPS)


def _assert_states_close(got_dir, want_dir, step):
    """The two workdirs' step-`step` checkpoints hold the same state (rng bit for bit)."""
    got, want = _restore_raw(got_dir, step), _restore_raw(want_dir, step)
    assert int(got["step"]) == int(want["step"]) == step
    np.testing.assert_array_equal(jax.random.key_data(got["rng"]), jax.random.key_data(want["rng"]))
    for field in ("params", "teacher", "method_state", "opt_state"):
        assert jax.tree.structure(got[field]) == jax.tree.structure(want[field]), field
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got[field])[0], jax.tree.leaves(want[field])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{field}{jax.tree_util.keystr(path)}")


def test_steps_per_call_trains_the_same_steps(smoke_run, launched):
    """--config.steps_per_call=4 (steps 1-4 in one `lax.scan` call over stacked batches, sharded
    over the 8 devices; steps 5-6 single) ends in the state of the one-step-per-call run: the same
    batches in the same order, the same schedules, the same rng splits. Its step-4 log row averages
    the four steps of the call."""
    straight_dir, _ = smoke_run
    workdir, proc = launched["chunked"]
    proc = finish(proc)
    assert proc.returncode == 0, _describe(proc)
    assert "4 steps per call" in proc.stdout, proc.stdout
    _assert_states_close(workdir, straight_dir, TOTAL_STEPS)
    rows, straight = _train_rows(workdir), _train_rows(straight_dir)
    assert sorted(rows) == [4, 6], rows
    # the straight run logs every step
    for row, steps in ((4, (1, 2, 3, 4)), (6, (5, 6))):
        for key in ("loss", "grad_norm", "learning_rate"):
            np.testing.assert_allclose(rows[row][key], np.mean([straight[s][key] for s in steps]), rtol=1e-5,
                                       err_msg=f"{key} logged at step {row}")


# --- bad input: a non-zero exit and one clear line on stderr -------------------------------------


def _bad_input(launched, name) -> tuple[object, subprocess.CompletedProcess]:
    workdir, proc = launched[name]
    return workdir, finish(proc)


def test_unknown_config_field_is_a_one_line_error(launched):
    """A typo in an override (--config.optim.lrr=1) names the field and the likely intended one,
    without a traceback."""
    _, proc = _bad_input(launched, "unknown_field")
    message = _one_line_error(proc)
    assert "lrr" in message
    assert "did you mean" in message.lower() and '"lr"' in message.replace("'", '"'), message


def test_batch_not_divisible_by_device_count(launched):
    """--config.batch_size=12 on 8 devices stops before any work, saying what to set."""
    workdir, proc = _bad_input(launched, "batch")
    message = _one_line_error(proc)
    assert "batch_size=12" in message and f"({NUM_DEVICES})" in message, message
    assert f"--config.batch_size to a multiple of {NUM_DEVICES}" in message, message
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")


def test_eval_batch_not_divisible_by_device_count_names_eval_batch_size_and_loses_no_checkpoint(
        tfds_data_dir, launched):
    """--config.eval.batch_size=250 on 8 devices: a one-line error naming --config.eval.batch_size.
    Best reported before training; if training did run, its final checkpoint must be on disk
    (not left as an unfinished *.orbax-checkpoint-tmp)."""
    workdir, proc = _bad_input(launched, "eval_batch")
    message = _one_line_error(proc)
    assert "eval.batch_size" in message, f"the message should name --config.eval.batch_size: {message}"
    checkpoints = workdir / "checkpoints"
    entries = sorted(os.listdir(checkpoints)) if checkpoints.exists() else []
    assert not [e for e in entries if "tmp" in e], f"unfinished checkpoint left behind: {entries}"
    steps = [int(e) for e in entries if e.isdigit()]
    assert not steps or max(steps) == TOTAL_STEPS, f"training ran but its final checkpoint is missing: {entries}"


def test_steps_per_call_not_dividing_the_log_interval(launched):
    """--config.steps_per_call=4 with log_every_steps=1: the loop sees the state only between
    calls, so it stops before training, naming both fields and the fix."""
    workdir, proc = _bad_input(launched, "steps_per_call")
    message = _one_line_error(proc)
    assert "log_every_steps=1 is not a multiple of steps_per_call=4" in message, message
    assert "--config.log_every_steps to a multiple of 4" in message, message
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")


def test_dataset_not_found_names_tfds_data_dir(launched):
    """--config.dataset.data_dir=/nonexistent: says where it looked and how to point tfds elsewhere.
    (With config.dataset.download=False, from TINY_OVERRIDES: offline, the default download
    attempt retries for minutes before it fails with the same advice.)"""
    _, proc = _bad_input(launched, "data_dir")
    message = _one_line_error(proc)
    assert "/nonexistent" in message and "cifar10" in message, message
    assert "TFDS_DATA_DIR" in message and "--config.dataset.data_dir" in message, message


def test_unknown_dataset_name_is_a_one_line_error(launched):
    """--config.dataset.name=cifar11: one line naming the name and the config field (not tfds'
    list of every registered dataset)."""
    _, proc = _bad_input(launched, "dataset_name")
    message = _one_line_error(proc)
    assert "cifar11" in message and "config.dataset.name" in message, message
    assert len(message) < 500, f"message of {len(message)} characters"
