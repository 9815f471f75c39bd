"""Write the program XLA compiles for a config's train step, to compare two trees of the code.

    python -m benchmarks.compiled_program --config=configs/dino_small.py --config.batch_size=4 \
        --config.compute_dtype=float32 --out=/tmp/after
    (in a checkout of another commit, the same command with --out=/tmp/before)
    cmp /tmp/before.hlo /tmp/after.hlo

Writes OUT.stablehlo (the lowered step, without source locations) and OUT.hlo (XLA's optimised
HLO with its metadata and stack-frame tables removed): a refactor that leaves these files
byte-identical has not changed what runs, so it cannot have changed the step's speed. Needs no
tensorflow (`example_batch` arrays).
"""
from __future__ import annotations

import re

import jax
from absl import app, flags
from ml_collections import config_flags

from ssl_jax import sharding, train
from ssl_jax.core.batch import example_batch

def without_source_information(text: str) -> str:
    """The program text without what names source files and lines (locations, metadata, stack frames)."""
    text = re.sub(r"loc\([^)]*\)", "", text)
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    text = re.sub(r",? ?stack_frame_id=\d+", "", text)
    return re.sub(r"\nFileNames\n.*?\n\n\n", "\n\n", text, count=1, flags=re.S)  # name/location/frame tables


def write_program(config, out: str) -> None:
    """OUT.stablehlo and OUT.hlo of `config`'s jitted train step (schedules' epoch: 1000 steps)."""
    run = train.setup(config, steps_per_epoch=1000)
    state = train.create_state(config, run)
    batch = sharding.to_global_batch(example_batch(config.augment, config.batch_size, jax.random.key(0)), run.mesh)
    lowered = train.jit_step(config, run).lower(state, batch)
    for suffix, text in ((".stablehlo", lowered.as_text(debug_info=False)), (".hlo", lowered.compile().as_text())):
        with open(out + suffix, "w") as f:
            f.write(without_source_information(text))
        print(f"wrote {out}{suffix}")


def main(argv):
    del argv
    write_program(_CONFIG.value, _OUT.value)


if __name__ == "__main__":  # flags defined here only, so that tests can import write_program
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.", lock_config=True)
    _OUT = flags.DEFINE_string("out", None, "Output path prefix: OUT.stablehlo and OUT.hlo.")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
