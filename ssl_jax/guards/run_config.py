"""WORKDIR/config.json: the resolved config a run trains with, and the resume check.

A resumed run must be the same run. Before restoring a checkpoint, the config being
used is compared with the saved one; any difference stops the run with the list of
changed fields, unless the user passes --allow_config_change (e.g. a longer
schedule), in which case the change is appended to WORKDIR/config_changes.jsonl
with the step it applies from, and config.json is replaced. Files are written
atomically (temporary file + rename), so a crash never leaves half a config.
"""
from __future__ import annotations

import json
import time

from ssl_jax import config_base, paths
from ssl_jax.errors import UserError

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
# Fields that say where this machine finds things, not what is trained (another host, another
# data mount), and steps_per_call, which only groups the same steps into fewer compiled calls:
# they may differ between the original run and a resumed one.
MACHINE_LOCAL_FIELDS = ("dataset.data_dir", "dataset.download", "eval.dataset.data_dir",
                        "distributed.coordinator_address", "distributed.process_id", "steps_per_call")
_MISSING = "<absent>"


def as_dict(config) -> dict:
    """The config as the plain JSON data config.json holds (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def diff(saved: dict, current: dict) -> dict[str, tuple]:
    """{dotted field: (saved value, current value)} for every field that differs."""
    old, new = flatten(saved), flatten(current)
    defaults = flatten(as_dict(config_base.base_config()))
    changed = {}
    for key in sorted(set(old) | set(new)):
        if key in MACHINE_LOCAL_FIELDS:
            continue
        if key not in old and key in defaults and new[key] == defaults[key]:
            continue  # a run-level field added to ssl_jax after this run started, at its default
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before != after:
            changed[key] = (before, after)
    return changed


def describe(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: {before!r} -> {after!r}" for key, (before, after) in changes.items())


def load_saved(workdir: str) -> dict | None:
    """WORKDIR/config.json as a dict, or None when the workdir has none."""
    path = paths.resolve(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return paths.read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); restore it, or move it away to resume "
                        f"without the config check") from None


def check_resume(config, workdir: str, step: int, allow_change: bool) -> dict[str, tuple]:
    """Raises UserError when `config` differs from the saved one and the change is not allowed.

    Returns the changes (empty when none, or when the workdir has no saved config).
    """
    saved = load_saved(workdir)
    if saved is None:
        return {}
    changes = diff(saved, as_dict(config))
    if changes and not allow_change:
        raise UserError(f"the config differs from the one the checkpoint at step {step} was trained with "
                        f"({paths.resolve(workdir) / CONFIG_FILE}): {describe(changes)}. Resume with the same "
                        f"config, or pass --allow_config_change if the change is intended.")
    return changes


def save(config, workdir: str, step: int, changes: dict[str, tuple]) -> None:
    """Writes config.json and, when resuming with accepted changes, records them."""
    if changes:
        record = {"step": step, "time": time.time(),
                  "changes": {key: {"before": b, "after": a} for key, (b, a) in changes.items()}}
        changes_file = paths.resolve(workdir) / CHANGES_FILE
        before = changes_file.read_text() if changes_file.exists() else ""
        paths.write_atomically(changes_file, before + json.dumps(record) + "\n")
    paths.write_atomically(paths.resolve(workdir) / CONFIG_FILE,
                           config.to_json_best_effort(indent=2, sort_keys=True))
