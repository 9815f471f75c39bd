"""Command line: python -m ssl_jax.main --config=configs/dino_small.py[:preset] --workdir=DIR

  --mode=train (default) trains, resuming from WORKDIR/checkpoints if present.
  --mode=eval runs the kNN evaluation on the latest (or --step) checkpoint.
Override any config field with --config.path.to.field=value; unknown fields are errors.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dino_small.py:cifar10.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train, or eval a saved checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "With --mode=eval: the checkpoint step (default: latest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # orbax and tfds log every file they touch at INFO; keep the console to our progress lines.
    logging.set_verbosity(logging.WARNING)
    from ssl_jax import train

    try:
        if _MODE.value == "train":
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        else:
            train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
