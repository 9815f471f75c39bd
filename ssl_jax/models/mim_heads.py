"""The narrow transformers that masked-image-modelling methods put after their encoder.

* `MAEDecoder` (facebookresearch/mae `models_mae.py`, `forward_decoder`): visible latents
  -> 512-wide tokens, mask tokens for the removed patches, unshuffle to patch order, fixed
  sin-cos position embeddings, 8 blocks, LayerNorm, a linear map to the p*p*3 pixels.
* `JEPAPredictor` (facebookresearch/ijepa `src/models/vision_transformer.py`,
  `VisionTransformerPredictor`): context latents -> 384-wide tokens + their fixed sin-cos
  positions, one mask token + position per target patch, 6 blocks, LayerNorm, a linear map
  back to the encoder width; one pass per target block.

Both reuse `ssl_jax.models.vit.Block` (pre-norm, LayerNorm eps 1e-6, qkv bias, exact GELU,
truncated-normal(0.02) linears). Padding tokens of static-size index lists are excluded
from attention with the blocks' `kv_mask`.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models.vit import Block, sincos_pos_embed, trunc_normal


def run_blocks(x: jax.Array, *, depth: int, num_heads: int, mlp_ratio: float, dtype, remat: bool, prefix: str,
               kv_mask: Optional[jax.Array] = None) -> jax.Array:
    """`depth` ViT blocks named `{prefix}_{i}` in the calling module, then LayerNorm
    `{prefix}_norm`: [B, T, D] -> [B, T, D]. Call from inside a compact method."""
    block = nn.remat(Block, static_argnums=(2,)) if remat else Block
    for i in range(depth):
        x, _ = block(num_heads, mlp_ratio, 0.0, dtype, name=f"{prefix}_{i}")(x, True, kv_mask)
    return nn.LayerNorm(1e-6, dtype=dtype, name=f"{prefix}_norm")(x)


def unshuffle(visible: jax.Array, mask_token: jax.Array, restore: jax.Array) -> jax.Array:
    """MAE's unshuffle: visible [B, K, E] (in shuffled order), mask_token [1, 1, E], restore
    [B, N] -> [B, N, E] in patch order, mask_token at the removed patches
    (`torch.gather(cat([x[:, 1:], mask_tokens]), 1, ids_restore)`)."""
    batch, visible_count, dim = visible.shape
    removed = jnp.broadcast_to(mask_token.astype(visible.dtype), (batch, restore.shape[1] - visible_count, dim))
    return jnp.take_along_axis(jnp.concatenate([visible, removed], axis=1), restore[..., None], axis=1)


class MAEDecoder(nn.Module):
    """MAE's decoder: latent [B, 1+K, D] ([CLS] then the K visible tokens in shuffled order),
    restore [B, N] (`masks.RandomMasks.restore`) -> pixel predictions [B, N, patch_dim] in
    patch order (the [CLS] output is dropped, as `x[:, 1:]` in the reference)."""

    grid_hw: tuple[int, int]
    patch_dim: int  # p * p * 3
    embed_dim: int = 512  # decoder_embed_dim
    depth: int = 8  # decoder_depth
    num_heads: int = 16  # decoder_num_heads
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, latent: jax.Array, restore: jax.Array) -> jax.Array:
        x = nn.Dense(self.embed_dim, kernel_init=trunc_normal, dtype=self.dtype, name="decoder_embed")(latent)
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.embed_dim))
        x = jnp.concatenate([x[:, :1], unshuffle(x[:, 1:], mask_token, restore)], axis=1)
        x = x + sincos_pos_embed(self.grid_hw, self.embed_dim, width_first=True).astype(x.dtype)  # column first
        x = run_blocks(x, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                       remat=self.remat, prefix="decoder_blocks")
        x = nn.Dense(self.patch_dim, kernel_init=trunc_normal, dtype=self.dtype, name="decoder_pred")(x)
        return x[:, 1:]


class JEPAPredictor(nn.Module):
    """I-JEPA's predictor: context [B, Kc, D] at patch indices context_idx [B, Kc]
    (context_valid [B, Kc] marks padding), targets_idx [B, M, Kt] (targets_valid [B, M, Kt])
    -> predicted target latents [B, M, Kt, D]. Each of the M target blocks is predicted in its
    own pass over [context; mask tokens of that block], as the reference repeats the context
    per target (`x.repeat(len(masks), 1, 1)`)."""

    grid_hw: tuple[int, int]
    out_dim: int  # the encoder's width
    embed_dim: int = 384  # predictor_embed_dim
    depth: int = 6  # VisionTransformerPredictor's default depth
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, context: jax.Array, context_idx: jax.Array, context_valid: jax.Array,
                 targets_idx: jax.Array, targets_valid: jax.Array) -> jax.Array:
        batch, num_ctx, _ = context.shape
        _, num_targets, num_tgt = targets_idx.shape
        pos = sincos_pos_embed(self.grid_hw, self.embed_dim, width_first=True)[0, 1:]  # [N, E], column first
        x = nn.Dense(self.embed_dim, kernel_init=trunc_normal, dtype=self.dtype, name="predictor_embed")(context)
        x = x + pos[context_idx].astype(x.dtype)
        mask_token = self.param("mask_token", trunc_normal, (1, 1, 1, self.embed_dim))
        queries = mask_token.astype(x.dtype) + pos[targets_idx].astype(x.dtype)  # [B, M, Kt, E]
        x = jnp.broadcast_to(x[:, None], (batch, num_targets, num_ctx, self.embed_dim))
        x = jnp.concatenate([x, queries], axis=2).reshape(batch * num_targets, num_ctx + num_tgt, self.embed_dim)
        valid = jnp.concatenate([jnp.broadcast_to(context_valid[:, None], (batch, num_targets, num_ctx)),
                                 targets_valid], axis=2).reshape(batch * num_targets, num_ctx + num_tgt)
        x = run_blocks(x, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                       remat=self.remat, prefix="predictor_blocks", kv_mask=valid)
        x = nn.Dense(self.out_dim, kernel_init=trunc_normal, dtype=self.dtype, name="predictor_proj")(x[:, num_ctx:])
        return x.reshape(batch, num_targets, num_tgt, self.out_dim)
