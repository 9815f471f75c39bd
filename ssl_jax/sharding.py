"""Device mesh, multi-process start-up and global batch assembly.

Several processes (hosts, or local CPU processes in the tests) join one run through
`jax.distributed.initialize`; each then reads its own shard of the data and the
global batch is assembled with `jax.make_array_from_process_local_data`.

Where the process settings come from, first match wins:
  1. environment variables SSL_JAX_COORDINATOR (host:port), SSL_JAX_NUM_PROCESSES and
     SSL_JAX_PROCESS_ID (what `launch/local_multiprocess.sh` sets), so every process
     runs the very same command line (and writes the same config.json);
  2. `config.distributed.auto=True`: jax finds them itself (Cloud TPU, SLURM);
  3. `config.distributed.{coordinator_address,num_processes,process_id}`.
One process (the default) initialises nothing.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

from ssl_jax.errors import UserError
from ssl_jax.step import batch_sharding, stacked_batch_sharding

ENV_COORDINATOR = "SSL_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SSL_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SSL_JAX_PROCESS_ID"


def process_settings(cfg) -> dict | None:
    """The explicit multi-process settings {coordinator_address, num_processes, process_id},
    from the environment or else config.distributed; None for one process (or `auto`)."""
    if os.environ.get(ENV_NUM_PROCESSES):
        missing = [name for name in (ENV_COORDINATOR, ENV_PROCESS_ID) if not os.environ.get(name)]
        if missing:
            raise UserError(f"{ENV_NUM_PROCESSES} is set but {' and '.join(missing)} not; set all three "
                            f"(launch/local_multiprocess.sh does)")
        settings = {"coordinator_address": os.environ[ENV_COORDINATOR],
                    "num_processes": int(os.environ[ENV_NUM_PROCESSES]),
                    "process_id": int(os.environ[ENV_PROCESS_ID])}
    else:
        dist = cfg.get("distributed") or {}
        if dist.get("auto") or (dist.get("num_processes") or 1) <= 1:
            return None
        settings = {key: dist.get(key) for key in ("coordinator_address", "num_processes", "process_id")}
        if not settings["coordinator_address"]:
            raise UserError(f"config.distributed.num_processes={settings['num_processes']} needs "
                            f"--config.distributed.coordinator_address=HOST:PORT (process 0's host)")
    if settings["num_processes"] <= 1:
        return None
    if not 0 <= settings["process_id"] < settings["num_processes"]:
        raise UserError(f"process id {settings['process_id']} is outside [0, {settings['num_processes']}); "
                        f"give each process a distinct id from 0 to num_processes - 1")
    return settings


def maybe_initialize_distributed(cfg) -> None:
    """`jax.distributed.initialize` when the run spans several processes (idempotent).

    CPU cross-process collectives use gloo (jax's CPU backend has none by default);
    the setting is ignored by GPU and TPU backends. On the CPU backend the persistent
    compilation cache is then switched off: train steps loaded from it aborted in gloo
    with "collective mismatch" (3 of 3 SimCLR smoke runs here; all freshly compiled ones passed).
    """
    if jax.distributed.is_initialized():
        return
    settings = process_settings(cfg)
    auto = bool((cfg.get("distributed") or {}).get("auto")) and settings is None
    if settings is None and not auto:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**(settings or {}))
    if jax.default_backend() == "cpu":
        jax.config.update("jax_enable_compilation_cache", False)


def make_mesh(fsdp: int = 1) -> Mesh:
    """All devices of all processes as a mesh: 1-D `("data",)`, or `("data", "fsdp")` with
    `fsdp` devices per parameter shard group (consecutive devices, so within a host)."""
    devices = np.asarray(jax.devices())
    if fsdp <= 1:
        return Mesh(devices, ("data",))
    if devices.size % fsdp:
        raise UserError(f"parallel.fsdp={fsdp} does not divide the {devices.size} devices; set "
                        f"--config.parallel.fsdp to a divisor of {devices.size}")
    return Mesh(devices.reshape(-1, fsdp), ("data", "fsdp"))


def describe_mesh(mesh: Mesh) -> str:
    """'8 devices' or '8 devices (data 2 x fsdp 4)', plus the process count when > 1."""
    text = f"{mesh.devices.size} device(s)"
    if len(mesh.axis_names) > 1:
        text += " (" + " x ".join(f"{name} {size}" for name, size in mesh.shape.items()) + ")"
    if jax.process_count() > 1:
        text += f" in {jax.process_count()} processes"
    return text


def check_global_batch(global_batch: int, mesh: Mesh, field: str = "batch_size", accum_steps: int = 1) -> int:
    """Returns the per-process batch, or raises a clear error naming the config `field` if the
    global batch (each of its `accum_steps` micro-batches) does not split evenly over the devices."""
    devices = mesh.devices.size
    if global_batch % (devices * accum_steps):
        axes = "" if len(mesh.axis_names) == 1 else " = " + " x ".join(f"{n} {s}" for n, s in mesh.shape.items())
        per = f"{accum_steps} micro-batches (accum_steps) x " if accum_steps > 1 else ""
        raise UserError(f"{field}={global_batch} is not divisible by {per}the number of devices "
                        f"({devices}{axes}); set --config.{field} to a multiple of {devices * accum_steps}")
    return global_batch // jax.process_count()


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Per-process numpy batch -> global jax.Array pytree, its leading axis split over every device."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def to_global_batches(local_batches: list[dict], mesh: Mesh) -> dict:
    """Consecutive per-process numpy batches -> one global jax.Array pytree [S, B, ...], as
    `jit_train_steps` takes them: stacked on a new leading axis, each batch split over every device."""
    sharding = stacked_batch_sharding(mesh)
    return jax.tree.map(lambda *xs: jax.make_array_from_process_local_data(sharding, np.stack(xs)), *local_batches)
