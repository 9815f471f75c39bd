"""Fault injection: preemption, kill -9, damaged checkpoints, config changes, NaN/Inf, collapse, bad input.

The centre is a *campaign* (module fixture), run as a user would with
`python -m ssl_jax.main` on the tiny smoke config with a checkpoint after every step
(so kills in the loop land inside an asynchronous checkpoint write), on two workdirs
at once (one per core):
  A: SIGTERM mid-run -> KILLS // 2 x `kill -9` (in start-up, at a random moment of the
     training loop, or as soon as a checkpoint write is under way), each followed by a
     restart -> a config change (refused) -> a changed shape (refused) -> a truncated
     and a removed checkpoint file (refused) -> --restore_fallback, which finishes.
  B: the other kills, then a plain restart that finishes.
Every metric either run logged on the way, including steps computed twice around a
kill, must equal an uninterrupted run's bit for bit. The campaign prints its table
(`python -m pytest -q -s tests/test_reliability.py -k campaign`), which is the README's.
NaN/Inf, collapse and data errors run in-process or as short processes beside it.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import pytest

from conftest import RNG_OVERRIDES, make_smoke_config, start_main

EPOCHS, STEPS_PER_EPOCH = 8, 3
TOTAL = EPOCHS * STEPS_PER_EPOCH
# Same for the uninterrupted run and every process of the campaign: a checkpoint after each
# step (each one an asynchronous write a kill can interrupt), enough kept to fall back twice.
# RNG_OVERRIDES: the step's rng (drop-path) reaches every logged loss, so a restart with the wrong
# rng cannot match the uninterrupted run.
CAMPAIGN = {"num_epochs": EPOCHS, "checkpoint.every_steps": 1, "checkpoint.max_to_keep": 5, **RNG_OVERRIDES}
# 6 in CI (the suite's time budget): each chain kills once at each of KILL_MOMENTS, so every moment
# is hit twice; SSL_JAX_CAMPAIGN_KILLS=20 gave docs/RELIABILITY.md's table.
KILLS = int(os.environ.get("SSL_JAX_CAMPAIGN_KILLS", "6"))
KILL_MOMENTS = ("start-up", "training loop", "checkpoint write")
DETERMINISTIC = ("loss", "grad_norm", "center_norm", "teacher_entropy", "student_entropy", "teacher_kl_uniform",
                 "learning_rate", "weight_decay", "teacher_momentum", "teacher_temp")


class Process:
    """A `start_main` process whose stdout is read line by line as it comes."""

    def __init__(self, workdir, *args, **overrides):
        self.popen = start_main(workdir, *args, **overrides)
        self.started = time.time()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match | None:
        """The first stdout line matching `pattern`, or None if the process ends (or times out) first."""
        regex, deadline = re.compile(pattern), time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.popen.poll() is not None and not self._reader.is_alive():
                return None
            time.sleep(0.02)
        return None

    def output(self) -> str:
        """What it printed so far, and its stderr once it has ended (for assertion messages)."""
        stderr = self.popen.stderr.read() if self.popen.poll() is not None else ""
        return "\n".join(self.lines[-20:]) + "\n--- stderr ---\n" + stderr[-3000:]

    def finish(self, timeout: float = 900) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once it has ended."""
        try:
            stderr = self.popen.stderr.read() if self.popen.wait(timeout) is not None else ""
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"ran over {timeout}s:\n" + "\n".join(self.lines[-20:]))
        self._reader.join(10)
        return self.popen.returncode, "\n".join(self.lines), stderr


def checkpoint_entries(workdir) -> list[str]:
    directory = os.path.join(workdir, "checkpoints")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def complete_steps(workdir) -> list[int]:
    """Steps with a finished checkpoint (orbax renames the temporary directory when done)."""
    return sorted(int(e) for e in checkpoint_entries(workdir) if e.isdigit())


def snapshot(workdir) -> dict:
    """Every file under the workdir with its size and mtime: what 'untouched' compares. Left out:
    metrics/, and orbax's temporary directories of writes a kill interrupted (never a checkpoint;
    every start removes them)."""
    files = {}
    for root, _, names in os.walk(workdir):
        if os.path.relpath(root, workdir).startswith("metrics") or "orbax-checkpoint-tmp" in root:
            continue
        for name in names:
            stat = os.stat(os.path.join(root, name))
            files[os.path.relpath(os.path.join(root, name), workdir)] = (stat.st_size, stat.st_mtime_ns)
    return files


def train_rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics", "metrics.jsonl")) as f:
        return [row for row in map(json.loads, filter(str.strip, f)) if row["split"] == "train"]


def one_error_line(code: int, stderr: str) -> str:
    """The single `error: ...` line a handled failure ends with (no traceback, nothing after it)."""
    assert code == 1, f"exit code {code}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith(("error:", "FATAL Flags parsing error:"))]
    assert len(errors) == 1 and errors[0] == len(lines) - 1 or (
        len(errors) == 1 and lines[-1].startswith("Pass --helpshort")), stderr[-3000:]
    return lines[errors[0]]


def resumed_from(stdout: str) -> int:
    match = re.search(r"resuming from step (\d+)|starting from scratch", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1) or 0)


# --- the campaign --------------------------------------------------------------------------------


def _kill_chain(workdir, kills: int, rng: random.Random, events: list) -> None:
    """`kills` times: start the run on `workdir`, `kill -9` it, record what is on disk. The moments
    cycle through KILL_MOMENTS: a random 0.5-5 s after launch (anywhere in start-up: the process
    is forked with its libraries imported, tests/main_process.py, so start-up is the backend, the
    data and the compiles), a random 0-4 s after the process's first logged step, and the moment
    an orbax temporary directory appears after that step (inside an asynchronous checkpoint write)."""
    for i in range(kills):
        before, entries_before = complete_steps(workdir), set(checkpoint_entries(workdir))
        if before and before[-1] == TOTAL:
            return  # the run got to its end between the kills
        proc = Process(workdir, **CAMPAIGN)
        where = KILL_MOMENTS[i % len(KILL_MOMENTS)]
        if where == "start-up":
            time.sleep(rng.uniform(0.5, 5.0))
        else:
            assert proc.wait_for(r"^step \d+/"), proc.output()
            if where == "training loop":
                time.sleep(rng.uniform(0.0, 4.0))
            else:
                deadline = time.time() + 60
                while time.time() < deadline and proc.popen.poll() is None and not any(
                        "tmp" in e for e in set(checkpoint_entries(workdir)) - entries_before):
                    time.sleep(0.005)
        proc.popen.kill()
        proc.popen.wait()
        out = "\n".join(proc.lines)
        new_entries = set(checkpoint_entries(workdir)) - entries_before
        logged = [int(m) for m in re.findall(r"^step (\d+)/", out, re.M)]
        events.append(dict(fault=f"kill -9 in {where}", code=proc.popen.returncode, stdout=out,
                           complete_before=before, complete=complete_steps(workdir),
                           mid_write=any("tmp" in e for e in new_entries), last_logged=max(logged, default=None)))
        proc.finish()


def _finish(workdir, events: list, fault: str, *args) -> None:
    code, out, err = Process(workdir, *args, **CAMPAIGN).finish()
    events.append(dict(fault=fault, code=code, stdout=out, stderr=err, complete=complete_steps(workdir)))


def _chain_b(workdir, events: list, errors: list) -> None:
    """The second chain: kills, then an ordinary restart that finishes the run (errors kept for the fixture)."""
    try:
        _kill_chain(workdir, KILLS - KILLS // 2, random.Random(9), events)
        _finish(workdir, events, "restart")
    except BaseException as e:  # noqa: BLE001 - re-raised in the fixture's thread
        errors.append(e)


@pytest.fixture(scope="module")
def campaign(tfds_data_dir, tmp_path_factory):
    """Two workdirs interrupted in parallel (one per core) beside the uninterrupted reference run.

    Chain A: SIGTERM, KILLS // 2 kills, refusals, damaged checkpoints, --restore_fallback.
    Chain B: the other kills, then an ordinary restart. Returns the workdirs and their events.
    """
    reference_dir = tmp_path_factory.mktemp("reference")
    reference = Process(reference_dir, **CAMPAIGN)
    chains = {name: (tmp_path_factory.mktemp(f"chain_{name}"), []) for name in "AB"}
    errors_b = []
    thread_b = threading.Thread(target=_chain_b, args=(*chains["B"], errors_b), daemon=True)
    thread_b.start()
    workdir, events = chains["A"]

    # 1. SIGTERM once four steps are logged (so that three checkpoints exist for step 4).
    proc = Process(workdir, **CAMPAIGN)
    assert proc.wait_for(r"^step 4/"), proc.output()
    proc.popen.send_signal(signal.SIGTERM)
    code, out, err = proc.finish()
    logged = [int(m) for m in re.findall(r"^step (\d+)/", out, re.M)]
    events.append(dict(fault="SIGTERM after step 4 was logged", code=code, stdout=out, stderr=err,
                       last_logged=max(logged), complete=complete_steps(workdir)))

    # 2. kill -9 at random moments.
    _kill_chain(workdir, KILLS // 2, random.Random(8), events)

    def refused(fault, *args, damage=None, **overrides):
        if damage:
            damage()
        before = snapshot(workdir)
        code, out, err = Process(workdir, *args, **{**CAMPAIGN, **overrides}).finish()
        events.append(dict(fault=fault, code=code, stdout=out, stderr=err, untouched=snapshot(workdir) == before,
                           complete=complete_steps(workdir)))

    def plant_temporary_directory():  # what a kill inside a write leaves: the refusing run removes it first
        newest = complete_steps(workdir)[-1]
        shutil.copytree(os.path.join(workdir, "checkpoints", str(newest)),
                        os.path.join(workdir, "checkpoints", f"{newest + 1}.orbax-checkpoint-tmp-1"))

    # 3. Resume with a changed config (beside a left-over temporary directory), then with a changed
    #    shape (allowed, so the restore checks it).
    refused("resume with --config.optim.lr changed", damage=plant_temporary_directory, **{"optim.lr": 0.002})
    refused("resume with method.out_dim changed, --allow_config_change", "--allow_config_change",
            **{"method.out_dim": 64})

    # 4. Damage the two newest checkpoints: truncate every array file of the newest, remove the
    #    metadata of the one before.
    assert len(complete_steps(workdir)) >= 3, f"the kills left too few checkpoints: {checkpoint_entries(workdir)}"
    newest, previous = complete_steps(workdir)[-1], complete_steps(workdir)[-2]

    def damage():
        for root, _, names in os.walk(os.path.join(workdir, "checkpoints", str(newest))):
            for name in names:
                if os.sep + "d" in root:  # ocdbt data files
                    path = os.path.join(root, name)
                    os.truncate(path, os.path.getsize(path) // 2)
        os.remove(os.path.join(workdir, "checkpoints", str(previous), "default", "_METADATA"))

    refused(f"array files of checkpoint {newest} truncated, _METADATA of {previous} removed", damage=damage)

    # 5. --restore_fallback sets both aside and finishes the run.
    _finish(workdir, events, "resume with --restore_fallback", "--restore_fallback")
    events[-1]["damaged"] = (newest, previous)

    thread_b.join(600)
    if errors_b:
        raise errors_b[0]
    code, out, err = reference.finish()
    assert code == 0, err[-3000:]
    return dict(chains=chains, reference=reference_dir, reference_stdout=out)


def _resumes(events: list) -> list[int | None]:
    """For each event, the step the next process that got that far resumed from; None when the next
    processes that did were refused or resumed after deliberate damage (their own tests check them)."""
    steps = [int(m.group(1) or 0) if (m := re.search(r"resuming from step (\d+)|starting from scratch",
                                                     e["stdout"])) else None for e in events]
    resumes = []
    for i in range(len(events)):
        later = [j for j in range(i + 1, len(events))
                 if steps[j] is not None or not events[j]["fault"].startswith("kill")]
        resumes.append(steps[later[0]] if later and events[later[0]]["fault"].startswith(("kill", "restart")) else None)
    return resumes


def _kills(campaign) -> list[tuple[dict, int]]:
    """(kill event, where the run resumed) over both chains."""
    return [(event, resumed) for workdir, events in campaign["chains"].values()
            for event, resumed in zip(events, _resumes(events)) if event["fault"].startswith("kill")]


def test_campaign_sigterm_stops_after_the_step_with_a_checkpoint(campaign):
    """SIGTERM: exit 0 with a message, a checkpoint of the last finished step, resumed from exactly there."""
    events = campaign["chains"]["A"][1]
    event, resumed = events[0], _resumes(events)[0]
    assert event["code"] == 0, event["stderr"][-3000:]
    match = re.search(r"SIGTERM: stopped after step (\d+) of \d+ with a checkpoint", event["stdout"])
    assert match, event["stdout"][-2000:]
    stopped = int(match.group(1))
    assert stopped >= event["last_logged"] >= 4
    assert event["complete"][-1] == stopped and resumed == stopped  # no finished step lost


def test_campaign_kill9_resumes_from_last_complete_checkpoint(campaign):
    """After each kill -9 the next run resumes from the newest complete checkpoint on disk, never
    from less than existed before the kill; the kills aimed at a checkpoint write landed inside one."""
    kills = _kills(campaign)
    assert len(kills) >= KILLS and sum(resumed is not None for _, resumed in kills) >= KILLS - 2
    for event, resumed in kills:
        assert event["code"] == -signal.SIGKILL
        if resumed is None:  # the last kill of chain A: the refusals after it name its newest checkpoint
            continue
        assert resumed == (event["complete"][-1] if event["complete"] else 0), event["fault"]
        assert not event["complete_before"] or resumed >= event["complete_before"][-1], event["fault"]
    aimed = [event for event, _ in kills if event["fault"].endswith("checkpoint write")]
    landed = sum(event["mid_write"] for event in aimed)
    assert landed >= max(1, len(aimed) // 2), f"{landed} of {len(aimed)} aimed kills landed inside a checkpoint write"


def test_campaign_refusals_name_the_problem_and_touch_nothing(campaign):
    """A changed config, a changed shape and damaged checkpoints: one line each, nothing written."""
    lr, shape, damaged = campaign["chains"]["A"][1][-4:-1]
    for event in (lr, shape, damaged):
        assert event["untouched"], event["fault"]
    message = one_error_line(lr["code"], lr["stderr"])
    assert "optim.lr: 0.001 -> 0.002" in message and "--allow_config_change" in message, message
    message = one_error_line(shape["code"], shape["stderr"])
    newest = shape["complete"][-1]
    assert f"checkpoint step {newest}" in message and "does not fit the config" in message, message
    assert "(16, 32) in the checkpoint but (16, 64) in the config" in message, message
    message = one_error_line(damaged["code"], damaged["stderr"])
    assert f"checkpoint step {newest}" in message and "incomplete or corrupt" in message, message
    assert "--restore_fallback" in message, message


def test_campaign_fallback_sets_damaged_checkpoints_aside_and_finishes(campaign):
    """--restore_fallback moves (never deletes) both damaged checkpoints and resumes from the third newest."""
    workdir, events = campaign["chains"]["A"]
    event = events[-1]
    assert event["code"] == 0, event["stderr"][-3000:]
    newest, previous = event["damaged"]
    assert sorted(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == sorted([str(newest), str(previous)])
    assert int(re.search(r"resuming from step (\d+)", event["stdout"]).group(1)) < previous
    assert f"step {TOTAL}/{TOTAL}" in event["stdout"] and event["complete"][-1] == TOTAL


def test_campaign_losses_equal_uninterrupted_run_bit_for_bit(campaign):
    """Every logged row of both interrupted runs, including steps computed again after a kill, equals
    the uninterrupted run's: the same run, deterministic on the CPU (same config and seed)."""
    reference = {row["step"]: row for row in train_rows(campaign["reference"])}
    assert sorted(reference) == list(range(1, TOTAL + 1))
    knn = re.findall(r"knn_top1@20=([\d.]+)%", campaign["reference_stdout"])
    for workdir, events in campaign["chains"].values():
        rows = train_rows(workdir)
        assert {row["step"] for row in rows} == set(reference)
        for row in rows:
            for key in DETERMINISTIC:
                assert row[key] == reference[row["step"]][key], f"step {row['step']} {key}"
        assert knn and re.findall(r"knn_top1@20=([\d.]+)%", events[-1]["stdout"]) == knn


def test_campaign_table(campaign):
    """Prints the README's table: each fault, what the run did, finished steps lost and recomputed."""
    print("\n| chain | fault | what the run did | finished steps lost | steps computed again |")
    print("|---|---|---|---|---|")
    for name, (_, events) in campaign["chains"].items():
        for event, resumed in zip(events, _resumes(events)):
            lost = again = "-"
            if event["fault"].startswith(("kill", "SIGTERM")):
                done = max((event["complete"] or [0])[-1], (event.get("complete_before") or [0])[-1])
                if resumed is None:  # followed by the refusals: resumed by the fallback, after damage
                    resumed = done
                lost, again = done - resumed, max((event["last_logged"] or resumed) - resumed, 0)
                did = ("exit 0, checkpoint written" if event["code"] == 0 else
                       "killed" + (" mid-write" if event["mid_write"] else "")) + f"; resumed from step {resumed}"
            elif event["code"]:
                did = "exit 1: `" + one_error_line(event["code"], event["stderr"])[7:70] + "...`; files untouched"
            else:
                did = f"resumed from step {resumed_from(event['stdout'])}, finished step {TOTAL}"
            print(f"| {name} | {event['fault']} | {did} | {lost} | {again} |")


# --- NaN / Inf -----------------------------------------------------------------------------------

POISONED_STEP = 2  # the 2nd step (1-based, as logged)


def _train_poisoned(workdir, **overrides):
    """train_and_evaluate in this process with the batch of step POISONED_STEP full of NaN."""
    from ssl_jax import train
    from ssl_jax.data import pipeline

    real = pipeline.train_batches

    def poisoned(config, start_step, *args):
        for step, batch in enumerate(real(config, start_step, *args), start=start_step + 1):
            if step == POISONED_STEP:
                batch = jax.tree.map(lambda x: np.full_like(x, np.nan), batch)
            yield batch

    config = make_smoke_config(**{"checkpoint.every_steps": 1, "checkpoint.max_to_keep": 10, **overrides})
    pipeline.train_batches = poisoned
    try:
        return train.train_and_evaluate(config, str(workdir))
    finally:
        pipeline.train_batches = real


def test_nan_stops_on_the_step_naming_the_metric(tfds_data_dir, tmp_path):
    """Policy 'stop': the error names step 2 and the loss; the newest checkpoint is step 1's."""
    from ssl_jax.guards.nonfinite import NonFiniteError

    with pytest.raises(NonFiniteError, match=rf"non-finite loss at step {POISONED_STEP} \(loss=nan"):
        _train_poisoned(tmp_path)
    assert complete_steps(tmp_path) == [POISONED_STEP - 1]
    assert [row["step"] for row in train_rows(tmp_path)] == [POISONED_STEP - 1]


def test_nan_skip_keeps_state_and_finishes(tfds_data_dir, tmp_path, capsys):
    """Policy 'skip': the poisoned step changes nothing but step and rng, the run finishes with finite
    losses. (The same run checks the collapse warning's wiring: tolerance 1 counts every log step.)"""
    result = _train_poisoned(tmp_path, **{"nonfinite.policy": "skip", "collapse.patience": 3,
                                          "collapse.tolerance": 1.0})
    out = capsys.readouterr().out
    assert f"non-finite loss at step {POISONED_STEP} (loss=nan" in out and "update skipped" in out, out
    rows = {row["step"]: row for row in train_rows(tmp_path)}
    assert sorted(rows) == [1, 3, 4, 5, 6] and all(math.isfinite(r["loss"]) for r in rows.values())
    assert math.isfinite(result["loss"])
    assert out.count("WARNING: representation collapse at step 4") == 1, out  # 3rd logged step, once

    import orbax.checkpoint as ocp

    def load(step):
        return jax.device_get(ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "default"))

    before, after = load(POISONED_STEP - 1), load(POISONED_STEP)
    assert int(after["step"]) == POISONED_STEP
    for field in ("params", "teacher", "method_state", "opt_state"):
        for a, b in zip(jax.tree.leaves(before[field]), jax.tree.leaves(after[field])):
            np.testing.assert_array_equal(a, b, err_msg=field)
    assert not np.array_equal(before["rng"], after["rng"])


def test_nan_skip_gives_up_after_max_consecutive_skips():
    """Skipping forever would burn the allocation: more than max_consecutive_skips in a row stop."""
    from ml_collections import ConfigDict

    from ssl_jax.guards.nonfinite import NonFiniteError, NonFiniteGuard

    guard = NonFiniteGuard(ConfigDict({"policy": "skip", "max_consecutive_skips": 2}), log=lambda line: None)
    bad = {"loss": 1.0, "grad_norm": float("inf"), "nonfinite": 1.0}
    assert guard.skipped(1, bad) and guard.skipped(2, bad)
    assert not guard.skipped(3, {"loss": 1.0, "grad_norm": 1.0, "nonfinite": 0.0})  # resets the count
    assert guard.skipped(4, bad) and guard.skipped(5, bad)
    with pytest.raises(NonFiniteError, match="non-finite grad_norm at step 6.*3 non-finite steps in a row"):
        guard.skipped(6, bad)


def test_nan_guard_stop_policy_names_the_first_bad_metric_without_data():
    """Policy 'stop' raises on the first flagged step, naming loss/grad_norm before other metrics;
    finite steps pass; a non-finite logged average stops too; an unknown policy is a UserError."""
    from ml_collections import ConfigDict

    from ssl_jax.errors import UserError
    from ssl_jax.guards.nonfinite import NonFiniteError, NonFiniteGuard

    lines = []
    guard = NonFiniteGuard(ConfigDict({"policy": "stop", "max_consecutive_skips": 10}), log=lines.append)
    assert not guard.skipped(1, {"loss": 1.0, "grad_norm": 2.0, "nonfinite": 0.0})
    bad = {"center_norm": float("nan"), "grad_norm": float("inf"), "loss": 1.0, "nonfinite": 1.0}
    with pytest.raises(NonFiniteError, match=r"^non-finite grad_norm at step 2 \(grad_norm=inf, center_norm=nan\)"):
        guard.skipped(2, bad)
    guard.check_logged(3, {"loss": 1.0, "teacher_entropy": 0.5})
    with pytest.raises(NonFiniteError, match="non-finite teacher_entropy at step 4.*averaged"):
        guard.check_logged(4, {"loss": 1.0, "teacher_entropy": float("nan")})
    assert not lines
    with pytest.raises(UserError, match="nonfinite.policy='ignore'"):
        NonFiniteGuard(ConfigDict({"policy": "ignore", "max_consecutive_skips": 1}), log=lines.append)


# --- collapse ------------------------------------------------------------------------------------


@pytest.mark.parametrize("entropy, kl, kind", [(3.465, 0.0007, "uniform"), (0.001, 3.465, "one-hot"),
                                               (2.0, 1.466, None)])
def test_collapse_warns_after_patience_once_per_episode(entropy, kl, kind):
    from ssl_jax.guards.collapse import CollapseMonitor

    warnings = []
    monitor = CollapseMonitor(patience=3, tolerance=0.02, warn=warnings.append)
    scalars = {"teacher_entropy": entropy, "teacher_kl_uniform": kl, "loss": 3.4}
    for step in range(1, 6):
        assert monitor.update(step, scalars) == kind
    if kind is None:
        assert not warnings
        return
    assert len(warnings) == 1 and "collapse at step 3" in warnings[0]
    for cause in ("teacher_temp", "center_momentum", "batch_size"):
        assert cause in warnings[0]
    monitor.update(6, {"teacher_entropy": 2.0, "teacher_kl_uniform": 1.466})  # recovers ...
    for step in range(7, 10):
        monitor.update(step, scalars)  # ... and collapses again: warned again
    assert len(warnings) == 2


def test_collapse_monitor_ignores_methods_without_teacher_metrics():
    from ssl_jax.guards.collapse import CollapseMonitor

    warnings = []
    monitor = CollapseMonitor(patience=1, tolerance=0.5, warn=warnings.append)
    assert monitor.update(1, {"loss": 0.0}) is None and not warnings


# --- bad input -----------------------------------------------------------------------------------


def _write_images(root, corrupt: bool):
    """An ImageFolder train/ split of 48 images: RGB, one grayscale, one RGBA, one 5x3 px
    (smaller than every crop), and with `corrupt` a garbage broken.jpg and a notes.txt."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for i in range(48):
        label = root / "train" / f"class{i % 2}"
        label.mkdir(parents=True, exist_ok=True)
        shape = {0: (32, 32, 1), 1: (32, 32, 4), 2: (5, 3, 3)}.get(i, (32, 32, 3))
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        (label / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    if corrupt:
        (root / "train" / "class0" / "broken.jpg").write_bytes(b"this is not a jpeg" * 10)
        (root / "train" / "class0" / "notes.txt").write_text("not an image")


def _folder_config(root):
    return make_smoke_config(**{"dataset.name": "folder", "dataset.data_dir": str(root), "eval.train_split": "train",
                                "eval.test_split": "train"})


def test_folder_dataset_with_grayscale_rgba_and_tiny_images_trains(tfds_data_dir, tmp_path):
    """Grayscale and RGBA files become RGB, a 5x3 px image is upsampled by the crops: the run finishes."""
    from ssl_jax import train

    _write_images(tmp_path / "images", corrupt=False)
    result = train.train_and_evaluate(_folder_config(tmp_path / "images"), str(tmp_path / "run"))
    assert math.isfinite(result["loss"]) and 0.0 <= result["knn_top1@20"] <= 1.0


def test_corrupt_image_in_folder_dataset_is_named(tfds_data_dir, tmp_path):
    """A garbage .jpg stops the run with its path, at the step whose batch holds it."""
    from ssl_jax import train
    from ssl_jax.errors import UserError

    _write_images(tmp_path / "images", corrupt=True)
    with pytest.raises(UserError, match=r"cannot decode 1 image\(s\) of the batch of step \d+: \S+broken\.jpg"):
        train.train_and_evaluate(_folder_config(tmp_path / "images"), str(tmp_path / "run"))


BAD_INPUTS = {  # name: (args, what the one error line must contain)
    "empty split": (["--config.dataset.train_split=train[:0]"], ["'train[:0]'", "0 example(s)",
                                                               "--config.dataset.train_split"]),
    "empty eval split": (["--config.eval.test_split=test[:0]"], ["'test[:0]'", "--config.eval.test_split"]),
    "unknown split": (["--config.dataset.train_split=trian"], ["'trian'", "['test', 'train']"]),
    "tuple length": (["--config.augment.global_crops.scale=3"], ["augment.global_crops.scale", "2-tuple"]),
    "wrong type": (["--config.batch_size=sixteen"], ["--config.batch_size=sixteen"]),
    "nan policy": (["--config.nonfinite.policy=ignore"], ["nonfinite.policy='ignore'", "=skip"]),
    "unwritable workdir": ([], ["cannot write to --workdir", "Not a directory"]),
    "folder without data_dir": (["--config.dataset.name=folder"], ["--config.dataset.data_dir"]),
}


@pytest.fixture(scope="module")
def bad_input_runs(tfds_data_dir, tmp_path_factory):
    """Every BAD_INPUTS case as a `python -m ssl_jax.main` process, all started at once."""
    procs = {}
    for name, (args, _) in BAD_INPUTS.items():
        workdir = tmp_path_factory.mktemp(name.replace(" ", "_"))
        if name == "unwritable workdir":
            (workdir / "file").write_text("a file, not a directory")
            workdir = workdir / "file" / "run"
        procs[name] = (workdir, Process(workdir, *args))
    return {name: (workdir, proc.finish()) for name, (workdir, proc) in procs.items()}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(bad_input_runs, name):
    workdir, (code, _, stderr) = bad_input_runs[name]
    message = one_error_line(code, stderr)
    for part in BAD_INPUTS[name][1]:
        assert part in message, message
    assert not os.path.exists(os.path.join(workdir, "config.json")) and not complete_steps(workdir)


def test_corrupt_config_json_is_named(tmp_path):
    """A damaged WORKDIR/config.json (hand-edited, disk error) is named, with what to do."""
    from ssl_jax.errors import UserError
    from ssl_jax.guards import run_config

    (tmp_path / "config.json").write_text('{"seed": 0, "batch')
    with pytest.raises(UserError, match="cannot read .*config.json .*JSONDecodeError"):
        run_config.check_resume(make_smoke_config(), str(tmp_path), step=3, allow_change=False)


def test_allowed_config_change_is_recorded(tmp_path):
    """--allow_config_change: the resume goes on and config_changes.jsonl records what changed, from which step."""
    from ssl_jax.guards import run_config

    run_config.save(make_smoke_config(), str(tmp_path), step=0, changes={})
    longer = make_smoke_config(num_epochs=4, **{"dataset.data_dir": "/elsewhere"})  # data_dir is machine-local
    changes = run_config.check_resume(longer, str(tmp_path), step=6, allow_change=True)
    assert changes == {"num_epochs": (2, 4)}
    run_config.save(longer, str(tmp_path), step=6, changes=changes)
    with open(tmp_path / "config_changes.jsonl") as f:
        record = json.loads(f.read())
    assert record["step"] == 6 and record["changes"] == {"num_epochs": {"before": 2, "after": 4}}
    assert run_config.check_resume(longer, str(tmp_path), step=6, allow_change=False) == {}
