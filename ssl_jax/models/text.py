"""The text tower of the image-text methods: a Transformer encoder over token ids [B, L] -> [B, D].

    x = token_embedding(ids) + position_embedding           [B, L, W]
    x = blocks(x)   pre-LayerNorm residual attention + MLP,  causal (CLIP) or bidirectional (SigLIP)
    x = final LayerNorm(x)
    z = pool(x) @ projection                                 [B, D]

Two layouts, `TextTower.style`:
  "clip"    openai/CLIP `clip/model.py` (`CLIP.__init__`, `encode_text`, `initialize_parameters`):
            causal mask (`build_attention_mask`), QuickGELU, pooled at the EOT token (there the
            highest id, `text.argmax(dim=-1)`; here the last non-PAD token, the same position for
            the tokenizer's [BOS] ... [EOS] PAD...), `text_projection` without bias. Init: token
            embedding N(0, 0.02), position N(0, 0.01), attention in-projection N(0, W^-1/2),
            out-projection and MLP c_proj N(0, W^-1/2 (2 depth)^-1/2), c_fc N(0, (2W)^-1/2),
            projection N(0, W^-1/2); biases 0 (attention, torch.nn.MultiheadAttention) or
            torch.nn.Linear's U(+-1/sqrt(fan_in)) (MLP).
  "siglip"  google-research/big_vision `models/proj/image_text/text_transformer.py`: no mask
            (`vit.Encoder`), GELU (tanh-free), pooled at the last position ("last": with
            `config.text.sticky_eos` the tokenizer pads with EOS, big_vision's `eos="sticky"`, so the
            last token is always EOS) or by attention ("map",
            `vit.MAPHead`), a Dense head with bias. Init: embedding flax's default N(0, 1),
            position N(0, W^-1/2), Dense xavier_uniform with bias N(0, 1e-6) in the MLP
            (`vit.MlpBlock`), attention xavier_uniform, zero biases, the head lecun_normal.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError
from ssl_jax.models.heads import linear_bias_init
from ssl_jax.text.tokenizer import PAD

STYLES = ("clip", "siglip")
POOLS = ("eot", "last", "map")


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's QuickGELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


class TextBlock(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)); [B, L, W] -> [B, L, W]. `mask` [B or 1, 1, L, L] bool."""

    width: int
    heads: int
    depth: int  # of the whole tower: CLIP's projection init scales with it
    style: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        w = self.width
        if self.style == "clip":
            proj = nn.initializers.normal(w ** -0.5 * (2 * self.depth) ** -0.5)
            attn_init = dict(kernel_init=nn.initializers.normal(w ** -0.5), out_kernel_init=proj)
            fc = dict(kernel_init=nn.initializers.normal((2 * w) ** -0.5), bias_init=linear_bias_init("torch", w))
            out = dict(kernel_init=proj, bias_init=linear_bias_init("torch", 4 * w))
            act = quick_gelu
        else:
            attn_init = dict(kernel_init=nn.initializers.xavier_uniform())
            fc = out = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6))
            act = lambda y: nn.gelu(y, approximate=False)  # noqa: E731
        y = nn.LayerNorm(epsilon=1e-5 if self.style == "clip" else 1e-6, dtype=self.dtype, name="ln_1")(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype, name="attn", **attn_init)(
            y, y, mask=mask)
        y = nn.LayerNorm(epsilon=1e-5 if self.style == "clip" else 1e-6, dtype=self.dtype, name="ln_2")(x)
        y = nn.Dense(4 * w, dtype=self.dtype, name="c_fc", **fc)(y)
        return x + nn.Dense(w, dtype=self.dtype, name="c_proj", **out)(act(y))


class MAPHead(nn.Module):
    """big_vision's `vit.MAPHead`: a learned probe attends over the tokens, plus an MLP. [B, L, W] -> [B, W]."""

    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]), jnp.float32)
        probe = jnp.broadcast_to(probe, (x.shape[0], 1, x.shape[-1])).astype(self.dtype)
        x = nn.MultiHeadDotProductAttention(self.heads, kernel_init=nn.initializers.xavier_uniform(),
                                            dtype=self.dtype)(probe, x)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
        init = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6))
        y = nn.Dense(4 * x.shape[-1], dtype=self.dtype, **init)(y)
        x = x + nn.Dense(x.shape[-1], dtype=self.dtype, **init)(nn.gelu(y, approximate=False))
        return x[:, 0]


class TextTower(nn.Module):
    """Token ids [B, L] int32 (PAD = 0 after the text) -> text embedding [B, out_dim] (not normalised)."""

    vocab_size: int
    max_len: int
    width: int
    depth: int
    heads: int
    out_dim: int
    style: str = "clip"  # one of STYLES
    pool: str = "eot"  # one of POOLS: "eot" (CLIP), "last" or "map" (big_vision)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        if self.style not in STYLES or self.pool not in POOLS:
            raise UserError(f"unknown text tower style {self.style!r} or pool {self.pool!r} (config.text.style, "
                            f"config.text.pool); choose among {STYLES} and {POOLS}")
        clip = self.style == "clip"
        embed_init = nn.initializers.normal(0.02) if clip else nn.initializers.normal(1.0)
        x = nn.Embed(self.vocab_size, self.width, embedding_init=embed_init, name="token_embedding")(ids)
        pos = self.param("position_embedding", nn.initializers.normal(0.01 if clip else self.width ** -0.5),
                         (self.max_len, self.width), jnp.float32)
        x = (x + pos[:ids.shape[1]]).astype(self.dtype)
        mask = nn.make_causal_mask(ids) if clip else None  # [B, 1, L, L]
        for i in range(self.depth):
            x = TextBlock(self.width, self.heads, self.depth, self.style, self.dtype, name=f"block_{i}")(x, mask)
        x = nn.LayerNorm(epsilon=1e-5 if clip else 1e-6, dtype=self.dtype, name="ln_final")(x)
        if self.pool == "eot":  # the last non-PAD token
            last = jnp.maximum(jnp.sum(ids != PAD, axis=1) - 1, 0)
            x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        elif self.pool == "last":
            x = x[:, -1]
        else:
            x = MAPHead(self.heads, self.dtype, name="map")(x)
        if clip:
            return nn.Dense(self.out_dim, use_bias=False, kernel_init=nn.initializers.normal(self.width ** -0.5),
                            dtype=self.dtype, name="projection")(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="head")(x)


def build_text_tower(text_cfg, out_dim: int, dtype: jnp.dtype = jnp.float32) -> TextTower:
    """config.text -> the TextTower (out_dim: the shared embedding size, config.method.embed_dim)."""
    if text_cfg.width % text_cfg.heads:
        raise UserError(f"config.text.width={text_cfg.width} is not a multiple of config.text.heads={text_cfg.heads}")
    return TextTower(text_cfg.vocab_size, text_cfg.max_len, text_cfg.width, text_cfg.depth, text_cfg.heads, out_dim,
                     text_cfg.style, text_cfg.pool, dtype)

