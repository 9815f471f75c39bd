"""What the masked-image-modelling methods (MAE, SimMIM, I-JEPA) share about their input."""
from __future__ import annotations

import jax

from ssl_jax.errors import UserError


def single_view(batch: dict) -> jax.Array:
    """The one augmented view of a MIM batch, [B, H, W, 3], with a clear error for other layouts."""
    views = batch["views"]["global"]
    if views.shape[1] != 1 or "local" in batch["views"]:
        raise UserError(f"masked image modelling takes one view per image, got global views {views.shape} and "
                        f"{sorted(batch['views'])}; use config_base.single_view_augment (augment.global_crops.number=1)")
    return views[:, 0]


def check_vit(config, method: str) -> None:
    """MIM methods mask ViT patch tokens: a ResNet config is a user error."""
    if config.model.name != "vit":
        raise UserError(f"{method} needs config.model.name='vit' (it masks patch tokens), got {config.model.name!r}")
