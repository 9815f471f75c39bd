"""Input pipeline throughput: images/s of the real tf.data multi-crop pipeline, per CPU core.

    python -m benchmarks.input_pipeline --config=configs/dino_small.py --cores=1 \\
        [--batches=20] [--step_images_per_sec=N]

Runs `ssl_jax.data.pipeline.train_batches` (the iterator `ssl_jax.main` trains from: tfds
read, decode, the config's augmentation, batching) pinned to --cores CPU cores
(`os.sched_setaffinity`, set before tensorflow starts its thread pools), skips the first
batches (pipeline start-up and autotuning), and prints images/s and images/s per core. With
--step_images_per_sec (a step's throughput from `benchmarks.step_time`), it also prints how
many such cores the step needs so that it never waits on data.

The images come from the configured tfds dataset (`$TFDS_DATA_DIR`); with CIFAR-10 the
decode is of 32 px PNGs, much cheaper than ImageNet's JPEGs, while the crops are the
config's sizes (224 / 96 px for the paper presets), so the augmentation cost is the real one.
"""
from __future__ import annotations

import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.", lock_config=True)
_CORES = flags.DEFINE_integer("cores", 1, "CPU cores the pipeline may use (0: all of this process's).")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches, after --skip.")
_SKIP = flags.DEFINE_integer("skip", 3, "Untimed batches first (start-up, autotuning).")
_STEP_RATE = flags.DEFINE_float("step_images_per_sec", 0.0, "The step's images/s, to report the cores it needs.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    available = sorted(os.sched_getaffinity(0))
    cores = available if _CORES.value <= 0 else available[:_CORES.value]
    if _CORES.value > len(available):
        raise app.UsageError(f"--cores={_CORES.value} but this process may use only {len(available)} cores")
    os.sched_setaffinity(0, cores)
    from ssl_jax.data import pipeline  # imports tensorflow: after the affinity is set

    config = _CONFIG.value
    batches = pipeline.train_batches(config, start_step=0, steps_per_epoch=_SKIP.value + _BATCHES.value,
                                     local_batch=config.batch_size)
    for _ in range(_SKIP.value):
        next(batches)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(batches)
    seconds = time.perf_counter() - start
    rate = _BATCHES.value * config.batch_size / seconds
    crops = (f"{config.augment.global_crops.number}x{config.augment.global_crops.size}"
             + (f" + {config.augment.local_crops.number}x{config.augment.local_crops.size}"
                if config.augment.local_crops.number else ""))
    print("| dataset | crops | batch | cores | images/s | images/s per core |")
    print("|---|---|---|---|---|---|")
    print(f"| {config.dataset.name} | {crops} | {config.batch_size} | {len(cores)} | {rate:.1f} "
          f"| {rate / len(cores):.1f} |")
    if _STEP_RATE.value:
        print(f"cores needed to feed a step at {_STEP_RATE.value:.1f} images/s: "
              f"{_STEP_RATE.value / (rate / len(cores)):.1f}")


if __name__ == "__main__":
    app.run(main)
