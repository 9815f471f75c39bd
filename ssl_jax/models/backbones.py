"""config.model -> a backbone module: images [B, H, W, 3] -> features [B, D].

A ViT's `config.model.init` names the reference whose initialisation it follows
(`ssl_jax.models.vit.VIT_INITS`; "dino" when absent); a named `size` with a nonzero
`num_heads` takes that head count (MoCo v3's vit_small: 12).

`config.compute_dtype` ("float32" | "bfloat16") is the compute dtype of every layer
(parameters stay float32) and `config.remat` recomputes each block in the backward
pass; `backbone_kwargs(config)` reads both for the methods.

Every backbone is called as `module.apply(variables, images, train=...)`; a ResNet
also reads/writes the `batch_stats` collection (its BatchNorm statistics).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.resnet import resnet
from ssl_jax.models.vit import vit


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config) -> jnp.dtype:
    """config.compute_dtype as a dtype (float32 when the config has no such field)."""
    name = config.get("compute_dtype", "float32")
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown config.compute_dtype {name!r}; choose one of {sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def backbone_kwargs(config) -> dict:
    """The run-level model options of `build_backbone`: {'dtype': ..., 'remat': ...}."""
    return {"dtype": compute_dtype(config), "remat": bool(config.get("remat", False))}


def build_backbone(model_cfg, *, with_drop_path: bool = True, dtype: jnp.dtype = jnp.float32,
                   remat: bool = False) -> nn.Module:
    """The ViT or ResNet named by config.model (ViT drop-path only where it is trained)."""
    if model_cfg.name == "vit":
        return vit(model_cfg.size, img_size=model_cfg.img_size, patch_size=model_cfg.patch_size,
                   drop_path_rate=model_cfg.drop_path_rate if with_drop_path else 0.0,
                   embed_dim=model_cfg.get("embed_dim") or None, depth=model_cfg.get("depth") or None,
                   num_heads=model_cfg.get("num_heads") or None, pos_embed=model_cfg.get("pos_embed", "learned"),
                   dtype=dtype, remat=remat, mask_token=model_cfg.get("mask_token", ""),
                   class_token=model_cfg.get("class_token", True), layerscale_init=model_cfg.get("layerscale", 0.0),
                   num_register_tokens=model_cfg.get("num_register_tokens", 0),
                   drop_path_uniform=model_cfg.get("drop_path_uniform", False), init=model_cfg.get("init", "dino"))
    if model_cfg.name == "resnet":
        return resnet(model_cfg.depth, cifar_stem=model_cfg.cifar_stem,
                      zero_init_residual=model_cfg.zero_init_residual, width=model_cfg.get("width", 64),
                      dtype=dtype, remat=remat, conv_init=model_cfg.get("conv_init", "torchvision"))
    raise ValueError(f"unknown config.model.name {model_cfg.name!r}; choose 'vit' or 'resnet'")
