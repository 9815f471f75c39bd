"""Device mesh, multi-host start-up and global batch assembly."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from ssl_jax.step import batch_sharding


def maybe_initialize_distributed(cfg) -> None:
    """`jax.distributed.initialize` when the run spans several processes.

    cfg.distributed: coordinator_address / num_processes / process_id; all None on
    one process. On Cloud TPU and SLURM, jax fills them in itself when
    `cfg.distributed.auto` is set.
    """
    dist = cfg.get("distributed")
    if dist is None:
        return
    if dist.get("auto"):
        jax.distributed.initialize()
    elif dist.get("num_processes") and dist.num_processes > 1:
        jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                                   num_processes=dist.num_processes, process_id=dist.process_id)


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes, axis name `data`."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def check_global_batch(global_batch: int, mesh: Mesh, field: str = "batch_size") -> int:
    """Returns the per-process batch, or raises a clear error naming the config `field`
    if the global batch does not split evenly over the devices."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(f"{field}={global_batch} is not divisible by the number of devices ({devices}); "
                         f"set --config.{field} to a multiple of {devices}")
    return global_batch // jax.process_count()


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Per-process numpy batch -> global jax.Array pytree sharded on the mesh's `data` axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
