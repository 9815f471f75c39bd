"""Where the train step's time goes: a `jax.profiler` trace of the real step, summed per operation.

    python -m benchmarks.profile_step --config=configs/dino_small.py --config.batch_size=4 \
        --config.compute_dtype=float32 [--steps=2] [--trace_dir=runs/profile] [--top=40]

Compiles the step `ssl_jax.main` jits (on in-memory batches of the config's shapes, like
`benchmarks.step_time`), runs two warm-up steps, then traces --steps steps with
`jax.profiler.trace` into --trace_dir (open it in TensorBoard's profile plugin or Perfetto).
It then prints a table of the XLA operations (one thunk each on the CPU) summed over the traced
steps, per step: milliseconds, the operation kind (`ynn_fusion` is a matmul, or a reduction,
handed to the YNNPACK library; `dot` a matmul XLA emits itself; the other fusions are XLA's
elementwise, reduction and copy loops), the output shape and the model operation it came from
(flax module path, `blocks_*` summing the transformer's blocks; `transpose(jvp(...))` is the
backward pass). The thunk times are wall-clock times under the profiler, which adds some
overhead; compare them with each other, and time the step itself with `benchmarks.step_time`.

Reading the trace needs the XPlane protobuf that tensorflow ships (installed with ssl_jax's
data pipeline); without tensorflow the trace is still written and the table is skipped.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ssl_jax import sharding, train
from ssl_jax.core.batch import example_batch

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 2, "Traced steps (after two warm-up steps).")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "runs/profile", "Where the profiler trace is written.")
_TOP = flags.DEFINE_integer("top", 40, "Rows of the table.")
flags.mark_flags_as_required(["config"])

_NOT_OPERATIONS = ("$", "Thunk", "Slinky", "PjitFunction", "CommonPjRt")  # Python frames and runtime bookkeeping


def hlo_instructions(hlo_text: str) -> dict[str, str]:
    """{instruction name: the rest of its line} of a compiled module's HLO text."""
    lines = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if match:
            lines.setdefault(match.group(1), match.group(2))
    return lines


def operation_key(name: str, instruction: str) -> tuple[str, str, str]:
    """(kind, output shape, model operation) of a thunk: `ynn_fusion.874` -> `ynn_fusion`, its
    shape, and its op_name metadata with `jit(train_step)/` dropped and block indices merged."""
    op_name = re.search(r'op_name="([^"]*)"', instruction)
    op_name = op_name.group(1).replace("jit(train_step)/", "") if op_name else ""
    return re.sub(r"\.\d+$", "", name), instruction.split(" ")[0], re.sub(r"blocks_\d+", "blocks_*", op_name)


def thunk_milliseconds(trace_dir: str, steps: int) -> dict[str, float]:
    """{thunk name: ms per step} from the newest XPlane file under trace_dir (needs tensorflow)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415 - optional, see the docstring

    path = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name and not name.startswith(_NOT_OPERATIONS):
                    totals[name] += event.duration_ps / 1e9 / steps
    return totals


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    run = train.setup(config, steps_per_epoch=1000)
    state = train.create_state(config, run)
    batch = sharding.to_global_batch(example_batch(config.augment, config.batch_size, jax.random.key(1)), run.mesh)
    step = train.jit_step(config, run).lower(state, batch).compile()
    for _ in range(2):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    start = time.perf_counter()
    with jax.profiler.trace(_TRACE_DIR.value):
        for _ in range(_STEPS.value):
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
    print(f"traced {_STEPS.value} steps, {(time.perf_counter() - start) / _STEPS.value * 1e3:.0f} ms/step under "
          f"the profiler; trace in {_TRACE_DIR.value}")
    try:
        per_thunk = thunk_milliseconds(_TRACE_DIR.value, _STEPS.value)
    except ImportError:
        print("tensorflow is not installed: no table (the trace opens in TensorBoard or Perfetto)")
        return
    instructions = hlo_instructions(step.as_text())
    per_operation = collections.Counter()
    for name, ms in per_thunk.items():
        per_operation[operation_key(name, instructions.get(name, ""))] += ms
    print(f"sum over operations: {sum(per_operation.values()):.0f} ms/step")
    per_kind = collections.Counter()
    for (kind, _, _), ms in per_operation.items():
        per_kind[kind] += ms
    print("per kind: " + ", ".join(f"{kind} {ms:.0f} ms" for kind, ms in per_kind.most_common(8)))
    print("| ms/step | kind | output | operation |")
    print("|---|---|---|---|")
    for (kind, shape, op_name), ms in per_operation.most_common(_TOP.value):
        print(f"| {ms:.1f} | {kind} | {shape} | {op_name} |")


if __name__ == "__main__":
    app.run(main)
