"""Time ssl_jax's real train step (the one `ssl_jax.main` jits) on in-memory batches.

    python -m benchmarks.step_time --config=configs/dino_small.py:cifar10 [--steps=10]

Needs no tensorflow: batches are `ssl_jax.batch.example_batch` arrays of the configured
shapes, so it runs on accelerator hosts with only JAX installed. Prints one table row:
compile time, median ms/step after warm-up, images/s, GFLOP per step (XLA cost analysis),
achieved GFLOP/s and its fraction of a float32 matmul peak measured in the same process.
The side-by-side PyTorch reference column is not part of this script yet.

    python -m benchmarks.step_time --config=configs/mae_small.py:cifar10 --compare=method.encode_all_tokens=True

`--compare=KEY=VALUE[,KEY=VALUE...]` builds a second variant of the config in the same process
and times the two alternately, step by step, so that load from other processes on a shared
machine hits both alike; it prints a row per variant and their ratio.
"""
from __future__ import annotations

import ast
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from ssl_jax import sharding, train
from ssl_jax.batch import example_batch

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 1000, "Schedules' epoch length (no dataset is read).")
_COMPARE = flags.DEFINE_string("compare", "", "KEY=VALUE[,KEY=VALUE...]: also time the config with these "
                               "overrides, alternating steps with the unchanged config (same process).")
flags.mark_flags_as_required(["config"])


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """Best-of float32 FLOP/s of a [size, size] @ [size, size] jitted matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


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


def compile_step(config):
    """(compiled step, state, global batch, compile seconds, FLOP per step) for `config`."""
    run = train.setup(config, steps_per_epoch=_STEPS_PER_EPOCH.value)
    state = train.create_state(config, run)
    batch = sharding.to_global_batch(example_batch(config.augment, config.batch_size, jax.random.key(1)), run.mesh)
    start = time.perf_counter()
    step = train.jit_step(config, run).lower(state, batch).compile()  # the config's FSDP / accumulation
    compile_seconds = time.perf_counter() - start
    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    return step, state, batch, compile_seconds, train.step_flops(step), run.mesh.devices.size


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    configs = [("", _CONFIG.value)]
    if _COMPARE.value:
        configs.append((f" [{_COMPARE.value}]", with_overrides(_CONFIG.value, _COMPARE.value)))
    variants = [compile_step(config) for _, config in configs]
    states = [v[1] for v in variants]
    times = [[] for _ in variants]
    for _ in range(_STEPS.value):
        for i, (step, _, batch, *_) in enumerate(variants):  # alternate: shared-machine load hits all alike
            start = time.perf_counter()
            states[i], metrics = step(states[i], batch)
            jax.block_until_ready(metrics)
            times[i].append(time.perf_counter() - start)
    peak = matmul_peak_flops()
    print(f"| config | devices | batch | compile s | ms/step | images/s | GFLOP/step | GFLOP/s | matmul peak GFLOP/s | of peak |")
    print(f"|---|---|---|---|---|---|---|---|---|---|")
    medians = []
    for (label, config), (_, _, _, compile_seconds, flops, num_devices), step_times in zip(configs, variants, times):
        seconds = float(np.median(step_times))
        medians.append(seconds)
        devices = f"{num_devices}x {jax.devices()[0].device_kind}"
        print(f"| {config.method.name} {describe_model(config.model)}{label} | {devices} | {config.batch_size} "
              f"| {compile_seconds:.1f} | {1000 * seconds:.0f} | {config.batch_size / seconds:.1f} | {flops / 1e9:.1f} "
              f"| {flops / seconds / 1e9:.1f} | {peak / 1e9:.1f} | {flops / seconds / peak:.0%} |")
    if len(medians) == 2:
        print(f"median step time of [{_COMPARE.value}] / unchanged: {medians[1] / medians[0]:.2f}x "
              f"({_STEPS.value} alternating steps each)")


if __name__ == "__main__":
    app.run(main)
