"""The training loop's helpers (`ssl_jax.loop_helpers`) and the merged eval_<step>.json
(`ssl_jax.eval_record`), without compiling anything."""
from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest

from ssl_jax import loop_helpers
from ssl_jax.eval_record import merge_eval_results
from ssl_jax.guards.nonfinite import NonFiniteError, NonFiniteGuard


def _schedule(start: int, total: int, per_call: int) -> list[int]:
    """The loop's call sizes from `start`, by the rule: whole calls from a multiple of per_call while
    that many steps remain, single steps otherwise."""
    sizes, step = [], start
    while step < total:
        n = per_call if step % per_call == 0 and total - step >= per_call else 1
        sizes.append(n)
        step += n
    return sizes


def test_call_size_runs_whole_calls_then_single_steps():
    """steps_per_call=4 over 6 steps: steps 1-4 in one call, then 5 and 6; resumed at step 3 of 10:
    step 4 alone up to the multiple, 5-8 in one call, then 9 and 10."""
    def run(start, total, per_call):
        sizes, step = [], start
        while step < total:
            sizes.append(loop_helpers.call_size(step, total, per_call))
            step += sizes[-1]
        return sizes

    assert run(0, 6, 4) == [4, 1, 1]
    assert run(3, 10, 4) == [1, 4, 1, 1]
    assert run(0, 8, 4) == [4, 4]
    assert run(0, 5, 1) == [1] * 5


def test_call_sizes_are_exactly_the_sizes_the_run_uses():
    """Only the call sizes the run will use are compiled, and every one it uses is."""
    for per_call in (1, 2, 3, 4):
        for total in range(0, 13):
            for start in range(0, total + 2):
                assert loop_helpers.call_sizes(start, total, per_call) == set(_schedule(start, total, per_call)), \
                    (start, total, per_call)


def test_interval_timer_leaves_out_paused_time(monkeypatch):
    """An interval of 10 s of which 4 s are under paused() (evaluation) is 6 s of training."""
    clock = {"now": 100.0}
    monkeypatch.setattr(loop_helpers.time, "time", lambda: clock["now"])
    timer = loop_helpers.IntervalTimer()
    clock["now"] += 3.0
    timer.count(2)
    with timer.paused():
        clock["now"] += 4.0
    clock["now"] += 3.0
    timer.count(1)
    assert timer.lap() == (6.0, 3)
    clock["now"] += 2.0
    timer.count(1)
    assert timer.lap() == (2.0, 1)
    assert timer.total == 8.0


def _guard(policy):
    return NonFiniteGuard(types.SimpleNamespace(policy=policy, max_consecutive_skips=3), lambda line: None)


def test_metric_averager_skips_nonfinite_steps_and_names_the_step():
    """A 3-step call whose 2nd step is non-finite: with policy skip, the mean is over steps 1 and 3
    and one skip is counted; with policy stop, the error names step first_step + 1."""
    metrics = {"loss": np.array([1.0, np.nan, 4.0]), "nonfinite": np.array([0.0, 1.0, 0.0]),
               "lr": np.array([0.1, 0.2, 0.3])}
    averager = loop_helpers.MetricAverager(_guard("skip"))
    averager.add(5, metrics, 3)
    averager.add(8, {"loss": np.float64(7.0), "nonfinite": np.float64(0.0), "lr": np.float64(0.4)}, 1)
    scalars, skipped = averager.pop_mean(8)
    assert skipped == 1 and set(scalars) == {"loss", "lr"}
    assert math.isclose(scalars["loss"], np.mean([1.0, 4.0, 7.0]))
    assert math.isclose(scalars["lr"], np.mean([0.1, 0.3, 0.4]))
    assert not averager.per_step and averager.skipped == 0  # the next interval starts empty

    with pytest.raises(NonFiniteError, match="non-finite loss at step 6"):
        loop_helpers.MetricAverager(_guard("stop")).add(5, metrics, 3)


def test_eval_results_of_both_entry_points_merge(tmp_path):
    """main --mode=eval's kNN and evaluate's linear probe of the same step end up in one file; a
    metric evaluated again is replaced."""
    merge_eval_results(tmp_path, 6, {"knn_top1@20": 0.25})
    merge_eval_results(tmp_path, 6, {"linear_dino_top1": 0.5})
    path = merge_eval_results(tmp_path, 6, {"knn_top1@20": 0.3})
    assert json.loads(path.read_text()) == {"step": 6, "knn_top1@20": 0.3, "linear_dino_top1": 0.5}
    assert path == tmp_path / "eval_6.json"


def test_train_and_evaluate_validates_the_config_before_touching_the_workdir(tmp_path):
    """A library caller's bad config is one UserError naming the field, and no workdir is created."""
    from conftest import make_smoke_config

    from ssl_jax import train
    from ssl_jax.errors import UserError

    with pytest.raises(UserError, match=r"config\.batch_size=0"):
        train.train_and_evaluate(make_smoke_config(batch_size=0), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _unwritable(error):
    """A filesystem method that raises `error`, as the os/epath call on an unwritable path does."""
    def method(self, *args, **kwargs):
        raise error
    return method


def test_unwritable_workdir_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """prepare_workdir turns what a filesystem raises for an unwritable --workdir (a file in the way,
    a permission, gfile's error for a scheme it lacks, an unknown scheme) into one UserError naming
    it; any other exception from the same calls is a bug and propagates unchanged."""
    from etils import epath

    from ssl_jax import paths, train
    from ssl_jax.errors import UserError

    (tmp_path / "file").write_text("a file, not a directory")
    with pytest.raises(UserError, match=r"cannot write to --workdir=\S+/file/run \(Not a directory\)"):
        train.prepare_workdir(str(tmp_path / "file" / "run"))
    with pytest.raises(UserError, match=r"cannot write to --workdir=hf://owner/run \(\w+Error: "):
        train.prepare_workdir("hf://owner/run")  # tensorflow's gfile: UnimplementedError (fsspec: ImportError)
    with pytest.raises(UserError, match=r"unknown filesystem foo://"):
        train.prepare_workdir("foo://bucket/run")

    local = type(paths.resolve(tmp_path))
    assert issubclass(local, epath.Path)
    monkeypatch.setattr(local, "mkdir", _unwritable(PermissionError(13, "Permission denied")))
    with pytest.raises(UserError, match=r"cannot write to --workdir=\S+ \(Permission denied\); pass a directory"):
        train.prepare_workdir(str(tmp_path / "run"))
    monkeypatch.setattr(local, "mkdir", _unwritable(TypeError("a bug in the probe")))
    with pytest.raises(TypeError, match="a bug in the probe"):
        train.prepare_workdir(str(tmp_path / "run"))


def test_restore_saved_names_a_workdir_without_checkpoints(tmp_path):
    """--mode=eval and the frozen evaluations on a run that saved nothing: one line naming where it looked
    (before anything is built: no Run is needed to find that out)."""
    from conftest import make_smoke_config

    from ssl_jax import train
    from ssl_jax.errors import UserError

    with pytest.raises(UserError, match=rf"no checkpoint in {tmp_path}/checkpoints; train first"):
        train.restore_saved(make_smoke_config(), None, str(tmp_path))


def test_one_line_names_the_type_and_the_first_line_even_of_an_empty_message():
    from ssl_jax.errors import one_line

    assert one_line(OSError("disk full\nsecond line")) == "OSError: disk full"
    assert one_line(KeyError()) == "KeyError: "
    assert one_line(ValueError("x" * 500), limit=7) == "ValueError: xxxxxxx"
