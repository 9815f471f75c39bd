"""Vision Transformer as in DINO's `vision_transformer.py` (itself DeiT/timm).

Pre-norm blocks (LayerNorm eps 1e-6), qkv with bias, MLP ratio 4 with exact GELU,
stochastic depth rising linearly over depth, a [CLS] token, learned position
embeddings that are interpolated (bicubic) when the input resolution differs from
the one the model was built for, so that 224 px global and 96 px local crops share
one set of weights (or fixed 2-D sin-cos embeddings, as MoCo v3, MAE and I-JEPA).

Initialisation follows the reference of each family: `init_scheme` names one of `VIT_INITS`
("dino", "dinov2", "sit", "mae", "mocov3", "ijepa", "simmim"), each a transcription of its
official code (docs/FIDELITY.md (_vit_init) cites them). LayerNorms start at scale 1, bias 0
and Linear biases at 0 in every one of them.

Mixed precision: `dtype` is the compute dtype of every layer (bfloat16 on GPU/TPU presets);
parameters stay float32 (flax's `param_dtype`), the attention softmax runs in float32, and
LayerNorm statistics are float32 (flax). `remat=True` recomputes each block in the backward
pass (`nn.remat`) instead of storing its activations.

Parameter names follow the timm/DINO state-dict names where it costs nothing
(`cls_token`, `pos_embed`, `patch_embed`, `blocks_i`, `norm`) so that loading an
official checkpoint is a documented renaming.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import UserError

Initializer = Callable[..., jax.Array]

# timm/DINO's `trunc_normal_(w, std=.02)` cuts at the absolute values a=-2, b=2, i.e. at 100 std:
# it is N(0, 0.02^2) (as MAE's `initialize_weights` notes). flax's truncated_normal(0.02) would cut
# at 2 std, std 0.0176.
trunc_normal = nn.initializers.normal(0.02)
# torch.nn.Conv2d's / nn.Linear's default weight init (kaiming_uniform with a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); DINO and DINOv2 keep it for the patch projection.
torch_conv_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
xavier_uniform = nn.initializers.xavier_uniform()  # U(+-sqrt(6 / (fan_in + fan_out)))


def uniform(bound: float) -> Initializer:
    """U(-bound, bound), e.g. torch's default Conv2d bias bound 1/sqrt(fan_in)."""
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def xavier_uniform_qkv(key, shape, dtype=jnp.float32) -> jax.Array:
    """MoCo v3's qkv init: xavier-uniform of each of the three [D, D] maps, U(+-sqrt(6 / (D + D)))
    on the [D, 3D] kernel (vits.py: `val = sqrt(6 / (weight.shape[0] // 3 + weight.shape[1]))`)."""
    return uniform(math.sqrt(6.0 / (shape[-1] // 3 + shape[-2])))(key, shape, dtype)


def scaled(init: Initializer, factor: float) -> Initializer:
    """`init` times a constant (BEiT-style `fix_init_weight`)."""
    return lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) * factor


@dataclasses.dataclass(frozen=True)
class ViTInit:
    """How one reference initialises its ViT. Kernels are [fan_in, fan_out].

    linear / qkv: the blocks' Linear kernels (attn.proj, fc1, fc2) / the attn.qkv kernel [D, 3D];
    patch_kernel: the patch projection [p*p*3, D]; patch_bias_zero: its bias 0 (else PyTorch's
    Conv2d default U(+-1/sqrt(p*p*3))); cls_token, pos_embed (learned), register_tokens;
    depth_rescale: block l (1-based) divides its attn.proj and fc2 kernels by sqrt(2 l)
    (BEiT's `fix_init_weight`); sincos_width_first: fixed sin-cos embeddings encode the column
    in their first half (MAE / I-JEPA `get_2d_sincos_pos_embed`) instead of the row (MoCo v3).
    """

    linear: Initializer = trunc_normal
    qkv: Initializer = trunc_normal
    patch_kernel: Initializer = torch_conv_kernel_init
    patch_bias_zero: bool = False
    cls_token: Initializer = trunc_normal
    pos_embed: Initializer = trunc_normal
    register_tokens: Initializer = nn.initializers.normal(1e-6)
    depth_rescale: bool = False
    sincos_width_first: bool = False


_BEIT_STYLE = ViTInit(patch_kernel=trunc_normal, patch_bias_zero=True, depth_rescale=True, sincos_width_first=True)
VIT_INITS = {
    # facebookresearch/dino vision_transformer.py `VisionTransformer.__init__` + `_init_weights`
    # (Linear and LayerNorm only; the patch Conv2d keeps PyTorch's default). timm's DeiT is the same.
    "dino": ViTInit(),
    # facebookresearch/dinov2 dinov2/models/vision_transformer.py `init_weights`, `init_weights_vit_timm`.
    "dinov2": ViTInit(cls_token=nn.initializers.normal(1e-6)),
    # Sara-Ahmed/SiT vision_transformer_SiT.py: timm's init, rot_token trunc_normal(.02) (our register).
    "sit": ViTInit(register_tokens=trunc_normal),
    # facebookresearch/mae models_mae.py `initialize_weights`, `_init_weights`.
    "mae": ViTInit(linear=xavier_uniform, qkv=xavier_uniform, patch_kernel=xavier_uniform,
                   cls_token=nn.initializers.normal(0.02), sincos_width_first=True),
    # facebookresearch/moco-v3 vits.py `VisionTransformerMoCo.__init__`.
    "mocov3": ViTInit(linear=xavier_uniform, qkv=xavier_uniform_qkv, patch_kernel=xavier_uniform,
                      patch_bias_zero=True, cls_token=nn.initializers.normal(1e-6)),
    # facebookresearch/ijepa src/models/vision_transformer.py `_init_weights` (Conv2d included),
    # `fix_init_weight`; microsoft/SimMIM models/vision_transformer.py, the same BEiT-style init.
    "ijepa": _BEIT_STYLE,
    "simmim": _BEIT_STYLE,
}


def vit_init(name: str) -> ViTInit:
    """The `VIT_INITS` entry `name` (config.model.init)."""
    if name not in VIT_INITS:
        raise UserError(f"unknown ViT init {name!r} (config.model.init); choose one of {sorted(VIT_INITS)}")
    return VIT_INITS[name]


VIT_SIZES = {
    # name: (embed_dim, depth, num_heads), as in DINO's vit_tiny/small/base.
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def interpolate_pos_embed(pos_embed: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """Resizes patch position embeddings to a new patch grid.

    pos_embed: [1, 1 + N, D] with the [CLS] embedding first and N = g*g patches.
    grid_hw: the (h, w) patch grid of the current input.
    Returns [1, 1 + h*w, D]. Bicubic, like DINO's `interpolate_pos_encoding`;
    a no-op when the grid is unchanged.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    num_patches, dim = patch_pos.shape[1], patch_pos.shape[2]
    side = int(math.isqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"pos_embed has {num_patches} patches, not a square grid")
    if (side, side) == tuple(grid_hw):
        return pos_embed
    grid = patch_pos.reshape(1, side, side, dim)
    grid = jax.image.resize(grid, (1, grid_hw[0], grid_hw[1], dim), method="bicubic", antialias=False)
    return jnp.concatenate([cls_pos, grid.reshape(1, grid_hw[0] * grid_hw[1], dim)], axis=1)


def sincos_pos_embed(grid_hw: tuple[int, int], dim: int, temperature: float = 10000.0,
                     width_first: bool = False) -> jax.Array:
    """Fixed 2-D sin-cos position embeddings [1, 1 + h*w, D], zeros for [CLS].

    MoCo v3's `build_2d_sincos_position_embedding`: with omega_i = temperature^(-i / (D/4)),
    token (r, c) of the row-major patch grid gets
    [sin(r omega), cos(r omega), sin(c omega), cos(c omega)]; `width_first` swaps r and c
    (MAE's and I-JEPA's `get_2d_sincos_pos_embed`, whose `np.meshgrid(grid_w, grid_h)` puts the
    column first). Computed for the grid of the input, so no interpolation is needed at other
    resolutions.
    """
    if dim % 4:
        raise UserError(f"sin-cos position embeddings need embed_dim divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_hw[0], dtype=np.float64), np.arange(grid_hw[1], dtype=np.float64),
                             indexing="ij")
    omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    out_r, out_c = np.outer(rows.ravel(), omega), np.outer(cols.ravel(), omega)
    if width_first:
        out_r, out_c = out_c, out_r
    patches = np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], axis=1)
    return jnp.asarray(np.concatenate([np.zeros((1, dim)), patches])[None], jnp.float32)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, N, p*p*C]: row-major patches, each flattened as (row, column, channel)
    within the patch (MAE's `patchify` order, 'nchpwq->nhwpqc')."""
    batch, height, width, channels = images.shape
    p = patch_size
    patches = images.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(batch, (height // p) * (width // p), p * p * channels)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU as torch.nn.GELU writes it: x/2 (1 + erf(x / sqrt 2)).

    `jax.nn.gelu(approximate=False)` is the same function written with erfc, which XLA's CPU
    backend evaluates through exp and selects, about 2x slower (1.8 against 3.9 ms forward on
    a [1576, 1536] activation, 2 CPU cores); the two differ by less than 1e-6.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * 0.5**0.5))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, rescales the rest."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("drop_path"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Attention(nn.Module):
    """Multi-head self-attention; also returns the attention weights [B, H, Q, N].

    `kv_mask` [B, N] (bool, optional): keys where it is False get zero attention weight, so
    padding tokens of a static-size token set never influence the real ones (I-JEPA).
    `queries` Q > 0: only the first Q tokens are queries, so the output is [B, Q, D] while
    all N tokens stay keys and values (0: every token is a query, Q = N).
    `init_scheme` names the `VIT_INITS` entry; `layer` (1-based) scales `proj` where it rescales by depth.
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    queries: int = 0
    init_scheme: str = "dino"
    layer: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, kv_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        batch, tokens, dim = x.shape
        if dim % self.num_heads:
            raise UserError(f"embed_dim {dim} is not a multiple of num_heads={self.num_heads} (config.model)")
        head_dim = dim // self.num_heads
        init = vit_init(self.init_scheme)
        qkv = nn.Dense(3 * dim, kernel_init=init.qkv, dtype=self.dtype, name="qkv")(x)
        # Heads before tokens ([3, B, H, N, d], timm's layout): both attention products are then
        # plain batched matmuls over (B, H); the [B, N, H, d] layout made XLA's CPU backend
        # transpose around them, 2.3x slower forward at ViT-S/16 shapes.
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, d]
        if self.queries:
            q = q[:, :, :self.queries]  # [B, H, Q, d]
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim**-0.5, k)
        if kv_mask is not None:
            logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3).reshape(batch, q.shape[2], dim)
        return nn.Dense(dim, kernel_init=residual_init(init, self.layer), dtype=self.dtype, name="proj")(out), attn


def residual_init(init: ViTInit, layer: int) -> Initializer:
    """The kernel init of the Linear that ends residual branch `layer` (1-based): attn.proj, fc2."""
    return scaled(init.linear, (2.0 * layer) ** -0.5) if init.depth_rescale else init.linear


class LayerScale(nn.Module):
    """CaiT/DINOv2 LayerScale: x * gamma, a learned per-channel scale `gamma` [D] initialised to `init`."""

    init: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x))).

    layerscale > 0 scales each residual branch by a LayerScale (`ls1`, `ls2`) initialised to it
    (DINOv2: 1e-5); 0 (DINO, the default) has no such parameters. `queries` Q > 0 computes
    the outputs of the first Q tokens only, [B, N, D] -> [B, Q, D] (see `Attention`): the last
    block of a ViT whose caller reads only [CLS]. `init_scheme`, `layer`: see `Attention`.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    dtype: jnp.dtype = jnp.float32
    layerscale: float = 0.0
    queries: int = 0
    init_scheme: str = "dino"
    layer: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool,
                 kv_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        dim = x.shape[-1]
        norm1 = nn.LayerNorm(1e-6, dtype=self.dtype, name="norm1")
        y, attn = Attention(self.num_heads, self.dtype, self.queries, self.init_scheme, self.layer, name="attn")(
            norm1(x), kv_mask)
        if self.layerscale:
            y = LayerScale(self.layerscale, name="ls1")(y)
        if self.queries:
            x = x[:, :self.queries]
        x = x + DropPath(self.drop_path)(y, deterministic)
        y = nn.LayerNorm(1e-6, dtype=self.dtype, name="norm2")(x)
        init = vit_init(self.init_scheme)
        y = nn.Dense(int(dim * self.mlp_ratio), kernel_init=init.linear, dtype=self.dtype, name="fc1")(y)
        y = gelu(y)
        y = nn.Dense(dim, kernel_init=residual_init(init, self.layer), dtype=self.dtype, name="fc2")(y)
        if self.layerscale:
            y = LayerScale(self.layerscale, name="ls2")(y)
        return x + DropPath(self.drop_path)(y, deterministic), attn


class VisionTransformer(nn.Module):
    """ViT backbone. Input images [B, H, W, 3]; returns the normed [CLS] token [B, D].

    `img_size` fixes the position-embedding grid (img_size // patch_size squared);
    other input sizes are handled by interpolating it. With `return_all=True` the
    call returns a dict with the [CLS] output, every block's output tokens before the
    final norm (`tokens`: [L, B, 1+N, D]) and attention weights (`attn`: [L, B, H, 1+N, 1+N]) for analyses.

    Masked-image-modelling inputs (keyword arguments of `__call__`):
      * `mask` [B, N] bool: patch embeddings where it is True are replaced by the learned
        `mask_token` before the position embeddings are added (SimMIM, iBOT, DINOv2); needs
        the module built with `mask_token` = 'zeros' (iBOT/DINOv2 init) or 'trunc_normal' (SimMIM);
      * `keep` [B, K] int: the encoder runs on these patch tokens only, gathered by index after
        the position embeddings are added (MAE's visible tokens, I-JEPA's context), [CLS] first;
      * `keep_valid` [B, K] bool (with `keep`): False marks padding entries of `keep`, which
        no token attends to and pooling ignores (I-JEPA's per-image context sizes at a static K);
      * `context` [B, N] bool: in every block only these patch tokens (and [CLS], registers)
        serve as keys/values, while every token stays a query (MP3's masked context keys);
      * `return_tokens=True`: returns every normed output token [B, T, D] ([CLS] first, if
        any, then the N patches or the K kept ones), not only [CLS]; with `keep_registers=True`
        the R register outputs stay in, after [CLS] (SiT's rotation token).
    `class_token=False` builds a ViT without [CLS] (I-JEPA); its pooled output is then the mean
    of the normed patch tokens.

    DINOv2 options: `layerscale_init` > 0 adds LayerScale to every block (see `Block`);
    `num_register_tokens` R > 0 adds R learned `register_tokens` (Darcet et al. 2024) after
    [CLS], without position embedding; they take part in attention but are dropped from the
    outputs (the returned tokens stay [CLS] + patches; only `return_all`'s per-block `tokens`
    and `attn` include them, at positions 1..R); `drop_path_uniform` gives every block the
    rate `drop_path_rate` (DINOv2's drop_path_uniform) instead of DINO's linear ramp from 0.

    `init_scheme` names the reference whose initialisation every parameter follows (`VIT_INITS`).
    """

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    pos_embed: str = "learned"  # "learned" (DINO, timm), "sincos" (fixed, MoCo v3) or "none" (MP3)
    dtype: jnp.dtype = jnp.float32  # compute dtype; parameters are float32
    remat: bool = False  # recompute each block in the backward pass
    mask_token: str = ""  # "" (none), "zeros" (iBOT, DINOv2) or "trunc_normal" (SimMIM): init of `mask_token`
    class_token: bool = True  # False: no [CLS] token (I-JEPA)
    layerscale_init: float = 0.0  # > 0: LayerScale in every block, gamma initialised to it (DINOv2: 1e-5)
    num_register_tokens: int = 0  # DINOv2 with registers: 4
    drop_path_uniform: bool = False  # True: the same drop-path rate in every block (DINOv2)
    init_scheme: str = "dino"  # a VIT_INITS name: "dino", "dinov2", "sit", "mae", "mocov3", "ijepa", "simmim"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, return_all: bool = False, *,
                 mask: Optional[jax.Array] = None, keep: Optional[jax.Array] = None,
                 keep_valid: Optional[jax.Array] = None, context: Optional[jax.Array] = None,
                 return_tokens: bool = False, keep_registers: bool = False):
        batch, height, width, _ = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise UserError(f"image size {height}x{width} is not a multiple of patch_size={p}")
        grid = (height // p, width // p)
        init = vit_init(self.init_scheme)
        # Patchify then one matmul: the same map as DINO's Conv2d(k=p, stride=p), faster on CPU.
        fan_in = p * p * images.shape[-1]
        patch_bias = nn.initializers.zeros if init.patch_bias_zero else uniform(fan_in**-0.5)
        x = nn.Dense(self.embed_dim, kernel_init=init.patch_kernel, bias_init=patch_bias, dtype=self.dtype,
                     name="patch_embed")(patchify(images, p))

        if self.mask_token:
            inits = {"zeros": nn.initializers.zeros, "trunc_normal": trunc_normal}
            if self.mask_token not in inits:
                raise UserError(f"unknown mask_token init {self.mask_token!r}; use one of {sorted(inits)} or ''")
            mask_token = self.param("mask_token", inits[self.mask_token], (1, 1, self.embed_dim))
        if mask is not None:
            if not self.mask_token:
                raise ValueError("a mask was given to a ViT without a mask token; build it with "
                                 "mask_token='zeros' or 'trunc_normal' (config.model.mask_token)")
            x = jnp.where(mask[..., None], mask_token.astype(x.dtype), x)

        if self.pos_embed == "sincos":
            pos = sincos_pos_embed(grid, self.embed_dim, width_first=init.sincos_width_first)
        elif self.pos_embed == "none":  # MP3: no position information at all (no parameter either)
            pos = jnp.zeros((1, 1 + grid[0] * grid[1], self.embed_dim), x.dtype)
        elif self.pos_embed == "learned":
            num_patches = (self.img_size // p) ** 2
            pos = interpolate_pos_embed(self.param("pos_embed", init.pos_embed, (1, 1 + num_patches, self.embed_dim)),
                                        grid)
        else:
            raise UserError(f"unknown pos_embed {self.pos_embed!r} (config.model.pos_embed); use 'learned', "
                            f"'sincos' or 'none'")
        pos = pos.astype(x.dtype)  # [1, 1 + N, D], the [CLS] slot first
        x = x + pos[:, 1:]
        kv_mask = None
        if keep is not None:
            x = jnp.take_along_axis(x, keep[..., None], axis=1)  # [B, K, D]
            kv_mask = keep_valid
        if context is not None:
            if keep is not None:
                raise ValueError("pass either `keep` or `context` to the ViT, not both")
            kv_mask = context
        if self.class_token:
            cls_token = self.param("cls_token", init.cls_token, (1, 1, self.embed_dim))
            cls = jnp.broadcast_to(cls_token.astype(x.dtype) + pos[:, :1], (batch, 1, self.embed_dim))
            x = jnp.concatenate([cls, x], axis=1)
            if kv_mask is not None:
                kv_mask = jnp.concatenate([jnp.ones((batch, 1), bool), kv_mask], axis=1)
        prefix, registers = int(self.class_token), self.num_register_tokens
        if registers:
            # Inserted after [CLS], no position embedding (DINOv2).
            reg = self.param("register_tokens", init.register_tokens, (1, registers, self.embed_dim))
            reg = jnp.broadcast_to(reg.astype(x.dtype), (batch, registers, self.embed_dim))
            x = jnp.concatenate([x[:, :prefix], reg, x[:, prefix:]], axis=1)
            if kv_mask is not None:
                kv_mask = jnp.concatenate([kv_mask[:, :prefix], jnp.ones((batch, registers), bool),
                                           kv_mask[:, prefix:]], axis=1)

        if self.drop_path_uniform:
            drop_rates = [self.drop_path_rate] * self.depth
        else:
            drop_rates = np.linspace(0.0, self.drop_path_rate, self.depth).tolist()
        norm = nn.LayerNorm(1e-6, dtype=self.dtype, name="norm")
        block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block  # (self, x, deterministic, kv_mask)
        # Where the caller reads only [CLS], the last block computes only [CLS]'s output: its
        # attention with one query row, its MLP on one token (DINO ViT-S/16: 1/16 of the
        # backbone's FLOPs saved, forward and backward), with the same [CLS] output.
        cls_only = self.class_token and not (return_all or return_tokens)
        all_tokens, all_attn = [], []
        for i in range(self.depth):
            queries = 1 if cls_only and i == self.depth - 1 else 0
            x, attn = block(self.num_heads, self.mlp_ratio, drop_rates[i], self.dtype, self.layerscale_init,
                            queries, self.init_scheme, i + 1, name=f"blocks_{i}")(x, not train, kv_mask)
            if return_all:
                all_tokens.append(x)
                all_attn.append(attn)
        x = norm(x)
        if registers and not keep_registers:
            x = jnp.concatenate([x[:, :prefix], x[:, prefix + registers:]], axis=1)
        pooled = x[:, 0] if self.class_token else masked_mean(x, keep_valid)
        if return_all:
            return {"cls": pooled, "tokens": jnp.stack(all_tokens), "attn": jnp.stack(all_attn)}
        return x if return_tokens else pooled


def masked_mean(tokens: jax.Array, valid: Optional[jax.Array]) -> jax.Array:
    """Mean of tokens [B, T, D] over T, over the `valid` [B, T] ones only when given: [B, D]."""
    if valid is None:
        return tokens.mean(axis=1)
    weights = valid.astype(tokens.dtype)[..., None]
    return (tokens * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


def vit(size: str, *, img_size: int, patch_size: int, drop_path_rate: float = 0.0,
        embed_dim: Optional[int] = None, depth: Optional[int] = None, num_heads: Optional[int] = None,
        pos_embed: str = "learned", dtype: jnp.dtype = jnp.float32, remat: bool = False, mask_token: str = "",
        class_token: bool = True, layerscale_init: float = 0.0, num_register_tokens: int = 0,
        drop_path_uniform: bool = False, init: str = "dino") -> VisionTransformer:
    """Builds a named ViT (`tiny|small|base|large`) or a custom one when size='custom'.

    With a named size, `num_heads` (when given) replaces the size's head count: MoCo v3's
    vit_small has 12 heads of width 32, DINO's 6 of width 64.
    """
    if size == "custom":
        if None in (embed_dim, depth, num_heads):
            raise UserError("model.size='custom' needs model.embed_dim, model.depth and model.num_heads")
        dims = (embed_dim, depth, num_heads)
    elif size in VIT_SIZES:
        dims = VIT_SIZES[size][:2] + (num_heads or VIT_SIZES[size][2],)
    else:
        raise UserError(f"unknown ViT size {size!r}; choose one of {sorted(VIT_SIZES)} or 'custom'")
    vit_init(init)  # an unknown name fails here, before any tracing
    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dims[0], depth=dims[1],
                             num_heads=dims[2], drop_path_rate=drop_path_rate, pos_embed=pos_embed, dtype=dtype,
                             remat=remat, mask_token=mask_token, class_token=class_token,
                             layerscale_init=layerscale_init, num_register_tokens=num_register_tokens,
                             drop_path_uniform=drop_path_uniform, init_scheme=init)
