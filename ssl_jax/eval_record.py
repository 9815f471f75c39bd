"""checkpoints/eval_<step>.json: the evaluations of one checkpoint, merged into one file.

Both entry points write through `merge_eval_results`: `python -m ssl_jax.main --mode=eval`
(the training loop's kNN monitor) and `python -m ssl_jax.evaluate` (the frozen protocols), so
running one after the other keeps the numbers of both.
"""
from __future__ import annotations

import json

from ssl_jax import paths


def merge_eval_results(checkpoint_dir, step: int, results: dict, suffix: str = ""):
    """Merges {"step": step, **results} into CHECKPOINT_DIR/eval_<step><suffix>.json (a metric
    evaluated again is replaced, the others are kept; `suffix` "_<dataset>" for another dataset's
    results); returns the file's path."""
    path = paths.resolve(checkpoint_dir) / f"eval_{step}{suffix}.json"
    saved = paths.read_json(path) if path.exists() else {}
    paths.write_atomically(path, json.dumps({**saved, "step": step, **results}, indent=2, sort_keys=True))
    return path
