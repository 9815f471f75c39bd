"""Every path of a run on a non-local filesystem: train, preempt, resume and evaluate with
--workdir=gs://bucket/run.

Offline there is no GCS, so the fixture `fake_gcs` keeps gs:// URLs everywhere in our code and
in orbax, and redirects only the storage under them to a local directory, at the two places
where bytes leave the process: etils.epath's file operations (through etils' own
`epath.testing.mock_epath`; everything we write, and orbax's metadata and commit files) and
TensorStore's GCS kvstore (orbax's `gcs_utils.get_kvstore_for_gcs`, swapped for TensorStore's
file driver on the mapped directory). orbax still takes its GCS code path (commit_success.txt
files instead of renames). A run that reached the disk with `os`/`open` on the URL would write a
local directory named `gs:` in the working directory instead: the test checks there is none.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
from unittest import mock

import jax
import numpy as np
import pytest

from conftest import make_smoke_config

BUCKET_RUN = "gs://bucket/run"


@contextlib.contextmanager
def fake_gcs(root):
    """gs://X is stored in ROOT/X for epath (so our code and orbax's metadata) and TensorStore."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing
    from orbax.checkpoint._src.path import gcs_utils

    root = os.fspath(root)

    def local(path):
        path = os.fspath(path)
        return os.path.join(root, path[len("gs://"):]) if path.startswith("gs://") else path

    def remote(original, path):
        """A listed local path back under gs:// when the query was a gs:// path."""
        return "gs://" + os.path.relpath(original, root) if os.fspath(path).startswith("gs://") else original

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def two(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    def glob(fn, path):
        return [remote(p, path) for p in fn(local(path))]

    def walk(fn, top, **kwargs):
        for directory, dirs, files in fn(local(top), **kwargs):
            yield remote(directory, top), dirs, files

    single = {name: one for name in ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree",
                                     "stat")}
    with mock.patch.object(gpath, "_is_tf_installed", lambda: False), \
            epath_testing.mock_epath(**single, rename=two, replace=two, copy=two, glob=glob, walk=walk), \
            mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False), \
            mock.patch.object(gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": local(path)}):
        yield


def _config():
    return make_smoke_config(**{"checkpoint.every_steps": 100})  # saves at preemption and at the end (and step 1)


def _checkpoint_arrays(workdir, step) -> dict:
    """{path: array} of a saved TrainState (raw, PRNG keys as key data)."""
    from ssl_jax import train
    from ssl_jax.guards import checkpoint

    config = _config()
    checkpointer = checkpoint.Checkpointer(workdir, 1, 10)
    state = checkpointer.restore(step, train.abstract_state(config, train.setup(config)))
    checkpointer.close()
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key) else leaf) for path, leaf in leaves}


@pytest.fixture(scope="module")
def local_run(tfds_data_dir, tmp_path_factory):
    """The uninterrupted run on the local filesystem."""
    from ssl_jax import train

    workdir = tmp_path_factory.mktemp("local") / "run"
    result = train.train_and_evaluate(_config(), str(workdir))
    return workdir, result


@pytest.fixture(scope="module")
def gcs_run(tfds_data_dir, tmp_path_factory):
    """The same run on gs://: SIGTERM after step 4 (checkpoint, exit), resume to the end, then
    --mode=eval; returns the local directory the bucket is stored in and each phase's result."""
    from ssl_jax import train
    from ssl_jax.guards.logger import MetricLogger

    storage, cwd = tmp_path_factory.mktemp("gcs"), tmp_path_factory.mktemp("cwd")
    write = MetricLogger.write

    def preempt_after_step_4(self, step, scalars, prefix="train"):
        write(self, step, scalars, prefix)
        if step == 4 and prefix == "train":
            os.kill(os.getpid(), signal.SIGTERM)  # what a TPU preemption sends; the watcher is installed

    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        with fake_gcs(storage):
            with mock.patch.object(MetricLogger, "write", preempt_after_step_4):
                first = train.train_and_evaluate(_config(), BUCKET_RUN)
            resumed = train.train_and_evaluate(_config(), BUCKET_RUN)
            evaluated = train.evaluate_checkpoint(_config(), BUCKET_RUN)
            final = _checkpoint_arrays(BUCKET_RUN, 6)
    finally:
        os.chdir(old_cwd)
    return {"bucket": storage / "bucket" / "run", "cwd": cwd, "first": first, "resumed": resumed,
            "evaluated": evaluated, "final": final}


def test_gcs_run_is_preempted_resumed_and_evaluated(gcs_run):
    assert gcs_run["first"]["preempted_at"] == 4 and "preempted_at" not in gcs_run["resumed"]
    assert gcs_run["evaluated"] == {k: v for k, v in gcs_run["resumed"].items() if k.startswith("knn")}
    assert not os.listdir(gcs_run["cwd"]), "a path went to the local disk as a relative 'gs:' directory"


def test_every_file_of_the_run_is_in_the_bucket(gcs_run):
    bucket = gcs_run["bucket"]
    assert json.loads((bucket / "config.json").read_text())["method"]["name"] == "dino"
    assert sorted(p.name for p in (bucket / "checkpoints").iterdir() if p.is_dir()) == ["4", "6"]
    for step in (4, 6):  # orbax's GCS commit marker: it wrote there as to a bucket
        assert (bucket / "checkpoints" / str(step) / "commit_success.txt").exists()
    assert json.loads((bucket / "checkpoints" / "eval_6.json").read_text())["step"] == 6
    rows = [json.loads(line) for line in (bucket / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [6, 6]  # end of training, then --mode=eval


def test_tensorboard_events_in_the_bucket_hold_the_logged_losses(gcs_run):
    import tensorflow as tf

    bucket = gcs_run["bucket"]
    jsonl = {r["step"]: r["loss"] for r in map(json.loads, (bucket / "metrics" / "metrics.jsonl").read_text()
                                                .splitlines()) if r["split"] == "train"}
    events = sorted((bucket / "metrics").glob("events.out.tfevents.*"))
    assert len(events) == 3  # one per process start: train, resume, eval
    losses = {}
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "train/loss":
                    losses[event.step] = value.simple_value
    assert sorted(losses) == sorted(jsonl)
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [jsonl[s] for s in sorted(jsonl)], rtol=1e-6)


def test_gcs_run_preempted_and_resumed_equals_the_local_uninterrupted_run(gcs_run, local_run):
    workdir, result = local_run
    assert gcs_run["resumed"]["loss"] == pytest.approx(result["loss"], rel=1e-5)
    local = _checkpoint_arrays(workdir, 6)
    assert local.keys() == gcs_run["final"].keys()
    for name, value in local.items():
        np.testing.assert_allclose(gcs_run["final"][name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_local_paths_are_unchanged(local_run):
    """The local run keeps its layout (config.json, metrics/, checkpoints/<step>/)."""
    workdir, _ = local_run
    assert (workdir / "config.json").exists() and (workdir / "metrics" / "metrics.jsonl").exists()
    assert list((workdir / "metrics").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "6" / "_CHECKPOINT_METADATA").exists()


def test_config_json_from_before_a_run_level_field_existed_still_resumes(tmp_path):
    """config.json written before eval.dataset / dataset.on_corrupt existed: those fields at their
    defaults are no change; set to anything else they are."""
    from ssl_jax.errors import UserError
    from ssl_jax.guards import run_config

    config = make_smoke_config()
    run_config.save(config, str(tmp_path), 0, {})
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["eval"]["dataset"], saved["dataset"]["on_corrupt"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert run_config.check_resume(config, str(tmp_path), 3, allow_change=False) == {}
    config.dataset.on_corrupt = "skip"
    with pytest.raises(UserError, match=r"dataset.on_corrupt: '<absent>' -> 'skip'"):
        run_config.check_resume(config, str(tmp_path), 3, allow_change=False)
