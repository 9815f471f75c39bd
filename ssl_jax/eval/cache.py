"""Frozen features cached per checkpoint: WORKDIR/eval_cache/<step>/<kind>_<split>_<key>.npz.

A checkpoint's backbone never changes, so each (feature kind, split, preprocessing) is
extracted once; kNN at every k and linear probes on cached features reuse the file. The
key hashes everything that changes the features besides the weights (the kind's
parameters, the dataset, the eval resize/crop and normalisation), so changing any of them
extracts again instead of reading stale features.
"""
from __future__ import annotations

import hashlib
import io
import json
import re

import jax
import numpy as np

from ssl_jax import paths
from ssl_jax.data import pipeline
from ssl_jax.eval.features import extract_features

CACHE_DIR = "eval_cache"


def cache_path(frozen, kind: str, split: str, params: dict):
    """Where the features of `kind` (with its `params`) on `split` of this checkpoint live."""
    config = frozen.config
    dataset = pipeline.eval_dataset(config)
    dataset = f"folder:{dataset.data_dir}" if dataset.name == "folder" else dataset.name  # a folder: its root
    key = json.dumps({"kind": kind, "params": params, "split": split, "dataset": dataset,
                      "resize": config.eval.resize, "crop": config.eval.crop, "mean": list(config.augment.mean),
                      "std": list(config.augment.std)}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"{kind}_{re.sub(r'[^A-Za-z0-9]+', '-', split).strip('-')}_{digest}.npz"
    return paths.resolve(frozen.workdir) / CACHE_DIR / str(frozen.step) / name


def cached_features(frozen, kind: str, params: dict, features_fn, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F], labels [N]) of `split` for this checkpoint: read from the cache, or
    extracted over the mesh with features_fn(variables, images) and written (process 0)."""
    path = cache_path(frozen, kind, split, params)
    if path.exists():
        with np.load(io.BytesIO(path.read_bytes())) as data:
            return data["features"], data["labels"]
    features, labels = extract_features(frozen.config, features_fn, frozen.variables, split, frozen.run.mesh)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{path.name}.tmp"
        with tmp.open("wb") as f:
            np.savez(f, features=features, labels=labels)
        tmp.replace(path)  # complete files only, even if interrupted
    return features, labels
