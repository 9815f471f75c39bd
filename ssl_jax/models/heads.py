"""Projection heads shared by the methods: DINO's head and the contrastive methods' MLPs.

`DINOHead` is DINO's `DINOHead`: an MLP (Linear-GELU x (nlayers-1), then a linear
bottleneck), L2 normalisation, and a weight-normalised linear layer without bias
whose norm `g` is fixed to 1 when `norm_last_layer` (the reference sets
`weight_g.requires_grad = False`). Init as in DINO, iBOT and DINOv2 alike: the MLP's
Linears N(0, 0.02) with zero biases (`_init_weights`); the last layer is built after
`self.apply(self._init_weights)`, so its direction `v` keeps torch.nn.Linear's default,
U(-1/sqrt(D_in), 1/sqrt(D_in)), and `g` starts at 1. The weight-normalised layer is computed as
`(x @ v) * g / ||v||`, normalising after the matmul: numerically the same as
`x @ (g * v / ||v||)` but it never materialises a second [bottleneck, out_dim]
matrix, which made the 65536-wide layer ~2.4x slower on CPU.

`dtype` is the compute dtype of the linear layers (bfloat16 for mixed precision);
parameters stay float32 and the losses cast the outputs to float32.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.losses import l2_normalize
from ssl_jax.models.vit import gelu


def haiku_linear_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """haiku.Linear's default kernel init, `TruncatedNormal(stddev=1 / sqrt(fan_in))`: a standard
    normal cut at +-2, times the stddev (haiku does not rescale for the cut, so the std is
    0.880 / sqrt(fan_in); flax's variance_scaling 'truncated_normal' would give 1 / sqrt(fan_in))."""
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / math.sqrt(shape[0])


LINEAR_INITS = {
    # torch.nn.Linear's default kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    # MoCo v3, SimSiam, SwAV, the DINO-family last layer.
    "torch": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
    # haiku.Linear's default: BYOL.
    "haiku": haiku_linear_kernel_init,
    # SimCLR's dense layers: tf.random_normal_initializer(stddev=.01).
    "normal_0.01": nn.initializers.normal(0.01),
    # DINO/iBOT/DINOv2 `_init_weights`: trunc_normal_(std=.02), cut at +-2 in absolute value,
    # i.e. +-100 std: a normal (flax's truncated_normal(.02) cuts at +-2 std, std 0.0176).
    "normal_0.02": nn.initializers.normal(0.02),
}


def linear_bias_init(scheme: str, fan_in: int) -> nn.initializers.Initializer:
    """The bias init that goes with a LINEAR_INITS kernel init: torch.nn.Linear's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for 'torch'; zeros for haiku, TF and DINO's `_init_weights`."""
    if scheme != "torch":
        return nn.initializers.zeros
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def column_sum(m: jax.Array) -> jax.Array:
    """[R, C] -> [C]: the sum over rows, computed as the product ones[1, R] @ m in full float32
    precision. XLA's CPU backend sums over a matrix's leading axis about 4x slower than this
    matrix product (186 against 44 ms on DINO's [256, 65536] last layer, 2 CPU cores)."""
    ones = jnp.ones((1, m.shape[0]), m.dtype)
    return jnp.dot(ones, m, precision=jax.lax.Precision.HIGHEST)[0]


class WeightNormDense(nn.Module):
    """Bias-free weight-normalised linear layer, `torch.nn.utils.weight_norm(Linear)`.

    Params: `v` [D_in, D_out] (direction), torch.nn.Linear's default init, and, unless
    `fix_norm`, `g` [1, D_out] initialised to 1: 2-D like PyTorch's `weight_g` [D_out, 1],
    so it gets weight decay as in DINO's `get_params_groups`. x: [..., D_in] -> [..., D_out].
    """

    features: int
    fix_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.param("v", LINEAR_INITS["torch"], (x.shape[-1], self.features))
        inv_norm = jax.lax.rsqrt(column_sum(jnp.square(v.astype(jnp.float32))))
        out = (x @ v.astype(x.dtype)) * inv_norm.astype(x.dtype)
        if not self.fix_norm:
            out = out * self.param("g", nn.initializers.ones, (1, self.features))[0].astype(x.dtype)
        return out


class MLP(nn.Module):
    """Linear layers with GELU between them: dims[0] -> ... -> dims[-1], no act. after the last.
    Kernels N(0, 0.02), biases 0 (DINO's `_init_weights`). x: [..., D] -> [..., dims[-1]]."""

    dims: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, dim in enumerate(self.dims):
            x = nn.Dense(dim, kernel_init=LINEAR_INITS["normal_0.02"], dtype=self.dtype, name=f"mlp_{i}")(x)
            if i < len(self.dims) - 1:
                x = gelu(x)
        return x


class DINOHead(nn.Module):
    """DINO projection head. x: [B, D] -> logits [B, out_dim].

    nlayers=3, hidden_dim=2048, bottleneck_dim=256 as in the reference.
    """

    out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dims = (self.hidden_dim,) * (self.nlayers - 1) + (self.bottleneck_dim,)
        x = l2_normalize(MLP(dims, self.dtype, name="mlp")(x))
        return WeightNormDense(self.out_dim, fix_norm=self.norm_last_layer, name="last_layer")(x)


class IBOTHead(nn.Module):
    """iBOT's `iBOTHead`: DINO's head applied to the [CLS] and the patch tokens.

    cls: [..., D] -> [..., out_dim]; patches: [..., N, D] -> [..., N, patch_out_dim].
    One MLP (+ L2 normalisation) for both; the [CLS] goes through `last_layer`, the patches
    through `last_layer2`, or through `last_layer` too when `shared` (then patch_out_dim
    is out_dim, as in the reference). Parameter names are DINOHead's (`mlp`, `last_layer`),
    so DINO's freezing regexes also match `last_layer2`.
    """

    out_dim: int
    patch_out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    shared: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, cls: jax.Array, patches: jax.Array) -> tuple[jax.Array, jax.Array]:
        dims = (self.hidden_dim,) * (self.nlayers - 1) + (self.bottleneck_dim,)
        mlp = MLP(dims, self.dtype, name="mlp")
        last = WeightNormDense(self.out_dim, fix_norm=self.norm_last_layer, name="last_layer")
        last2 = last if self.shared else WeightNormDense(self.patch_out_dim, fix_norm=self.norm_last_layer,
                                                          name="last_layer2")
        return last(l2_normalize(mlp(cls))), last2(l2_normalize(mlp(patches)))


class ProjectionMLP(nn.Module):
    """The projector / predictor MLP of SimCLR, BYOL, MoCo v3, SimSiam and SwAV. x: [B, D] -> [B, out_dim].

    (num_layers - 1) x [Linear(hidden_dim) -> BatchNorm -> ReLU], then Linear(out_dim),
    optionally followed by a BatchNorm (`last_bn`) whose scale is learned only with
    `last_bn_scale` (SimCLR) and that has no shift (SimCLR, MoCo v3 and SimSiam
    all drop it). A Linear followed by BatchNorm has no bias: BatchNorm's mean
    subtraction cancels it exactly (BYOL's and SwAV's first Linear have one, which never
    changes the output and gets a zero gradient). Without a last BN the last Linear has a
    bias iff `last_bias` (SimSiam's predictor, SwAV: yes; BYOL, MoCo v3 ResNet predictor: no).
    `init_scheme` names the kernel init (LINEAR_INITS) and its bias init (`linear_bias_init`).
    BatchNorm: momentum 0.9 (torch 0.1, haiku/TF decay 0.9), eps 1e-5, as in every reference;
    statistics over the global batch (see `ssl_jax.models.resnet`).
    """

    hidden_dim: int
    out_dim: int
    num_layers: int = 2
    last_bn: bool = False
    last_bn_scale: bool = False
    last_bias: bool = True
    init_scheme: str = "torch"  # a key of LINEAR_INITS
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.init_scheme not in LINEAR_INITS:
            raise ValueError(f"unknown projector/predictor init {self.init_scheme!r} (method.projector.init, "
                             f"method.predictor.init); choose one of {sorted(LINEAR_INITS)}")
        kernel_init = LINEAR_INITS[self.init_scheme]
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, use_bias=False, kernel_init=kernel_init, dtype=self.dtype,
                         name=f"linear_{i}")(x)
            x = nn.relu(norm(name=f"bn_{i}")(x))
        last = self.num_layers - 1
        x = nn.Dense(self.out_dim, use_bias=self.last_bias and not self.last_bn, kernel_init=kernel_init,
                     bias_init=linear_bias_init(self.init_scheme, x.shape[-1]), dtype=self.dtype,
                     name=f"linear_{last}")(x)
        if self.last_bn:
            x = norm(use_scale=self.last_bn_scale, use_bias=False, name=f"bn_{last}")(x)
        return x


def projection_mlp(mlp_cfg, dtype: jnp.dtype = jnp.float32) -> ProjectionMLP:
    """A ProjectionMLP from a config section (hidden_dim, out_dim, num_layers, last_bn, ...)."""
    return ProjectionMLP(mlp_cfg.hidden_dim, mlp_cfg.out_dim, mlp_cfg.num_layers, mlp_cfg.get("last_bn", False),
                         mlp_cfg.get("last_bn_scale", False), mlp_cfg.get("last_bias", True),
                         mlp_cfg.get("init", "torch"), dtype)


class LinearHead(nn.Module):
    """One linear layer x [B, D] -> logits [B, num_outputs]: the pretext classifiers (rotation,
    joint label x rotation, instance discrimination). `train` is accepted so it chains in a
    `Network`. `kernel_init` names its kernel's LINEAR_INITS entry (DeiT's classifiers: 'normal_0.02'); the bias is 0."""

    num_outputs: int
    dtype: jnp.dtype = jnp.float32
    kernel_init: str = "torch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        return nn.Dense(self.num_outputs, kernel_init=LINEAR_INITS[self.kernel_init], dtype=self.dtype, name="linear")(x)
