"""Per-device parameter + optimiser memory of the DINO train step, with and without FSDP.

    python -m benchmarks.fsdp_memory [--sizes=small,base,large] [--devices=8]

For each ViT size it builds the DINO ImageNet recipe (ViT-x/16, 65536-prototype head,
AdamW, EMA teacher), lowers and compiles the real train step on `--devices` simulated CPU
devices with the state replicated and with `parallel.fsdp=devices` (the default sharding
rules), and prints XLA's memory analysis of the compiled step, per device: the arguments
(the TrainState: params, Adam moments, teacher, center; plus a 1-image-per-device batch of
2 small 32 px crops, so activations stay negligible) and the temporaries. No arrays of the
model are ever created: the state is abstract (jax.eval_shape), only compiled against.
"""
from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:  # simulated devices must be requested before jax starts
    _count = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_count}"

import time  # noqa: E402

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from ssl_jax import sharding, train  # noqa: E402
from ssl_jax.core.batch import example_batch  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["small", "base", "large"], "ViT sizes (vit.VIT_SIZES).")
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (= the fsdp axis).")

MIB = 2**20


def dino_config(size: str, fsdp: int):
    """configs/dino_small.py's paper recipe with ViT-`size`/16 and 32 px crops (memory of the state only)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import dino_small

    config = dino_small.get_config()
    config.model.size = size
    config.batch_size = _DEVICES.value
    config.augment.global_crops.size = 32
    config.augment.local_crops.number = 0
    config.compute_dtype = "float32"
    config.parallel.fsdp = fsdp
    return config


def measure(size: str, fsdp: int) -> dict:
    """Compiled-step memory analysis (bytes per device) and parameter count for one setting."""
    config = dino_config(size, fsdp)
    run = train.setup(config, steps_per_epoch=1000)
    shardings = train.state_sharding(config, run)
    abstract = jax.eval_shape(train.init_state_fn(config, run), jax.random.key(0))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    batch = example_batch(config.augment, config.batch_size)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(run.mesh)),
                         batch)
    start = time.time()
    compiled = train.jit_step(config, run).lower(abstract, batch).compile()
    memory = compiled.memory_analysis()
    batch_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch)) // run.mesh.devices.size
    return {"params": sum(x.size for x in jax.tree.leaves(abstract.params)),
            "state": memory.argument_size_in_bytes - batch_bytes,
            "state_by_shapes": sharding.bytes_per_device(abstract, shardings),
            "temp": memory.temp_size_in_bytes, "compile_s": time.time() - start}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    devices = jax.device_count()
    print(f"DINO ViT-x/16 + 65536-prototype head, AdamW, EMA teacher; {devices} simulated CPU devices; "
          f"MiB per device from the compiled step's memory_analysis()")
    print("| model | params | state, replicated | state, FSDP over "
          f"{devices} | temporaries, replicated | temporaries, FSDP |")
    print("|---|---|---|---|---|---|")
    for size in _SIZES.value:
        plain, sharded = measure(size, 1), measure(size, devices)
        print(f"| ViT-{size[0].upper()}/16 | {plain['params'] / 1e6:.1f} M | {plain['state'] / MIB:.0f} | "
              f"{sharded['state'] / MIB:.0f} (shard shapes: {sharded['state_by_shapes'] / MIB:.0f}) | "
              f"{plain['temp'] / MIB:.0f} | {sharded['temp'] / MIB:.0f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
