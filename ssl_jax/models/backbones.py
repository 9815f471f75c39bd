"""config.model -> a backbone module: images [B, H, W, 3] -> features [B, D].

Every backbone is called as `module.apply(variables, images, train=...)`; a ResNet
also reads/writes the `batch_stats` collection (its BatchNorm statistics).
"""
from __future__ import annotations

import flax.linen as nn

from ssl_jax.models.resnet import resnet
from ssl_jax.models.vit import vit


def build_backbone(model_cfg, *, with_drop_path: bool = True) -> nn.Module:
    """The ViT or ResNet named by config.model (ViT drop-path only where it is trained)."""
    if model_cfg.name == "vit":
        return vit(model_cfg.size, img_size=model_cfg.img_size, patch_size=model_cfg.patch_size,
                   drop_path_rate=model_cfg.drop_path_rate if with_drop_path else 0.0,
                   embed_dim=model_cfg.get("embed_dim") or None, depth=model_cfg.get("depth") or None,
                   num_heads=model_cfg.get("num_heads") or None, pos_embed=model_cfg.get("pos_embed", "learned"))
    if model_cfg.name == "resnet":
        return resnet(model_cfg.depth, cifar_stem=model_cfg.cifar_stem,
                      zero_init_residual=model_cfg.zero_init_residual, width=model_cfg.get("width", 64))
    raise ValueError(f"unknown config.model.name {model_cfg.name!r}; choose 'vit' or 'resnet'")
