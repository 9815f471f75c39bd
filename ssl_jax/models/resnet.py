"""ResNet-18/34/50/101/152 (v1.5, as torchvision) with globally synchronised BatchNorm.

Strides sit on the 3x3 convolution of a bottleneck (v1.5); convolutions have no bias.
`conv_init` names the convolution init of the reference that trained the recipe (`CONV_INITS`:
torchvision's kaiming-normal fan_out, SimCLR's TF variance scaling, BYOL's haiku default);
BatchNorm scale 1 / shift 0 and PyTorch's momentum 0.1 (flax `momentum=0.9`, TF/haiku decay
0.9) and eps 1e-5 in all three. `zero_init_residual` starts the last BatchNorm scale of every
block at 0 (SimCLR, BYOL, SimSiam and MoCo v3 do; SwAV and torchvision's default do not),
so each block starts as the identity.

Synchronised BatchNorm needs no code: the train step is jitted over global arrays
whose batch axis is sharded on the mesh, so the mean and variance over the batch
axis below are over the *global* batch, with the cross-device reduction inserted by
XLA (as SyncBatchNorm / cross-replica BN in the papers). Statistics live in the
`batch_stats` collection, which the methods keep in the TrainState's `model_state`.

`dtype` is the compute dtype (bfloat16 for mixed precision; parameters and BatchNorm
statistics stay float32, flax computes the batch statistics in float32); `remat=True`
recomputes each residual block in the backward pass (`nn.remat`).

`cifar_stem=True` is the CIFAR variant of the SimCLR paper (App. B.9): a 3x3 stride-1
first convolution and no max-pool, so 32 px images keep a 4x4 final feature map.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError
from ssl_jax.models import conv



def haiku_conv_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """hk.Conv2D's default: TruncatedNormal(stddev=1 / sqrt(fan_in)), cut at +-2 stddev and not
    rescaled, so the std is 0.8796 / sqrt(fan_in). shape: [kh, kw, C_in, C_out], fan_in = kh kw C_in."""
    fan_in = 1
    for dim in shape[:-1]:
        fan_in *= dim
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / jnp.sqrt(fan_in).astype(dtype)


CONV_INITS = {
    # torchvision resnet.py: kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).
    "torchvision": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    # google-research/simclr resnet.py conv2d_fixed_padding: tf.variance_scaling_initializer()
    # (scale 1, fan_in, truncated normal rescaled so the std is 1 / sqrt(fan_in)).
    "simclr_tf": nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
    # deepmind-research byol/utils/networks.py: hk.Conv2D without w_init.
    "haiku": haiku_conv_init,
}

RESNET_DEPTHS = {
    # depth: (blocks per stage, bottleneck blocks?)
    10: ((1, 1, 1, 1), False),  # for tests and smoke runs
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def _conv(features: int, kernel: int, stride: int = 1, name: str | None = None, dtype=jnp.float32,
          init: str = "torchvision") -> nn.Conv:
    """torch Conv2d(kernel, stride, padding=kernel // 2, bias=False), computing in `dtype`,
    its kernel initialised by `CONV_INITS[init]`.

    The convolution itself is one of `conv.py`'s matmul formulations (the same function and
    gradients as lax's, several times faster on the CPU); the parameters are nn.Conv's.
    """
    pad = kernel // 2
    compute = conv.pointwise_conv if kernel == 1 else conv.conv_with_matmul_kernel_gradient
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False,
                   kernel_init=CONV_INITS[init], dtype=dtype, conv_general_dilated=compute, name=name)


class ResidualBlock(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 x4) block. x: [B, H, W, C]."""

    features: int
    stride: int
    bottleneck: bool
    zero_init_residual: bool
    norm: functools.partial
    dtype: jnp.dtype = jnp.float32
    conv_init: str = "torchvision"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        conv = functools.partial(_conv, dtype=self.dtype, init=self.conv_init)
        if self.bottleneck:
            y = nn.relu(self.norm(name="bn1")(conv(self.features, 1, name="conv1")(x)))
            y = nn.relu(self.norm(name="bn2")(conv(self.features, 3, self.stride, name="conv2")(y)))
            out_features = 4 * self.features
            y = self.norm(name="bn3", scale_init=last_scale_init)(conv(out_features, 1, name="conv3")(y))
        else:
            y = nn.relu(self.norm(name="bn1")(conv(self.features, 3, self.stride, name="conv1")(x)))
            out_features = self.features
            y = self.norm(name="bn2", scale_init=last_scale_init)(conv(out_features, 3, name="conv2")(y))
        if x.shape[-1] != out_features or self.stride != 1:
            x = self.norm(name="downsample_bn")(conv(out_features, 1, self.stride, name="downsample_conv")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet backbone without its classifier. images [B, H, W, 3] -> pooled features [B, C].

    C is 512 for ResNet-18/34 and 2048 for ResNet-50 and deeper.
    """

    stage_sizes: Sequence[int]
    bottleneck: bool
    cifar_stem: bool = False
    zero_init_residual: bool = True
    width: int = 64
    dtype: jnp.dtype = jnp.float32  # compute dtype; parameters and statistics are float32
    remat: bool = False  # recompute each residual block in the backward pass
    conv_init: str = "torchvision"  # a key of CONV_INITS

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)
        block = nn.remat(ResidualBlock) if self.remat else ResidualBlock
        stem = functools.partial(_conv, self.width, name="conv1", dtype=self.dtype, init=self.conv_init)
        if self.cifar_stem:
            x = nn.relu(norm(name="bn1")(stem(3)(images)))
        else:
            x = nn.relu(norm(name="bn1")(stem(7, 2)(images)))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                x = block(self.width * 2**stage, stride, self.bottleneck, self.zero_init_residual, norm, self.dtype,
                          self.conv_init, name=f"layer{stage + 1}_{index}")(x)
        return jnp.mean(x, axis=(1, 2))


def resnet(depth: int, *, cifar_stem: bool = False, zero_init_residual: bool = True, width: int = 64,
           dtype: jnp.dtype = jnp.float32, remat: bool = False, conv_init: str = "torchvision") -> ResNet:
    """ResNet-`depth` (10, 18, 34, 50, 101 or 152); `width` channels in the first stage (64 in the papers);
    `conv_init` the convolution init (a key of CONV_INITS)."""
    if depth not in RESNET_DEPTHS:
        raise UserError(f"unknown ResNet depth {depth} (config.model.depth); choose one of {sorted(RESNET_DEPTHS)}")
    if conv_init not in CONV_INITS:
        raise UserError(f"unknown ResNet conv init {conv_init!r} (config.model.conv_init); "
                        f"choose one of {sorted(CONV_INITS)}")
    stage_sizes, bottleneck = RESNET_DEPTHS[depth]
    return ResNet(stage_sizes, bottleneck, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual, width=width,
                  dtype=dtype, remat=remat, conv_init=conv_init)
