"""kNN accuracy after a fixed wall-clock training budget: methods compared on equal compute.

    python -m benchmarks.knn_after_budget --config=configs/byol_resnet50.py:cifar10_vit \\
        --minutes=10 --workdir=runs/budget/byol

Starts `python -m ssl_jax.main` with kNN evaluation during training off, sends it
SIGTERM after --minutes of wall-clock time (start-up and compilation included; the
run finishes its step, writes a checkpoint and exits), then runs `--mode=eval` on
that (the latest) checkpoint. Prints one markdown table row: config, budget, the
checkpoint's step, median s/step, images/s at that median and the kNN accuracies.
Extra --config.* overrides after `--` are passed to both runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file and preset, e.g. configs/dino_small.py:cifar10.")
_MINUTES = flags.DEFINE_float("minutes", 10.0, "Wall-clock budget of the training run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Fresh directory for the run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    overrides = list(argv[1:])
    if os.path.exists(os.path.join(_WORKDIR.value, "checkpoints")):
        sys.exit(f"error: {_WORKDIR.value} already holds a run; the budget must start from scratch")
    base = [sys.executable, "-m", "ssl_jax.main", f"--config={_CONFIG.value}", f"--workdir={_WORKDIR.value}",
            *overrides]
    train = subprocess.Popen(base + ["--config.eval.every_steps=0"])
    try:
        train.wait(timeout=60 * _MINUTES.value)
    except subprocess.TimeoutExpired:
        train.send_signal(signal.SIGTERM)
        train.wait()
    if train.returncode != 0:
        sys.exit(f"error: training exited with {train.returncode}")
    metrics_file = os.path.join(_WORKDIR.value, "metrics", "metrics.jsonl")
    records = [json.loads(line) for line in open(metrics_file)] if os.path.exists(metrics_file) else []
    records = [r for r in records if r["split"] == "train"]
    if not records:
        sys.exit(f"error: no training step finished within {_MINUTES.value} minutes; raise --minutes")
    checkpoints = os.path.join(_WORKDIR.value, "checkpoints")
    step = max(int(name) for name in os.listdir(checkpoints) if name.isdigit())  # the one SIGTERM wrote
    start = time.time()
    subprocess.run(base + ["--mode=eval", f"--step={step}"], check=True)
    eval_seconds = time.time() - start
    with open(os.path.join(checkpoints, f"eval_{step}.json")) as f:
        knn = {k: v for k, v in json.load(f).items() if k.startswith("knn")}
    step_times = sorted(r["step_time"] for r in records)
    median = step_times[len(step_times) // 2]
    batch = records[-1]["images_per_sec"] * records[-1]["step_time"]
    print("| config | budget | steps | s/step (median) | images/s | " + " | ".join(knn) + " | eval s |")
    print("|---|---|---|---|---|" + "---|" * len(knn) + "---|")
    print(f"| {_CONFIG.value} | {_MINUTES.value:g} min | {step} | {median:.2f} | {batch / median:.0f} | "
          + " | ".join(f"{100 * v:.2f}%" for v in knn.values()) + f" | {eval_seconds:.0f} |")


if __name__ == "__main__":
    app.run(main)
