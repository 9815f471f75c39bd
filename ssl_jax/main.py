"""Command line: python -m ssl_jax.main --config=configs/dino_small.py[:preset] --workdir=DIR

  --mode=train (default) trains, resuming from WORKDIR/checkpoints if present.
  --mode=eval runs the kNN evaluation on the latest (or --step) checkpoint.
Override any config field with --config.path.to.field=value; unknown fields are errors.
"""
from __future__ import annotations

import re
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unknown --config.x override as one clear line, not a traceback.

    ml_collections raises KeyError/AttributeError for a field the locked config does not
    have; other flag errors get absl's usage message.
    """
    try:
        return app.parse_flags_with_usage(argv)
    except (KeyError, AttributeError) as e:
        text = str(e)
        suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
        field = suggestion.group(2) if suggestion else re.search(r"\w+", text).group(0)
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        culprit = next((o for o in overrides if field in o.split(".")), "a --config.* override")
        hint = f' Did you mean "{suggestion.group(1)}"?' if suggestion else ""
        sys.exit(f"error: unknown config field {field!r} in {culprit}.{hint} "
                 f"The available fields are those of the config file (or --helpfull).")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
