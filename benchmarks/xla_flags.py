"""Which XLA CPU flags speed up the train step: each flag set timed in its own process.

    python -m benchmarks.xla_flags --config=configs/dino_small.py --steps=5 -- \\
        --config.batch_size=4 --config.compute_dtype=float32

(arguments after `--` go to every `benchmarks.step_time` run unchanged).

XLA reads XLA_FLAGS once per process, so every candidate runs `benchmarks.step_time
--reference=none` in a fresh subprocess with its flags (the same jitted step `ssl_jax.main`
uses; one after the other, never side by side). Prints a table: flags, compile s, ms/step,
GFLOP/s, of peak, and the speed-up over the default flags (> 1: faster). The candidates are
the CPU backend's library and codegen switches of this jaxlib (`CANDIDATES`); extra sets can
be passed with --flags='--xla_a=1 --xla_b=2;--xla_c=3'.
"""
from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags

CANDIDATES = (
    "",  # XLA's defaults
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_use_fusion_emitters=false",
)

_CONFIG = flags.DEFINE_string("config", None, "Config file and preset, e.g. configs/dino_small.py.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per flag set.")
_FLAGS = flags.DEFINE_string("flags", "", "Extra ';'-separated flag sets to time after CANDIDATES.")
flags.mark_flags_as_required(["config"])


def time_flag_set(xla_flags: str, step_time_args: list[str]) -> list[str] | str:
    """The ssl_jax row's cells [compile s, ms/step, images/s, GFLOP/s, of peak, memory] from one
    `benchmarks.step_time` process under XLA_FLAGS=xla_flags, or the error it ended with."""
    env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), xla_flags])))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.step_time", "--reference=none", *step_time_args],
                          env=env, capture_output=True, text=True)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ssl_jax")]
    if proc.returncode != 0 or not rows:
        return (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
    return [cell.strip() for cell in rows[0].strip("|").split("|")][1:]


def main(argv):
    step_time_args = [f"--config={_CONFIG.value}", f"--steps={_STEPS.value}", *argv[1:]]
    candidates = list(CANDIDATES) + [s.strip() for s in _FLAGS.value.split(";") if s.strip()]
    print(f"benchmarks.step_time {' '.join(step_time_args)}, one process per flag set")
    print("| XLA_FLAGS | compile s | ms/step | GFLOP/s | of peak | speed-up |")
    print("|---|---|---|---|---|---|")
    default_ms = None
    for xla_flags in candidates:
        cells = time_flag_set(xla_flags, step_time_args)
        if isinstance(cells, str):
            print(f"| `{xla_flags or '(defaults)'}` | failed: {cells} | | | | |", flush=True)
            continue
        compile_s, ms, _, gflops, peak, _ = cells
        default_ms = default_ms or float(ms)
        print(f"| `{xla_flags or '(defaults)'}` | {compile_s} | {ms} | {gflops} | {peak} | "
              f"{default_ms / float(ms):.2f}x |", flush=True)


if __name__ == "__main__":
    app.run(main)
