"""Device mesh, multi-process start-up, global batch assembly and parameter sharding (FSDP).

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

Parameter sharding (FSDP) from rules that are config data: path regex -> PartitionSpec.

    config.parallel.fsdp = 4                 # mesh ("data", "fsdp") = (devices / 4, 4)
    config.parallel.rules = ((r"/kernel$", ("fsdp", None)), ...)

Every array leaf of the TrainState has a '/'-joined path (`params/backbone/blocks_0/attn/
qkv/kernel`, `opt_state/.../mu/backbone/...`, `teacher/...`); the first rule whose regex
matches it (re.search) gives its PartitionSpec, so one rule shards a parameter, its Adam
moments and its EMA teacher copy alike. A leaf no rule matches, or whose sharded
dimension the fsdp axis does not divide (small biases, norms, DINO's center, scalars),
stays replicated. The step is then jitted with these shardings as its state's in/out
shardings; XLA all-gathers each weight where it is used and reduce-scatters its gradient
(ZeRO-3 / FSDP), and the batch is split over both mesh axes.
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax.errors import UserError
from ssl_jax.tree_paths import path_name

ENV_COORDINATOR = "SSL_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SSL_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SSL_JAX_PROCESS_ID"


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value copied on every device (the state, by default)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: the leading (example) axis split over every device, i.e. over the
    mesh's `data` axis (and its `fsdp` axis when parameters are sharded)."""
    return NamedSharding(mesh, P(mesh.axis_names if len(mesh.axis_names) > 1 else mesh.axis_names[0]))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of `steps_per_call` stacked batches [S, B, ...]: each batch split as `batch_sharding`."""
    return NamedSharding(mesh, P(None, *batch_sharding(mesh).spec))


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


# Parameter sharding (FSDP) ---------------------------------------------------------------

PyTree = Any

FSDP_AXIS = "fsdp"

# The default rules (config_base.base_config): every large matrix of a ViT, a ResNet and
# their heads is sharded over its largest or input dimension; 1-D leaves stay replicated.
DEFAULT_RULES = (
    (r"conv[^/]*/kernel$", (None, None, None, FSDP_AXIS)),  # ResNet convolutions [kh, kw, in, out]: out
    (r"last_layer/v$", (None, FSDP_AXIS)),  # DINO's prototypes [bottleneck, K]: K (65536)
    (r"/kernel$", (FSDP_AXIS, None)),  # Dense [in, out]: in
    (r"(pos_embed|cls_token)$", (None, None, FSDP_AXIS)),  # ViT [1, N, D]: D
)


def leaf_spec(name: str, shape: tuple[int, ...], mesh: Mesh, rules) -> P:
    """The PartitionSpec of one leaf: its first matching rule's, or P() where that does not fit."""
    for pattern, spec in rules:
        if re.search(pattern, name):
            spec = tuple(spec)
            fits = len(spec) <= len(shape) and all(
                axis is None or (axis in mesh.shape and shape[i] % mesh.shape[axis] == 0)
                for i, axis in enumerate(spec))
            return P(*spec) if fits else P()
    return P()


def state_shardings(abstract_state: PyTree, mesh: Mesh, rules) -> PyTree:
    """NamedShardings for every leaf of a (possibly abstract) state; all replicated on a mesh
    without an `fsdp` axis of size > 1, so the default run compiles exactly as before."""
    if mesh.shape.get(FSDP_AXIS, 1) <= 1 or not rules:
        return jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract_state)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, leaf_spec(path_name(path), tuple(leaf.shape), mesh, rules)),
        abstract_state)


def bytes_per_device(abstract_state: PyTree, shardings: PyTree) -> int:
    """Bytes one device holds of the state under `shardings` (its largest shard of each leaf)."""
    leaves = jax.tree.leaves(abstract_state)
    total = 0
    for leaf, sharding in zip(leaves, jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue  # the rng: a few bytes
        shard = sharding.shard_shape(tuple(leaf.shape))
        count = 1
        for dim in shard:
            count *= dim
        total += count * leaf.dtype.itemsize
    return total
