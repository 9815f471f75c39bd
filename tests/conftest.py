"""Shared set-up for the integration tests.

Runs before jax is imported (pytest loads conftest first), so it can:
  * give the host 8 virtual CPU devices, so every test exercises the sharded code path, and
    compile at low optimisation (TEST_COMPILE_FLAGS);
  * point tfds at the shared CIFAR-10 copy unless TFDS_DATA_DIR is already set, before the
    `python -m ssl_jax.main` processes of `start_main`/`start_config` are forked from a server
    that has imported the libraries once (tests/main_process.py);
  * leave jax's persistent compilation cache off unless JAX_COMPILATION_CACHE_DIR is set:
    SimCLR train steps loaded from it aborted (SIGABRT inside XLA's CPU runtime) in 3 of
    our test runs on 2026-11-22, while freshly compiled ones never did.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8

# Cheaper XLA CPU compiles for every test process and for the `ssl_jax.main` processes the tests
# start (they inherit the environment): compiling dominates the tests' tiny shapes on 2 cores,
# and these switches (LLVM at -O0, the legacy fusion emitters) change how fast the compiled step
# runs, not the HLO it runs. They halve the fault campaign's time. Benchmarks never see them.
TEST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                      "--xla_cpu_use_fusion_emitters=false")
_USER_XLA_FLAGS = [f for f in os.environ.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count") and f not in TEST_COMPILE_FLAGS]


def xla_flags(num_devices: int) -> str:
    """XLA_FLAGS for a test process with `num_devices` CPU devices (and TEST_COMPILE_FLAGS)."""
    device_count = f"--xla_force_host_platform_device_count={num_devices}"
    return " ".join(_USER_XLA_FLAGS + list(TEST_COMPILE_FLAGS) + [device_count])


os.environ["XLA_FLAGS"] = xla_flags(NUM_DEVICES)
os.environ.setdefault("TFDS_DATA_DIR", os.path.normpath(os.path.join(REPO, "..", "shared", "data", "tfds")))

import main_process  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TFDS_DATA_DIR = os.environ["TFDS_DATA_DIR"]
CONFIG_FILE = os.path.join(REPO, "configs", "dino_small.py")

# The smoke preset made smaller still: compile time dominates these tests on 2 CPU cores.
# Everything else (2 epochs x 3 steps, global batch 16, 2 global + 2 local crops, freezing of
# the last layer in epoch 0, warm-up) is the smoke preset's. The same overrides are passed to
# the subprocesses as --config.* flags, so in-process and subprocess runs are the same run.
TINY_OVERRIDES = {
    "model.depth": 1,
    "model.embed_dim": 16,
    "model.num_heads": 2,
    "method.out_dim": 32,
    "method.head_hidden_dim": 32,
    "method.head_bottleneck_dim": 16,
    "dataset.shuffle_buffer": 500,
    # Never reach for the network from a test: a missing dataset fails at once instead of
    # tfds retrying a download for minutes offline.
    "dataset.download": False,
    "eval.batch_size": 200,  # a multiple of 8 devices (the preset's 250 is not)
    "eval.train_split": "train[:500]",
    "eval.test_split": "test[:200]",
    "log_every_steps": 1,
    "checkpoint.every_steps": 3,
}


# For runs compared across a restart (resume, the fault campaign): two blocks instead of
# TINY_OVERRIDES' one, so the smoke preset's drop-path (rate 0.1, linear over the blocks from 0)
# drops paths in the second block. The step's rng then reaches every logged loss, and a restart
# that restored the wrong rng logs different losses.
RNG_OVERRIDES = {"model.depth": 2}


def dino_cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                warmup_start: float = 0.0) -> np.ndarray:
    """facebookresearch/dino utils.py `cosine_scheduler` in closed form, float64 [total_steps]:
    np.linspace(warmup_start, base, warmup_steps) (inclusive of base at warmup_steps - 1), then
    final + (base - final) / 2 * (1 + cos(pi * i / n)) for i = 0..n-1, n = total - warm-up. BYOL's
    `target_ema` and MoCo v3's `adjust_moco_momentum` (per step) are this with final = 1."""
    it = np.arange(total_steps, dtype=np.float64)
    ramp = warmup_start + (base - warmup_start) * it / max(warmup_steps - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * (it - warmup_steps) / (total_steps - warmup_steps)))
    return np.where(it < warmup_steps, ramp, cosine)


def dino_teacher_temp(warmup_temp: float, temp: float, warmup_epochs: int, total_steps: int,
                      steps_per_epoch: int) -> np.ndarray:
    """DINOLoss's teacher_temp_schedule (linspace over the warm-up epochs, then flat), indexed by
    the epoch of each step, float64 [total_steps]."""
    epoch = np.arange(total_steps) // steps_per_epoch
    ramp = warmup_temp + (temp - warmup_temp) * epoch / max(warmup_epochs - 1, 1)
    return np.where(epoch < warmup_epochs, ramp, temp)


def _load_config_module():
    spec = importlib.util.spec_from_file_location("dino_small_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_smoke_config(**overrides):
    """A fresh, unlocked smoke config with TINY_OVERRIDES (then `overrides`, dotted keys) applied."""
    config = _load_config_module().get_config("smoke")
    for key, value in {**TINY_OVERRIDES, **overrides}.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def cli_overrides(**overrides) -> list[str]:
    """TINY_OVERRIDES (then `overrides`) as --config.* flags for ssl_jax.main."""
    return [f"--config.{key}={value}" for key, value in {**TINY_OVERRIDES, **overrides}.items()]


def start_main(workdir, *args, **override_kwargs) -> main_process.MainProcess:
    """Starts `python -m ssl_jax.main --config=configs/dino_small.py:smoke --workdir=WORKDIR <tiny
    overrides> ARGS` in a fresh process (8 virtual devices, from this process's environment;
    forked from a server with the libraries imported: tests/main_process.py)."""
    return main_process.start([f"--config={CONFIG_FILE}:smoke", f"--workdir={workdir}",
                               *cli_overrides(**override_kwargs), *args])


def finish(proc: main_process.MainProcess, timeout: int = 900) -> subprocess.CompletedProcess:
    """Waits for a `start_main` process (killing it after `timeout` s) and returns its outputs."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args)} ran over {timeout}s\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_main(workdir, *args, timeout: int = 900, **override_kwargs) -> subprocess.CompletedProcess:
    """`start_main` and `finish`: runs ssl_jax.main to completion."""
    return finish(start_main(workdir, *args, **override_kwargs), timeout)


def start_config(config_spec: str, workdir, *args) -> main_process.MainProcess:
    """Starts `python -m ssl_jax.main --config=CONFIG_SPEC --workdir=WORKDIR ARGS` in a fresh process
    (any method's config; never downloads), as `start_main` does. XLA compiles mostly on one
    core, so two of these started together take little more wall time than one on 2 cores."""
    return main_process.start([f"--config={config_spec}", f"--workdir={workdir}", "--config.dataset.download=False",
                               *args])


def run_config(config_spec: str, workdir, *args, timeout: int = 900) -> subprocess.CompletedProcess:
    """`start_config` and `finish`: runs ssl_jax.main on CONFIG_SPEC to completion."""
    return finish(start_config(config_spec, workdir, *args), timeout)


# The longest modules, longest first (their `--durations` in CI's log; the fault campaign, the
# multi-process runs, the notebooks, the float64 references and the `:smoke` runs). The README's
# test command runs the suite on up to 4 pytest-xdist workers with `--dist loadfile` (a module's
# tests, and so its module-scoped fixtures, stay on one worker); starting the longest modules
# first keeps one worker from being left with a long module at the end.
LONGEST_MODULES = ("test_reliability.py", "test_distributed.py", "test_evaluate.py", "test_method_refs.py",
                   "test_pretext.py", "test_contrastive.py", "test_clustering.py", "test_api.py",
                   "test_ibot_dinov2.py", "test_mim.py", "test_train.py", "test_precision.py", "test_init_from.py",
                   "test_filesystems.py")


# Every config's `:smoke` preset is run from the command line by a test in CI's test command;
# tests/test_smoke_presets.py checks that none is left out or marked slow.


def run_smoke_preset(config_name: str, workdir, *args: str, preset: str = "smoke") -> dict:
    """Runs `python -m ssl_jax.main --config=configs/CONFIG_NAME.py:smoke ARGS` on CIFAR-10 (small eval
    splits) and checks what every method's run must do: exit 0, finite losses for all 6 steps, a
    checkpoint of step 6 and a kNN accuracy above chance. Returns the last eval record."""
    result = run_config(os.path.join(REPO, "configs", f"{config_name}.py") + f":{preset}", workdir,
                        "--config.eval.train_split=train[:400]", "--config.eval.test_split=test[:200]", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "metrics", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_records = [r for r in records if r["split"] == "train"]
    assert train_records and all(math.isfinite(r["loss"]) for r in train_records)
    assert train_records[-1]["step"] == 6
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))
    evals = [r for r in records if r["split"] == "eval"]
    assert evals and evals[-1]["knn_top1@20"] > 0.1  # above chance (10 classes)
    return evals[-1]


def smoke_params(names) -> list:
    """`names` as pytest params of a module's `:smoke` runs, one test each, none marked slow."""
    return [pytest.param(name) for name in names]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: left out of CI's test command (`-m 'not slow'`): the 2-process SimCLR run, the soup and self-training command lines, the compiled-program comparison")
    # pytest-xdist queues `--dist loadfile`'s modules by their number of tests, most first, which puts
    # the long modules with few tests (test_distributed, test_train) last; since 3.8 its option
    # `--no-loadscope-reorder` keeps the collection order (`pytest_collection_modifyitems` below).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """Orders the collected tests so that LONGEST_MODULES come first (stable otherwise)."""
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)


# With the environment variable CI set (`.ci/run` sets it), a skipped test is a failure: a CI whose
# data path or tool install broke must not go green by skipping. The exception: modules needing
# an extra outside `[test]` (`[convert]`/`[bench]`'s torch and timm): such a skip's reason starts
# with NEEDS_TORCH_EXTRA. Users' machines keep skips.
IN_CI = bool(os.environ.get("CI"))
NEEDS_TORCH_EXTRA = "needs the [bench] extra (torch + timm):"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, turns a skipped test (a skip mark, pytest.skip, a skipping fixture) into a failure."""
    report = (yield).get_result()
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") \
            and not reason.removeprefix("Skipped: ").startswith(NEEDS_TORCH_EXTRA):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI={os.environ['CI']}, which makes it a failure: {reason}"


def dataset_available() -> bool:
    return os.path.isdir(os.path.join(TFDS_DATA_DIR, "cifar10"))


@pytest.fixture(scope="session")
def tfds_data_dir() -> str:
    """The tfds directory holding cifar10/; skips the test when it is missing (fails it under CI)."""
    if not dataset_available():
        pytest.skip(f"CIFAR-10 in tfds format not found under TFDS_DATA_DIR={TFDS_DATA_DIR} "
                    f"(expected {os.path.join(TFDS_DATA_DIR, 'cifar10')}/<version>/)")
    return TFDS_DATA_DIR


@pytest.fixture
def smoke_config():
    """A fresh, unlocked tiny smoke config (each test may change it freely)."""
    return make_smoke_config()


@pytest.fixture(scope="session")
def smoke_config_factory():
    """`make_smoke_config`, for module-scoped fixtures."""
    return make_smoke_config
