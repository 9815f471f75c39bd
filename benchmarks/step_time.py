"""Time ssl_jax's real train step (the one `ssl_jax.main` jits) beside the PyTorch reference.

    python -m benchmarks.step_time --config=configs/dino_small.py --config.batch_size=8 \
        --config.compute_dtype=float32 [--steps=10] [--reference=pytorch|none]

In one process: ssl_jax's step and the PyTorch reference for the same config and batch
shapes (timm backbone + lightly heads/losses, `benchmarks/pytorch_reference.py`, from the
`[bench]` extra), each warmed up, then timed alternately step by step (load from other
processes hits both alike), median of --steps. Prints a table: compile time, ms/step,
images/s, model GFLOP per step (XLA's cost analysis of ssl_jax's step, used for both rows:
the same model), achieved GFLOP/s and its fraction of the matmul peak measured in the same
run (the best square matmul in the compute dtype, 2048 on a CPU and 8192 on an accelerator,
sampled after every round of steps and 10 times at the end: on a GPU in bfloat16 that fraction
is the model-FLOPs utilisation), peak memory, and the ssl_jax / PyTorch speed ratio (> 1: ssl_jax is faster).

With `--config.steps_per_call=S` the step is called as `ssl_jax.main` calls it then: S steps per
call (a `lax.scan`, `ssl_jax.core.step.jit_train_steps`), each timed call's time divided by S.

Needs no tensorflow: batches are `ssl_jax.core.batch.example_batch` arrays of the configured
shapes, so it runs on accelerator hosts with only JAX (and torch) installed.

    python -m benchmarks.step_time --config=configs/mae_small.py:cifar10 --compare=method.encode_all_tokens=True

`--compare=KEY=VALUE[,KEY=VALUE...]` builds a second ssl_jax variant of the config in the same
process and times it in the same alternation; it prints a row per variant and their ratio.
"""
from __future__ import annotations

import ast
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from ssl_jax import sharding, train
from ssl_jax.core.batch import batch_field_names, example_batch, field_shape

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 1000, "Schedules' epoch length (no dataset is read).")
_COMPARE = flags.DEFINE_string("compare", "", "KEY=VALUE[,KEY=VALUE...]: also time the config with these "
                               "overrides, alternating steps with the unchanged config (same process).")
_REFERENCE = flags.DEFINE_enum("reference", "pytorch", ["pytorch", "none"],
                               "Also time the PyTorch reference (needs the [bench] extra), or not.")
flags.mark_flags_as_required(["config"])


class MatmulPeak:
    """The FLOP/s of a jitted [size, size] @ [size, size] matmul in `dtype` (the step's compute
    dtype, so that in bfloat16 on a GPU the fraction of it is the model-FLOPs utilisation) on the default device,
    best of every `sample()`: sampled between the timed steps as well as after them, so a
    machine whose speed drifts during the run is credited with its best moment, not a slow one.
    2048 on a CPU (about 40 ms); 8192 on an accelerator, where a 2048 matmul is too short to
    time against the launch overhead."""

    def __init__(self, dtype: str = "float32", size: int | None = None):
        self.size = size or (2048 if jax.default_backend() == "cpu" else 8192)
        self.dtype = dtype
        self.a = jax.random.normal(jax.random.key(0), (self.size, self.size), jnp.dtype(dtype))
        self.matmul = jax.jit(lambda x, y: x @ y)
        self.matmul(self.a, self.a).block_until_ready()
        self.best_seconds = float("inf")

    def sample(self, repeats: int = 1) -> None:
        for _ in range(repeats):
            start = time.perf_counter()
            self.matmul(self.a, self.a).block_until_ready()
            self.best_seconds = min(self.best_seconds, time.perf_counter() - start)

    @property
    def flops(self) -> float:
        return 2 * self.size**3 / self.best_seconds


def describe_model(model_cfg) -> str:
    """'vit-small p16', 'vit-custom p8', 'resnet50', 'resnet18 (cifar stem)'."""
    if model_cfg.name == "resnet":
        return f"resnet{model_cfg.depth}" + (" (cifar stem)" if model_cfg.cifar_stem else "")
    return f"vit-{model_cfg.size} p{model_cfg.patch_size}"


def with_overrides(config, spec: str):
    """A copy of `config` with 'a.b=VALUE,c=VALUE' applied (values parsed as Python literals)."""
    variant = config.copy_and_resolve_references()
    with variant.unlocked():
        for item in spec.split(","):
            key, value = item.split("=", 1)
            *parents, leaf = key.strip().split(".")
            node = variant
            for name in parents:
                node = node[name]
            try:
                node[leaf] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                node[leaf] = value
    return variant


class Contender(NamedTuple):
    """One timed row: `run()` does `steps_per_call` synchronised training steps."""

    label: str
    run: Callable[[], None]
    compile_seconds: float | None
    peak_memory_bytes: int | None
    steps_per_call: int = 1


def jax_contender(label: str, config, count_flops: bool = True) -> tuple[Contender, float, int]:
    """(contender, FLOP per step or 0 unless `count_flops`, device count) for ssl_jax's jitted step
    on `config`, called as `ssl_jax.main` calls it: config.steps_per_call steps per call (over
    copies of one batch)."""
    run = train.setup(config, steps_per_epoch=_STEPS_PER_EPOCH.value)
    state = train.create_state(config, run)
    per_call = config.get("steps_per_call", 1)
    local = example_batch(config.augment, config.batch_size, jax.random.key(1))
    for field in batch_field_names(config):  # labels, indices, token ids: ones (a valid class, image, token)
        local[field] = np.ones((config.batch_size,) + field_shape(config, field), np.int32)
    batch = (sharding.to_global_batch(local, run.mesh) if per_call == 1
             else sharding.to_global_batches([local] * per_call, run.mesh))
    start = time.perf_counter()
    step = train.jit_step(config, run, per_call).lower(state, batch).compile()  # the config's FSDP / accumulation
    compile_seconds = time.perf_counter() - start
    holder = {"state": state}

    def call():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)

    call()  # warm-up
    memory = step.memory_analysis()
    peak = None if memory is None else memory.argument_size_in_bytes + memory.temp_size_in_bytes
    contender = Contender(label, call, compile_seconds, peak, per_call)
    if not count_flops:
        return contender, 0.0, run.mesh.devices.size
    if per_call > 1:  # one step's FLOPs, from the one-step function (not from the scan's loop)
        single = sharding.to_global_batch(local, run.mesh)
        step = train.jit_step(config, run).lower(holder["state"], single).compile()
    return contender, train.step_flops(step), run.mesh.devices.size


def pytorch_contender(config) -> Contender:
    """The PyTorch reference (benchmarks/pytorch_reference.py) on a batch of the same shapes."""
    try:
        from benchmarks.pytorch_reference import Reference
    except ImportError as e:
        raise app.UsageError(f"the PyTorch reference needs the [bench] extra ({e}); pip install -e '.[bench]', "
                             f"or pass --reference=none") from e
    reference = Reference(config, example_batch(config.augment, config.batch_size, jax.random.key(1)))
    for _ in range(2):  # warm-up: allocator, autotuning
        reference.step()
    return Contender("PyTorch (timm + lightly)", reference.step, None, reference.peak_memory_bytes())


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    name = f"{config.method.name} {describe_model(config.model)}"
    contender, flops, num_devices = jax_contender(f"ssl_jax {name}", config)
    contenders = [contender]
    if _COMPARE.value:
        contenders.append(jax_contender(f"ssl_jax {name} [{_COMPARE.value}]",
                                        with_overrides(config, _COMPARE.value), count_flops=False)[0])
    if _REFERENCE.value == "pytorch":
        contenders.append(pytorch_contender(config))
    times = [[] for _ in contenders]
    matmul_peak = MatmulPeak(config.compute_dtype)
    for _ in range(_STEPS.value):
        for contender, contender_times in zip(contenders, times):  # alternate, step by step
            start = time.perf_counter()
            contender.run()
            contender_times.append((time.perf_counter() - start) / contender.steps_per_call)
        matmul_peak.sample()
    matmul_peak.sample(repeats=10)
    peak = matmul_peak.flops
    medians = [float(np.median(t)) for t in times]
    print(f"{num_devices}x {jax.devices()[0].device_kind}, batch {config.batch_size}, "
          f"{config.compute_dtype}, median of {_STEPS.value} alternating steps, model "
          f"{flops / 1e9:.4g} GFLOP/step (XLA cost analysis), {matmul_peak.dtype} matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s")
    print("| step | compile s | ms/step | images/s | GFLOP/s | of peak | peak memory MiB |")
    print("|---|---|---|---|---|---|---|")
    for contender, seconds in zip(contenders, medians):
        compile_s = "-" if contender.compile_seconds is None else f"{contender.compile_seconds:.1f}"
        memory = "not measured" if contender.peak_memory_bytes is None else f"{contender.peak_memory_bytes / 2**20:.0f}"
        print(f"| {contender.label} | {compile_s} | {1000 * seconds:.0f} | {config.batch_size / seconds:.1f} "
              f"| {flops / seconds / 1e9:.1f} | {flops / seconds / peak:.0%} | {memory} |")
    jax_rows = contenders[:2] if _COMPARE.value else contenders[:1]
    for other, other_seconds in zip(contenders[1:], medians[1:]):
        for contender, seconds in zip(jax_rows, medians):
            if contender is not other:
                print(f"speed ratio, {contender.label} / {other.label}: {other_seconds / seconds:.2f}x "
                      f"(the second's ms/step over the first's; > 1: the first is faster)")


if __name__ == "__main__":
    app.run(main)
