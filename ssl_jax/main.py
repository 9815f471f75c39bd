"""Command line: python -m ssl_jax.main --config=configs/dino_small.py[:preset] --workdir=DIR

  --mode=train (default) trains, resuming from WORKDIR/checkpoints if present.
  --mode=eval runs the kNN evaluation on the latest (or --step) checkpoint and merges it into
    WORKDIR/checkpoints/eval_<step>.json (as `python -m ssl_jax.evaluate` does).
Override any config field with --config.path.to.field=value; unknown fields, and values
of the wrong type or tuple length, are errors.
  --allow_config_change resumes although the config differs from WORKDIR/config.json.
  --restore_fallback sets a corrupt latest checkpoint aside and resumes from the previous one.
Problems the user can fix end the process with one `error: ...` line and exit code 1;
SIGTERM ends it after the current step with a checkpoint and exit code 0.
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
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume although the config differs from WORKDIR/config.json (e.g. a longer "
    "schedule); the change is recorded in WORKDIR/config_changes.jsonl.")
_RESTORE_FALLBACK = flags.DEFINE_bool(
    "restore_fallback", False, "If the latest checkpoint is corrupt, move it to WORKDIR/corrupt_checkpoints/ and "
    "resume from the newest one that restores.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # orbax and tfds log every file they touch at INFO; keep the console to our progress lines.
    logging.set_verbosity(logging.WARNING)
    from ssl_jax import train
    from ssl_jax.errors import UserError
    from ssl_jax.guards import config_check

    try:
        check_override_types(flags.FLAGS["config"])
        config = config_check.load(flags.FLAGS["config"])  # one line for a bad file or value, before any compile
        if _MODE.value == "train":
            train.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                                     restore_fallback=_RESTORE_FALLBACK.value)
        else:
            train.evaluate_checkpoint(config, _WORKDIR.value, _STEP.value)
    except UserError as e:  # anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def check_override_types(config_flag) -> None:
    """Each --config.x=value must keep the config file's type for x (and a tuple its length).

    ml_collections parses an override with the field's type, but accepts e.g. a single
    number for a 2-tuple, which would fail deep inside the input pipeline.
    """
    from ssl_jax.errors import UserError

    for key, value in config_flags.get_override_values(config_flag).items():
        default = flags.FLAGS[f"config.{key}"].default
        if isinstance(default, (tuple, list)) and default and (
                not isinstance(value, (tuple, list)) or len(value) != len(default)):
            raise UserError(f"--config.{key}={value!r} must be a {len(default)}-tuple like the config file's "
                            f"{tuple(default)!r}; pass e.g. --config.{key}='{tuple(default)!r}'")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unknown --config.x override as one clear line, not a traceback.

    ml_collections raises KeyError/AttributeError for a field the locked config does not
    have; other flag errors get absl's usage message. A UserError in the config file's
    `get_config` (an unknown preset) is its one line: absl wraps it in a flag error.
    """
    from ssl_jax.config_files import resolve_flag
    from ssl_jax.errors import UserError

    argv = resolve_flag(argv)  # --config=dino_small[:preset] names a shipped config (ssl_jax/config_files.py)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        innermost, cause = None, e
        while cause is not None:
            innermost = cause if isinstance(cause, UserError) else innermost
            cause = cause.__cause__ or cause.__context__
        if innermost is not None:
            sys.exit(f"error: {innermost}")
        # absl's usage message for any other flag error (app.parse_flags_with_usage's words; calling
        # it would parse the flags a second time)
        sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
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
