"""Image-text pretraining (CLIP, SigLIP, SLIP, LiT): losses against float64 numpy references of the
official code, SigLIP's chunked loss on 8 devices, the locked tower, the tokenizer, the data and
the retrieval metrics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import image_text_losses as itl


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_loss_ref(zimg, ztxt, scale):
    """openai/CLIP paper Figure 3 / open_clip ClipLoss, float64:
    (cross_entropy(logits_per_image, labels) + cross_entropy(logits_per_text, labels)) / 2."""
    def ce(logits):
        logits = logits - logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))
    logits_per_image = scale * zimg @ ztxt.T
    return (ce(logits_per_image) + ce(logits_per_image.T)) / 2


def siglip_loss_ref(zimg, ztxt, t, b):
    """big_vision siglip.py loss_fn, float64: labels 2*eye-1, -sum(log_sigmoid(labels*logits), -1), mean."""
    logits = zimg @ ztxt.T * t + b
    labels = 2 * np.eye(len(zimg)) - 1
    log_sigmoid = -np.logaddexp(0.0, -labels * logits)
    return np.mean(-np.sum(log_sigmoid, axis=-1))


def test_clip_loss_matches_reference():
    rng = np.random.default_rng(0)
    zimg, ztxt = _normalised(rng, 12, 8), _normalised(rng, 12, 8)
    got = itl.clip_loss(jnp.asarray(zimg, jnp.float32), jnp.asarray(ztxt, jnp.float32), jnp.float32(14.3))
    np.testing.assert_allclose(float(got), clip_loss_ref(zimg, ztxt, 14.3), rtol=1e-5)


def test_siglip_loss_matches_reference_with_bias():
    rng = np.random.default_rng(1)
    zimg, ztxt = _normalised(rng, 12, 8), _normalised(rng, 12, 8)
    ztxt[:4] = zimg[:4]  # some confident positives so the +1 labels matter
    for t, b in [(10.0, -10.0), (3.0, 0.5)]:
        got = itl.siglip_loss(jnp.asarray(zimg, jnp.float32), jnp.asarray(ztxt, jnp.float32), jnp.float32(t),
                              jnp.float32(b))
        np.testing.assert_allclose(float(got), siglip_loss_ref(zimg, ztxt, t, b), rtol=1e-5)


def test_siglip_chunked_equals_full_matrix_on_8_devices():
    """Loss and gradients (w.r.t. both embeddings, t and b) of the ring form on 8 devices equal the
    single-device full [B, B] loss."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    assert jax.device_count() == 8
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rng = np.random.default_rng(2)
    zimg, ztxt = (jnp.asarray(_normalised(rng, 16, 8), jnp.float32) for _ in range(2))
    t, b = jnp.float32(10.0), jnp.float32(-3.0)
    full = jax.value_and_grad(itl.siglip_loss, argnums=(0, 1, 2, 3))(zimg, ztxt, t, b)
    shard = NamedSharding(mesh, P("data"))
    chunked_fn = jax.jit(jax.value_and_grad(lambda *a: itl.siglip_loss_chunked(*a, mesh), argnums=(0, 1, 2, 3)))
    chunked = chunked_fn(jax.device_put(zimg, shard), jax.device_put(ztxt, shard), t, b)
    np.testing.assert_allclose(float(chunked[0]), float(full[0]), rtol=1e-5)
    np.testing.assert_allclose(float(chunked[0]), siglip_loss_ref(np.asarray(zimg, np.float64),
                                                                  np.asarray(ztxt, np.float64), 10.0, -3.0), rtol=1e-5)
    for got, want in zip(chunked[1], full[1]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
