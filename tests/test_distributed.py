"""Two processes joined by jax.distributed equal one process, on the real CIFAR-10 smoke runs.

`launch/local_multiprocess.sh 2 ...` starts two CPU processes (one CPU device each, gloo
collectives) of `python -m ssl_jax.main`; each reads its own tfds shard
(`tfds.split_for_jax_process`) and the global batch is assembled with
`jax.make_array_from_process_local_data`. What is compared, exactly:

  * the 2-process run's logged loss at each of its 6 steps equals, to float32 reduction-order
    noise, a reference run in this test process whose global batch at every step is the
    concatenation of the two processes' local batches, rebuilt here with the same input
    pipeline for process 0 and process 1 of 2 (same seed, same per-process shards and
    augmentation seeds). The reference is `step.train_step` under a plain `jax.jit` on one
    device: no mesh and none of the sharding code under test (`jit_train_step`, the batch and
    state shardings), so a sharding bug cannot show up on both sides and cancel out. DINO and
    SimCLR (global BatchNorm and negatives across processes).
  * checkpoints across process counts (DINO): the 2-process run's step-6 checkpoint restores
    in this process and equals the reference state; and a checkpoint of the reference's
    step-3 state is resumed by a new 2-process run, whose steps 4-6 then log the reference's
    losses.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import CONFIG_FILE, REPO, cli_overrides, make_smoke_config, xla_flags
from ssl_jax import train
from ssl_jax.core.step import train_step
from ssl_jax.guards import run_config
from ssl_jax.guards.checkpoint import Checkpointer, abstract_like

LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.sh")
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 1  # 2 processes x 1 device; the fewest threads on 2 cores
SIMCLR_FILE = os.path.join(REPO, "configs", "simclr_resnet50.py")
# Small kNN splits: one eval batch each, the end-of-run evaluation is not what is tested here.
EVAL_OVERRIDES = {"eval.train_split": "train[:200]", "eval.test_split": "test[:200]", "eval.batch_size": 200,
                  "log_every_steps": 1, "checkpoint.every_steps": 3}


def _simclr_config():
    """SimCLR's :smoke preset (ResNet-10 of width 8) with EVAL_OVERRIDES."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("simclr_config", SIMCLR_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.dataset.download = False
    for key, value in EVAL_OVERRIDES.items():
        section, _, leaf = key.rpartition(".")
        (config[section] if section else config)[leaf] = value
    return config


METHODS = {
    # name: (config spec for the command line, its extra flags, the same config in-process)
    "dino": (f"{CONFIG_FILE}:smoke", cli_overrides(**EVAL_OVERRIDES), lambda: make_smoke_config(**EVAL_OVERRIDES)),
    "simclr": (f"{SIMCLR_FILE}:smoke", ["--config.dataset.download=False"]
               + [f"--config.{k}={v}" for k, v in EVAL_OVERRIDES.items()], _simclr_config),
}


def _launch(workdir, method: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`launch/local_multiprocess.sh 2 --config=... --workdir=WORKDIR ...`, one CPU device per process."""
    spec, flags, _ = METHODS[method]
    env = dict(os.environ, XLA_FLAGS=xla_flags(DEVICES_PER_PROCESS), PYTHON=sys.executable)  # this interpreter
    proc = subprocess.run(["bash", LAUNCHER, str(NUM_PROCESSES), f"--config={spec}", f"--workdir={workdir}", *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


def _train_losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["step"]: row["loss"] for row in rows if row["split"] == "train"}


def _process_batches(config, run, process: int, steps: int) -> list[dict]:
    """The local batches process `process` of NUM_PROCESSES reads at steps 0..steps-1: the
    input pipeline built as that process builds it (its tfds shard and augmentation seeds)."""
    from ssl_jax.data import pipeline

    patch = pytest.MonkeyPatch()
    patch.setattr(jax, "process_index", lambda *_: process)
    patch.setattr(jax, "process_count", lambda *_: NUM_PROCESSES)
    try:  # the pipeline reads the process index/count when it is built, not per batch
        batches = pipeline.train_batches(config, 0, run.steps_per_epoch, config.batch_size // NUM_PROCESSES)
    finally:
        patch.undo()
    return [next(batches) for _ in range(steps)]


def _one_process_run(config, save_at: int | None = None, checkpoint_dir=None):
    """The reference: `train_step` on the 2 processes' concatenated batches, under a plain
    `jax.jit` on one device (no mesh, no shardings).

    Returns (losses by step, final state, run); with `save_at`, the state after that step is
    also written as a checkpoint (and config.json) into `checkpoint_dir`.
    """
    run = train.setup(config)  # method, optimiser, schedules (its mesh is not used)
    shards = [_process_batches(config, run, p, run.total_steps) for p in range(NUM_PROCESSES)]
    # Compiled here, not loaded from a persistent cache (when JAX_COMPILATION_CACHE_DIR sets one):
    # train steps loaded from it aborted inside XLA's CPU runtime (tests/conftest.py).
    cache_enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        state = jax.jit(train.init_state_fn(config, run))(jax.random.key(config.seed))
        step_fn = jax.jit(functools.partial(train_step, method=run.method, tx=run.tx, schedules=run.schedules))
        losses = {}
        for i in range(run.total_steps):
            batch = jax.tree.map(lambda *xs: np.concatenate(xs), *[shard[i] for shard in shards])
            state, metrics = step_fn(state, batch)
            losses[i + 1] = float(metrics["loss"])
            if i + 1 == save_at:
                checkpointer = Checkpointer(str(checkpoint_dir), 1, 2)
                checkpointer.save(save_at, state, force=True)
                checkpointer.wait()
                checkpointer.close()
                run_config.save(config, str(checkpoint_dir), save_at, {})
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_enabled)
    assert len(jax.tree.leaves(state.params)[0].devices()) == 1  # one device, no mesh
    return losses, state, run


def _assert_losses_equal(actual: dict, expected: dict, steps):
    for step in steps:
        np.testing.assert_allclose(actual[step], expected[step], rtol=2e-5, atol=1e-6,
                                   err_msg=f"loss at step {step}: 2 processes vs the one-device reference")


@pytest.fixture(scope="module")
def dino_runs(tfds_data_dir, tmp_path_factory):
    """The 2-process DINO run, and the reference run on the same global batches (which also
    writes its step-3 state as a checkpoint into a fresh workdir)."""
    two = tmp_path_factory.mktemp("dino_2proc")
    proc = _launch(two, "dino")
    one_ckpt = tmp_path_factory.mktemp("dino_1proc_ckpt")
    losses, state, run = _one_process_run(METHODS["dino"][2](), save_at=3, checkpoint_dir=one_ckpt)
    return dict(two=two, proc=proc, losses=losses, state=state, run=run, one_ckpt=one_ckpt)


def test_two_process_dino_equals_one_process(dino_runs):
    """Every step's loss of the 2-process DINO smoke run equals the one-device reference's."""
    mesh = f"on {NUM_PROCESSES * DEVICES_PER_PROCESS} device(s) in {NUM_PROCESSES} processes"
    assert mesh in dino_runs["proc"].stdout, dino_runs["proc"].stdout[-2000:]
    two = _train_losses(dino_runs["two"])
    assert sorted(two) == list(range(1, 7))
    _assert_losses_equal(two, dino_runs["losses"], range(1, 7))


def test_two_process_checkpoint_restores_in_one_process(dino_runs):
    """The 2-process run's step-6 checkpoint (2 devices, written by both processes) restores on
    1 process (on one device) and equals the reference state."""
    state = dino_runs["state"]
    checkpointer = Checkpointer(str(dino_runs["two"]), 3, 2)
    try:
        restored = checkpointer.restore(6, abstract_like(state))
    finally:
        checkpointer.close()
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(restored.rng)),
                                  np.asarray(jax.random.key_data(state.rng)))
    assert int(restored.step) == 6
    for what in ("params", "teacher", "opt_state", "method_state"):
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(getattr(restored, what))[0],
                                jax.tree.leaves(getattr(state, what))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{what}{jax.tree_util.keystr(path)}")


def test_one_process_checkpoint_resumes_in_two_processes(dino_runs):
    """A 2-process run resumes from the reference's step-3 checkpoint (1 device -> 2 processes)
    and its steps 4-6 log the reference's losses."""
    proc = _launch(dino_runs["one_ckpt"], "dino")
    assert "resuming from step 3" in proc.stdout, proc.stdout[-2000:]
    resumed = _train_losses(dino_runs["one_ckpt"])
    assert sorted(resumed) == [4, 5, 6]
    _assert_losses_equal(resumed, dino_runs["losses"], range(4, 7))


@pytest.mark.slow  # the suite's 15-minute CI budget: run with -m slow
def test_two_process_simclr_equals_one_process(tfds_data_dir, tmp_path):
    """SimCLR (BatchNorm over the global batch, negatives from both processes): every step's
    loss of the 2-process smoke run equals the one-device reference's on the same global batches."""
    _launch(tmp_path, "simclr")
    losses, _, _ = _one_process_run(METHODS["simclr"][2]())
    two = _train_losses(tmp_path)
    assert sorted(two) == list(range(1, 7))
    _assert_losses_equal(two, losses, range(1, 7))


def test_imports_and_config_check_leave_the_backend_uninitialised():
    """jax.distributed.initialize must run before anything touches the XLA backend: importing the
    entry points and validating every config may not (a module-level jnp call once did)."""
    code = (
        "import glob, importlib, os\n"
        "from jax._src import xla_bridge\n"
        "import ssl_jax.main, ssl_jax.train, ssl_jax.evaluate, ssl_jax.api, ssl_jax.export\n"
        "from ssl_jax.guards import config_check\n"
        "for path in sorted(glob.glob('configs/*.py')):\n"
        "    name = os.path.basename(path)[:-3]\n"
        "    module = importlib.import_module(f'configs.{name}')\n"
        "    config = module.get_config('smoke')\n"
        "    if 'method' in config:\n"  # a training config (eval_protocols.py, self_training.py: tools)
        "        config_check.validate(config)\n"
        "assert not xla_bridge._backends, 'the XLA backend was initialised'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
