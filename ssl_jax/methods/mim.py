"""What the masked-image-modelling methods (MAE, SimMIM, I-JEPA) share: their input, and the
encoder run on a subset of the patch tokens (MAE's visible patches, I-JEPA's context)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError


def single_view(batch: dict) -> jax.Array:
    """The one augmented view of a MIM batch, [B, H, W, 3], with a clear error for other layouts."""
    views = batch["views"]["global"]
    if views.shape[1] != 1 or "local" in batch["views"]:
        raise UserError(f"masked image modelling takes one view per image, got global views {views.shape} and "
                        f"{sorted(batch['views'])}; use config_base.single_view_augment (augment.global_crops.number=1)")
    return views[:, 0]


def check_vit(config, method: str) -> None:
    """MIM methods mask ViT patch tokens: a ResNet config is a user error; their ViTs have no registers."""
    if config.model.name != "vit":
        raise UserError(f"{method} needs config.model.name='vit' (it masks patch tokens), got {config.model.name!r}")
    if config.model.get("num_register_tokens", 0):
        raise UserError(f"{method}'s ViT has no register tokens: set config.model.num_register_tokens=0")


def encode_kept(encoder, params, images: jax.Array, keep: jax.Array, valid: jax.Array | None = None,
                rng: jax.Array | None = None) -> jax.Array:
    """The ViT `encoder` on the patch tokens at indices keep [B, K] of images [B, H, W, 3] only:
    patch and position embeddings, the K gathered, then [CLS] (if any) and the blocks, with the
    entries where valid [B, K] is False (padding) attended by no token. Drop-path when `rng` is
    given. Returns the normed tokens [B, P + K, D] ([CLS] first, if any)."""
    variables = {"params": params}
    tokens = encoder.apply(variables, images, method="embed")  # [B, N, D]
    tokens = jnp.take_along_axis(tokens, keep[..., None], axis=1)  # [B, K, D]
    return encoder.apply(variables, tokens, rng is not None, valid, method="encode",
                         rngs=None if rng is None else {"drop_path": rng})
