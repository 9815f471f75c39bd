"""The ResNets' matmul convolutions (ssl_jax/models/conv.py) compute lax's convolution and its gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssl_jax.models import conv

# (spatial size, Cin, Cout, kernel, stride): both strides, odd sizes (the last window is
# partial), the 7x7 stem's 3 channels (the im2col path) and wider channels (one matmul per offset).
CASES = [(9, 5, 7, 1, 1), (9, 5, 7, 1, 2), (8, 24, 6, 1, 2), (9, 20, 6, 3, 1), (10, 20, 6, 3, 2),
         (11, 3, 8, 7, 2), (7, 16, 16, 3, 2)]


def _lax_conv(x, kernel, stride, pad):
    return lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                    dimension_numbers=conv.NHWC_HWIO, precision=lax.Precision.HIGHEST)


def _numpy_conv(x, kernel, stride, pad):
    """float64 reference: y[b, i, j] = sum over (u, v) of padded_x[b, i*s + u, j*s + v] @ kernel[u, v]."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    out_h = (padded.shape[1] - kh) // stride + 1
    out_w = (padded.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for u in range(kh):
        for v in range(kw):
            window = padded[:, u:u + (out_h - 1) * stride + 1:stride, v:v + (out_w - 1) * stride + 1:stride]
            y += window @ kernel[u, v]
    return y


@pytest.mark.parametrize("size,cin,cout,kernel_size,stride", CASES)
def test_matmul_convolutions_match_lax_convolution_and_its_gradients(size, cin, cout, kernel_size, stride):
    rng = np.random.default_rng(size * 100 + cin + kernel_size)
    pad = kernel_size // 2
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, cin, cout)), jnp.float32)
    matmul_conv = conv.pointwise_conv if kernel_size == 1 else conv.conv_with_matmul_kernel_gradient

    def ours(x, kernel):
        return matmul_conv(x, kernel, (stride, stride), ((pad, pad), (pad, pad)), precision=lax.Precision.HIGHEST)

    y, ours_vjp = jax.vjp(jax.jit(ours), x, kernel)
    np.testing.assert_allclose(y, _numpy_conv(x, kernel, stride, pad), rtol=1e-5, atol=1e-4)
    y_lax, lax_vjp = jax.vjp(lambda x, kernel: _lax_conv(x, kernel, stride, pad), x, kernel)
    assert y.shape == y_lax.shape
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    for ours_grad, lax_grad in zip(ours_vjp(dy), lax_vjp(dy)):
        assert ours_grad.dtype == lax_grad.dtype
        np.testing.assert_allclose(ours_grad, lax_grad, rtol=1e-5, atol=1e-4 * float(jnp.max(jnp.abs(lax_grad))))


def test_bfloat16_gradients_keep_the_kernel_dtype_and_the_float32_value():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 8)), jnp.bfloat16)
    y, vjp = jax.vjp(lambda x, k: conv.conv_with_matmul_kernel_gradient(x, k, (1, 1), ((1, 1), (1, 1))), x, kernel)
    _, kernel_grad = vjp(jnp.ones_like(y))
    assert kernel_grad.dtype == jnp.bfloat16
    reference = jax.vjp(lambda k: _lax_conv(x.astype(jnp.float32), k, 1, 1), kernel.astype(jnp.float32))[1](
        jnp.ones(y.shape, jnp.float32))[0]
    np.testing.assert_allclose(kernel_grad.astype(jnp.float32), reference, rtol=2e-2, atol=0.5)


def test_nn_conv_with_matmul_convolution_keeps_nn_conv_parameters():
    module = nn.Conv(8, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                     conv_general_dilated=conv.conv_with_matmul_kernel_gradient)
    plain = nn.Conv(8, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 4)), jnp.float32)
    params = plain.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, module.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(module.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(rhs_dilation=(2, 2)), dict(feature_group_count=2),
                                 dict(dimension_numbers=("NCHW", "OIHW", "NCHW"))])
def test_unsupported_convolutions_are_refused(bad):
    x, kernel = jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 4, 4))
    with pytest.raises(ValueError, match="not supported"):
        conv.conv_with_matmul_kernel_gradient(x, kernel, (1, 1), ((1, 1), (1, 1)), **bad)


def test_pointwise_conv_refuses_a_larger_kernel():
    with pytest.raises(ValueError, match="1x1 kernel"):
        conv.pointwise_conv(jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 4, 4)), (1, 1), ((1, 1), (1, 1)))
