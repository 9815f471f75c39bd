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
from typing import Callable, Optional, Sequence

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
    # facebookresearch/deit models.py DistilledVisionTransformer: timm's init, dist_token trunc_normal(.02)
    # (the distillation token is register 0).
    "deit": ViTInit(register_tokens=trunc_normal),
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
    `attention` [B, H, Q, N] (optional): weights used in place of softmax(q k^T) (attention copy,
    Li et al. 2024: the values mixed by another network's attention).
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    init_scheme: str = "dino"
    layer: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, kv_mask: Optional[jax.Array] = None, queries: int = 0,
                 attention: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
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
        if queries:
            q = q[:, :, :queries]  # [B, H, Q, d]
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim**-0.5, k)
        if kv_mask is not None:
            logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype) if attention is None \
            else attention.astype(v.dtype)
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
    init_scheme: str = "dino"
    layer: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool, kv_mask: Optional[jax.Array] = None,
                 queries: int = 0, attention: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        dim = x.shape[-1]
        norm1 = nn.LayerNorm(1e-6, dtype=self.dtype, name="norm1")
        y, attn = Attention(self.num_heads, self.dtype, self.init_scheme, self.layer, name="attn")(
            norm1(x), kv_mask, queries, attention)
        if self.layerscale:
            y = LayerScale(self.layerscale, name="ls1")(y)
        if queries:
            x = x[:, :queries]
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
    """ViT backbone on images [B, H, W, 3] (RGB, channels last). Call a method with
    `vit.apply(variables, ..., method="embed")`; the token flow, as in the references:

        x = vit.embed(images, mask)        # [B, N, D] patch embeddings (+ mask token) + position embeddings
        x = x[:, keep]                     # (the caller, optional) any K of the N tokens: MAE, I-JEPA
        z = vit.encode(x, train, kv_mask)  # [B, P + K, D]: [CLS], registers, the K tokens; blocks, final norm
        vit(images, train)                 # [B, D]: the normed [CLS] (the mean normed patch token without [CLS])
        vit.tokens(images, train)          # [B, P + N, D] = encode(embed(images), train)
        vit.intermediate_layers(images, n) # DINO's get_intermediate_layers: the last n blocks' outputs, normed
        vit.block_outputs(images, train)   # every block's output [L, B, P + N, D] (before the norm), attention

    P = `num_prefix_tokens`: the [CLS] token (`class_token`) and `num_register_tokens` R.
    `img_size` fixes the position-embedding grid (img_size // patch_size squared); other input
    sizes are handled by interpolating it. `embed`'s `mask` [B, N] bool swaps the patch
    embeddings where it is True for the learned `mask_token` before the position embeddings are
    added (SimMIM, iBOT, DINOv2); it needs `mask_token` = 'zeros' (iBOT/DINOv2 init) or
    'trunc_normal' (SimMIM). `encode`'s `kv_mask` [B, K] bool: in every block only the tokens
    where it is True (and [CLS], registers) serve as keys/values, while every token stays a query
    (I-JEPA's padding entries, MP3's masked context keys). Without [CLS] (`class_token=False`,
    I-JEPA, MP3) `__call__` pools the mean of the normed patch tokens.

    DINOv2 options: `layerscale_init` > 0 adds LayerScale to every block (see `Block`);
    `num_register_tokens` R > 0 adds R learned `register_tokens` (Darcet et al. 2024) after
    [CLS], without position embedding (SiT's rotation token is one); `drop_path_uniform` gives
    every block the rate `drop_path_rate` (DINOv2's drop_path_uniform) instead of DINO's linear
    ramp from 0.

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

    @property
    def num_prefix_tokens(self) -> int:
        """P: the tokens before the patch tokens in `encode`'s output, [CLS] (if any) and the registers."""
        return int(self.class_token) + self.num_register_tokens

    def setup(self):
        init, dim, p = vit_init(self.init_scheme), self.embed_dim, self.patch_size
        # Patchify then one matmul: the same map as DINO's Conv2d(k=p, stride=p), faster on CPU.
        patch_bias = nn.initializers.zeros if init.patch_bias_zero else uniform((p * p * 3) ** -0.5)
        self.patch_embed = nn.Dense(dim, kernel_init=init.patch_kernel, bias_init=patch_bias, dtype=self.dtype)
        # The parameters below are created in this order: each one's init rng depends on it.
        mask_inits = {"zeros": nn.initializers.zeros, "trunc_normal": trunc_normal}
        if self.mask_token and self.mask_token not in mask_inits:
            raise UserError(f"unknown mask_token init {self.mask_token!r}; use one of {sorted(mask_inits)} or ''")
        self.mask_vector = (self.param("mask_token", mask_inits[self.mask_token], (1, 1, dim))
                            if self.mask_token else None)
        if self.pos_embed not in ("learned", "sincos", "none"):
            raise UserError(f"unknown pos_embed {self.pos_embed!r} (config.model.pos_embed); use 'learned', "
                            f"'sincos' or 'none'")
        num_patches = (self.img_size // p) ** 2
        self.pos_table = (self.param("pos_embed", init.pos_embed, (1, 1 + num_patches, dim))
                          if self.pos_embed == "learned" else None)
        self.cls = self.param("cls_token", init.cls_token, (1, 1, dim)) if self.class_token else None
        self.registers = (self.param("register_tokens", init.register_tokens, (1, self.num_register_tokens, dim))
                          if self.num_register_tokens else None)
        if self.drop_path_uniform:
            drop_rates = [self.drop_path_rate] * self.depth
        else:
            drop_rates = np.linspace(0.0, self.drop_path_rate, self.depth).tolist()
        # (self, x, deterministic, kv_mask, queries): the booleans and the query count are static.
        block = nn.remat(Block, static_argnums=(2, 4)) if self.remat else Block
        self.blocks = [block(self.num_heads, self.mlp_ratio, drop_rates[i], self.dtype, self.layerscale_init,
                             self.init_scheme, i + 1) for i in range(self.depth)]
        self.norm = nn.LayerNorm(1e-6, dtype=self.dtype)

    def embed(self, images: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        """images [B, H, W, 3] -> patch tokens [B, N, D] (row-major patch grid): the patch
        embedding, the mask token where mask [B, N] is True, plus the position embeddings."""
        _, height, width, channels = images.shape
        p = self.patch_size
        if height % p or width % p or channels != 3:
            raise UserError(f"the ViT takes RGB images [B, H, W, 3] with H and W multiples of patch_size={p}, "
                            f"got {images.shape}")
        grid = (height // p, width // p)
        x = self.patch_embed(patchify(images, p))
        if mask is not None:
            if self.mask_vector is None:
                raise ValueError("a mask was given to a ViT without a mask token; build it with "
                                 "mask_token='zeros' or 'trunc_normal' (config.model.mask_token)")
            x = jnp.where(mask[..., None], self.mask_vector.astype(x.dtype), x)
        if self.pos_embed == "sincos":
            pos = sincos_pos_embed(grid, self.embed_dim, width_first=vit_init(self.init_scheme).sincos_width_first)
        elif self.pos_embed == "learned":
            pos = interpolate_pos_embed(self.pos_table, grid)
        else:  # "none" (MP3): no position information at all
            return x
        return x + pos.astype(x.dtype)[:, 1:]  # [1, 1 + N, D]: the [CLS] slot first

    def encode(self, tokens: jax.Array, train: bool = False, kv_mask: Optional[jax.Array] = None) -> jax.Array:
        """tokens [B, K, D] (from `embed`) -> [B, P + K, D]: [CLS] (plus its position embedding)
        and the R registers put first, the blocks (keys/values only where kv_mask [B, K] is True,
        when given), the final LayerNorm."""
        x, kv_mask = self._prepend(tokens, kv_mask)
        return self.norm(self._blocks(x, train, kv_mask)[0][-1])

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [B, H, W, 3] -> [B, D]: the normed [CLS] output, or without [CLS] the mean of
        the normed patch tokens."""
        x = self.embed(images)
        if not self.class_token:
            return self.encode(x, train)[:, self.num_register_tokens:].mean(axis=1)
        # Only [CLS] is read, so the last block computes only [CLS]'s output: its attention with
        # one query row, its MLP on one token (DINO ViT-S/16: 1/16 of the backbone's FLOPs saved,
        # forward and backward), with the same [CLS] output.
        outputs, _ = self._blocks(self._prepend(x)[0], train, cls_only=True)
        return self.norm(outputs[-1])[:, 0]

    def tokens(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [B, H, W, 3] -> every normed output token [B, P + N, D]."""
        return self.encode(self.embed(images), train)

    def intermediate_layers(self, images: jax.Array, n: int = 1) -> list[jax.Array]:
        """DINO's `get_intermediate_layers`: the outputs of the last n blocks, each through the
        final LayerNorm, n arrays [B, P + N, D] (evaluation mode)."""
        if not 1 <= n <= self.depth:
            raise UserError(f"n={n} intermediate layers of a ViT with {self.depth} blocks")
        outputs, _ = self._blocks(self._prepend(self.embed(images))[0], train=False)
        return [self.norm(x) for x in outputs[-n:]]

    def block_outputs(self, images: jax.Array, train: bool = False,
                      attention: Sequence[jax.Array] = ()) -> tuple[jax.Array, jax.Array]:
        """images [B, H, W, 3] -> (every block's output tokens [L, B, P + N, D] before the final
        norm, every block's attention weights [L, B, H, P + N, P + N]), for analyses and attention
        transfer: the first L' blocks use the given weights `attention` [L', B, H, P + N, P + N]."""
        outputs, attention = self._blocks(self._prepend(self.embed(images))[0], train, attention=attention)
        return jnp.stack(outputs), jnp.stack(attention)

    def _prepend(self, tokens: jax.Array, kv_mask: Optional[jax.Array] = None):
        """tokens [B, K, D] -> ([B, P + K, D] with [CLS] (+ its position embedding) and the registers
        first (DINOv2: no position embedding), kv_mask [B, P + K] or None)."""
        batch, dim = tokens.shape[0], self.embed_dim
        prefix = []
        if self.class_token:
            cls = self.cls.astype(tokens.dtype)
            if self.pos_table is not None:  # fixed or no position embeddings have zeros at [CLS]
                cls = cls + self.pos_table[:, :1].astype(tokens.dtype)
            prefix.append(jnp.broadcast_to(cls, (batch, 1, dim)))
        if self.registers is not None:
            prefix.append(jnp.broadcast_to(self.registers.astype(tokens.dtype), (batch, self.num_register_tokens, dim)))
        if not prefix:
            return tokens, kv_mask
        if kv_mask is not None:
            kv_mask = jnp.concatenate([jnp.ones((batch, self.num_prefix_tokens), bool), kv_mask], axis=1)
        return jnp.concatenate(prefix + [tokens], axis=1), kv_mask

    def _blocks(self, x: jax.Array, train: bool, kv_mask: Optional[jax.Array] = None, cls_only: bool = False,
                attention: Sequence[jax.Array] = ()) -> tuple[list[jax.Array], list[jax.Array]]:
        """The blocks on x [B, T, D] -> (each block's output, each block's attention weights);
        with `cls_only` the last block computes the first token's output alone, [B, 1, D]; block i
        < len(attention) uses attention[i] [B, H, T, T] as its weights."""
        outputs, weights = [], []
        for i, block in enumerate(self.blocks):
            x, attn = block(x, not train, kv_mask, 1 if cls_only and i == self.depth - 1 else 0,
                            attention[i] if i < len(attention) else None)
            outputs.append(x)
            weights.append(attn)
        return outputs, weights


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
