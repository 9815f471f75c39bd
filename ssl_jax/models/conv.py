"""The ResNets' convolutions, computed through the matmuls XLA's CPU backend runs fast.

XLA:CPU (jax 0.10) computes a convolution's kernel gradient as a convolution over the batch
axis, after transposing the batch axis last; for a SimCLR ResNet-50 step that took about 80%
of the step (benchmarks/RESULTS.md). The two functions below compute exactly
`lax.conv_general_dilated`'s function (NHWC inputs, HWIO kernel, no dilation, no groups) and
gradients through matmuls instead. `resnet._conv` hands one of them to `nn.Conv` as its
`conv_general_dilated`, so the parameters (names, shapes, init) are nn.Conv's and checkpoints
and the torchvision conversion do not change.

- `pointwise_conv` (1x1 kernels, two of a bottleneck block's three convolutions and every
  downsampling shortcut): a 1x1 convolution *is* a matmul over channels, after a strided slice
  when the stride is 2. Its forward pass and both gradients become matmuls on every platform.
- `conv_with_matmul_kernel_gradient` (the 3x3 and 7x7 kernels): XLA's convolution for the
  forward pass and the input gradient; on the CPU the kernel gradient is one matmul per kernel
  offset, dy^T [Cout, B*Ho*Wo] @ window [B*Ho*Wo, Cin], or, when there are few input channels
  (the 7x7 stem's 3), a single matmul over all offsets' windows side by side (im2col). On GPUs and TPUs,
  whose convolution libraries compute kernel gradients well, XLA's own kernel gradient is kept
  (`lax.platform_dependent` picks at lowering time).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")

# Below this many input channels one matmul per kernel offset is too thin to use the machine,
# and the offsets' inputs are concatenated into one matmul (the stem's 3 channels; ResNet's
# other convolutions have 64 or more).
IM2COL_BELOW_CHANNELS = 16


def _check_supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
    """Raises unless the call is an undilated, ungrouped NHWC x HWIO convolution (what nn.Conv builds)."""
    expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC_HWIO)
    if dimension_numbers is not None and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != expected:
        raise ValueError(f"dimension numbers {dimension_numbers} are not supported: only NHWC inputs with HWIO kernels")
    if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) or feature_group_count != 1:
        raise ValueError("dilated or grouped convolutions are not supported: use lax.conv_general_dilated")


def pointwise_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1, precision=None) -> jax.Array:
    """`lax.conv_general_dilated` for a 1x1 kernel without padding, as a matmul over channels.

    lhs [B, H, W, Cin], rhs [1, 1, Cin, Cout] -> [B, ceil(H / sh), ceil(W / sw), Cout].
    """
    _check_supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
    if rhs.shape[:2] != (1, 1) or any(low or high for low, high in padding):
        raise ValueError(f"pointwise_conv needs a 1x1 kernel without padding, got kernel {rhs.shape}, "
                         f"padding {padding}")
    stride_h, stride_w = window_strides
    return _channel_matmul(lhs[:, ::stride_h, ::stride_w, :], rhs[0, 0], precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _channel_matmul(x, kernel, precision):
    """x [B, H, W, Cin] @ kernel [Cin, Cout] -> [B, H, W, Cout]."""
    return lax.dot_general(x, kernel, (((3,), (0,)), ((), ())), precision=precision)


def _channel_matmul_forward(x, kernel, precision):
    return _channel_matmul(x, kernel, precision), (x, kernel)


def _channel_matmul_backward(precision, residuals, dy):
    x, kernel = residuals
    dy = _materialised(dy)
    dx = lax.dot_general(dy, kernel, (((3,), (1,)), ((), ())), precision=precision)
    in_channels, out_channels = kernel.shape
    dkernel = product_over_positions(x.reshape(-1, in_channels), dy.reshape(-1, out_channels), precision)
    return dx, dkernel.astype(kernel.dtype)


_channel_matmul.defvjp(_channel_matmul_forward, _channel_matmul_backward)


def _materialised(dy: jax.Array) -> jax.Array:
    """dy, written to memory once in its own layout before the kernel gradient reads it.

    Without the barrier XLA fuses the elementwise BatchNorm backward that produces dy into the
    transposed copy the kernel-gradient matmul takes, and that fused loop reads its inputs
    with a stride of C elements (200 ms against 30 ms for the plain copy of a [50176, 256] dy).
    """
    return lax.optimization_barrier(dy)


def product_over_positions(a: jax.Array, b: jax.Array, precision=None) -> jax.Array:
    """a^T @ b for a [P, M], b [P, N] (P positions, M, N channels) -> [M, N], in float32.

    XLA:CPU's matmul takes a transposed copy of one operand, P x width elements; writing the
    transpose explicitly on the narrower operand makes that copy the smaller one.
    """
    matmul = functools.partial(jnp.matmul, precision=precision, preferred_element_type=jnp.float32)
    return matmul(a.T, b) if a.shape[1] <= b.shape[1] else matmul(b.T, a).T


def conv_with_matmul_kernel_gradient(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
                                     lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                                     feature_group_count: int = 1, precision=None) -> jax.Array:
    """`lax.conv_general_dilated` (lhs [B, H, W, Cin], rhs [kh, kw, Cin, Cout]) whose kernel
    gradient is computed with matmuls on the CPU."""
    _check_supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
    padding = tuple((int(low), int(high)) for low, high in padding)
    return _conv(lhs, rhs, tuple(window_strides), padding, precision)


def _xla_conv(x, kernel, strides, padding, precision):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC_HWIO, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, padding, precision):
    return _xla_conv(x, kernel, strides, padding, precision)


def _conv_forward(x, kernel, strides, padding, precision):
    return _xla_conv(x, kernel, strides, padding, precision), (x, kernel)


def _conv_backward(strides, padding, precision, residuals, dy):
    x, kernel = residuals
    (dx,) = jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding, precision), x)[1](dy)

    def xla_kernel_gradient(x, kernel, dy):
        return jax.vjp(lambda kernel: _xla_conv(x, kernel, strides, padding, precision), kernel)[1](dy)[0]

    def matmul_kernel_gradient(x, kernel, dy):
        return kernel_gradient_by_matmuls(x, dy, kernel.shape, strides, padding, precision).astype(kernel.dtype)

    dkernel = lax.platform_dependent(x, kernel, dy, cpu=matmul_kernel_gradient, default=xla_kernel_gradient)
    return dx, dkernel


_conv.defvjp(_conv_forward, _conv_backward)


def kernel_gradient_by_matmuls(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int],
                               padding: Sequence[tuple[int, int]], precision=None) -> jax.Array:
    """d loss / d kernel of a convolution, [kh, kw, Cin, Cout], in float32.

    x [B, H, W, Cin] is the convolution's input and dy [B, Ho, Wo, Cout] the loss's gradient
    with respect to its output. Kernel offset (u, v) multiplies the inputs
    window(u, v) = padded_x[:, u::sh, v::sw][:, :Ho, :Wo] ([B, Ho, Wo, Cin]), so its gradient
    is window(u, v)^T @ dy over the B * Ho * Wo positions. dy is transposed once, [Cout, P],
    and each window multiplies it untransposed: dy^T @ window(u, v) -> [Cout, Cin].
    """
    kernel_h, kernel_w, in_channels, out_channels = kernel_shape
    stride_h, stride_w = strides
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    batch, out_h, out_w, _ = dy.shape
    dy_transposed = _materialised(dy).reshape(-1, out_channels).T  # [Cout, P]
    matmul = functools.partial(jnp.matmul, precision=precision, preferred_element_type=jnp.float32)

    def window(u: int, v: int) -> jax.Array:  # [P, Cin]
        limit = (batch, u + (out_h - 1) * stride_h + 1, v + (out_w - 1) * stride_w + 1, in_channels)
        return lax.slice(padded, (0, u, v, 0), limit, (1, stride_h, stride_w, 1)).reshape(-1, in_channels)

    windows = [window(u, v) for u in range(kernel_h) for v in range(kernel_w)]
    if in_channels < IM2COL_BELOW_CHANNELS:
        gradient = matmul(dy_transposed, jnp.concatenate(windows, axis=-1)).T  # [kh * kw * Cin, Cout]
    else:
        gradient = jnp.stack([matmul(dy_transposed, w) for w in windows]).transpose(0, 2, 1)  # [kh * kw, Cin, Cout]
    return gradient.reshape(kernel_shape)
