"""The batch layout every method consumes, and in-memory example batches.

    batch = {"views": {"global": [B, G, S, S, 3], "local": [B, L, s, s, 3]},
             "label": [B] int32, "index": [B] int32}     # only the fields config.dataset.fields names
    (image-caption data, config.dataset.name = "image_text", adds "text": [B, config.text.max_len] int32)

Views are float32, normalised with config.augment.mean/std. The optional fields are for the
methods that need more than images: "label" the class (-1 where the image is outside the
labelled subset, `config.dataset.labelled_fraction`: semi-supervised methods), "index" the
image's position in the train split, the same in every epoch and on any number of processes
(instance discrimination). `example_batch` builds one of the right shapes without tensorflow
(for `init`, tests and benchmarks).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import UserError


BATCH_FIELDS = ("label", "index")


def batch_fields(dataset_cfg) -> tuple[str, ...]:
    """config.dataset.fields (default none), checked against BATCH_FIELDS."""
    fields = tuple(dataset_cfg.get("fields", ()))
    unknown = [f for f in fields if f not in BATCH_FIELDS]
    if unknown:
        raise UserError(f"unknown config.dataset.fields {unknown}; choose among {BATCH_FIELDS}")
    return fields


def field_shape(config, field: str) -> tuple[int, ...]:
    """A batch field's shape after [B]: "text" is [L] token ids (config.text.max_len), the others scalars."""
    return (config.text.max_len,) if field == "text" else ()


def batch_field_names(config) -> tuple[str, ...]:
    """config.dataset.fields, plus "text" for image-caption data."""
    return batch_fields(config.dataset) + (("text",) if config.dataset.name == "image_text" else ())


def view_shapes(augment_cfg, batch_size: int) -> dict[str, tuple[int, ...]]:
    """{'global': (B, G, S, S, 3), 'local': (B, L, s, s, 3)}; 'local' only when L > 0."""
    shapes = {"global": (batch_size, augment_cfg.global_crops.number, augment_cfg.global_crops.size,
                         augment_cfg.global_crops.size, 3)}
    if augment_cfg.local_crops.number:
        shapes["local"] = (batch_size, augment_cfg.local_crops.number, augment_cfg.local_crops.size,
                           augment_cfg.local_crops.size, 3)
    return shapes


def example_batch(augment_cfg, batch_size: int, rng: jax.Array | None = None, fields: tuple[str, ...] = ()) -> dict:
    """A batch of the configured shapes: zeros, or standard-normal values when `rng` is given;
    each of `fields` ("label", "index") as int32 zeros [B]."""
    shapes = view_shapes(augment_cfg, batch_size)
    extras = {field: np.zeros((batch_size,), np.int32) for field in fields}
    if rng is None:
        return {"views": {k: np.zeros(s, np.float32) for k, s in shapes.items()}, **extras}
    keys = jax.random.split(rng, len(shapes))
    views = {k: np.asarray(jax.random.normal(key, s, jnp.float32)) for key, (k, s) in zip(keys, shapes.items())}
    return {"views": views, **extras}
