"""The image-text losses as the batch grows: time and per-device memory of loss + gradient.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.image_text_loss \
        [--batches=256,1024,4096] [--dim=512] [--steps=5]

For each global batch B, on every device of the default backend (8 simulated CPU devices with the
flag above), the value and gradient w.r.t. both embeddings [B, D] (sharded over the devices, as the
train step shards the batch) of: CLIP's softmax loss and SigLIP's sigmoid loss written over the
global batch (XLA inserts the collectives; each device may hold the [B, B] logits or a slice of them),
and SigLIP's chunked ring (`siglip_loss_chunked`: each device holds [B/n, B/n] logits at a time).
Prints a table: median ms per call over --steps timed calls after a warm-up, and the compiled
program's temporary memory per device (`memory_analysis().temp_size_in_bytes`), plus the logits
a device would hold if it built the global [B, B] matrix in float32.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax.image_text_losses import clip_loss, siglip_loss, siglip_loss_chunked

_BATCHES = flags.DEFINE_list("batches", ["256", "1024", "4096"], "Global batch sizes.")
_DIM = flags.DEFINE_integer("dim", 512, "Embedding width D.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per loss and batch (median).")


def losses(mesh: Mesh) -> dict:
    """name -> loss(zimg [B, D], ztxt [B, D]) with the methods' initial temperatures."""
    t, b = jnp.float32(10.0), jnp.float32(-10.0)  # SigLIP: t' = log 10, b = -10
    return {"CLIP softmax": lambda x, y: clip_loss(x, y, jnp.float32(1 / 0.07)),
            "SigLIP sigmoid, global": lambda x, y: siglip_loss(x, y, t, b),
            "SigLIP sigmoid, chunked ring": lambda x, y: siglip_loss_chunked(x, y, t, b, mesh)}


def measure(fn, zimg, ztxt, steps: int) -> tuple[float, int]:
    """(median ms of value-and-grad, temporary bytes per device of the compiled program)."""
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(zimg, ztxt).compile()
    jax.block_until_ready(compiled(zimg, ztxt))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(zimg, ztxt))
        times.append(time.perf_counter() - start)
    memory = compiled.memory_analysis()
    return 1000 * float(np.median(times)), int(getattr(memory, "temp_size_in_bytes", 0) if memory else 0)


def main(argv):
    del argv
    devices = jax.devices()
    mesh = Mesh(np.asarray(devices), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    print(f"{len(devices)} {devices[0].platform} device(s), D = {_DIM.value}, float32, value and gradient")
    print("| B | loss | ms / call | temp MiB / device | global [B, B] logits MiB |")
    print("|---|---|---|---|---|")
    for batch in map(int, _BATCHES.value):
        keys = jax.random.split(jax.random.key(batch), 2)
        zimg, ztxt = (jax.device_put(z / jnp.linalg.norm(z, axis=-1, keepdims=True), sharding)
                      for z in (jax.random.normal(k, (batch, _DIM.value)) for k in keys))
        for name, fn in losses(mesh).items():
            ms, temp = measure(fn, zimg, ztxt, _STEPS.value)
            print(f"| {batch} | {name} | {ms:.1f} | {temp / 2**20:.1f} | {batch * batch * 4 / 2**20:.1f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
