"""Pure losses of the image-text methods (CLIP, SLIP, LiT: softmax; SigLIP: sigmoid). No parameters.

Embeddings are L2-normalised [B, D] over the global batch, image i paired with text i. The
softmax loss and the plain sigmoid loss are written over the global batch (XLA inserts the
collectives, as `ssl_jax.losses`); `siglip_loss_chunked` is SigLIP's memory-saving form that
never builds the global [B, B] logits on one device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P


def clip_loss(zimg: jax.Array, ztxt: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """CLIP's symmetric InfoNCE (paper Figure 3; open_clip `ClipLoss`): logits = scale * zimg ztxt^T [B, B],
    (CE(logits, i) + CE(logits^T, i)) / 2 with the pairs on the diagonal. zimg, ztxt: [B, D] normalised."""
    logits = logit_scale * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T
    diagonal = jnp.diagonal(logits)
    image_to_text = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diagonal)
    text_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diagonal)
    return (image_to_text + text_to_image) / 2


def _sigmoid_block(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array, positive: jax.Array) -> jax.Array:
    """-sum over the block of log sigmoid(label * (t zimg ztxt^T + b)); label +1 on the diagonal when
    `positive` (the block pairs each image with its own text), else -1 everywhere. [b, D] x [b', D] -> scalar."""
    logits = t * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T + b
    eye = jnp.eye(logits.shape[0], logits.shape[1], dtype=jnp.float32) * positive
    return -jnp.sum(jax.nn.log_sigmoid((2 * eye - 1) * logits))


def siglip_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array) -> jax.Array:
    """SigLIP's pairwise sigmoid loss (big_vision `trainers/proj/image_text/siglip.py`, `loss_fn`):
    -1/B sum_i sum_j log sigmoid(z_ij (t zimg_i . ztxt_j + b)), z_ij = +1 if i == j else -1.
    zimg, ztxt: [B, D] normalised; t = exp(t') the temperature, b the bias."""
    return _sigmoid_block(zimg, ztxt, t, b, jnp.float32(1.0)) / zimg.shape[0]


def siglip_loss_chunked(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array, mesh: Mesh) -> jax.Array:
    """`siglip_loss` as the paper's chunked implementation (SigLIP, Section 3.3 and Figure 1): each device
    holds its B/n images and texts; it adds its images' loss against its own texts (the positives on
    the diagonal), then n - 1 times receives the previous device's text block round the ring
    (`jax.lax.ppermute` under `shard_map`) and adds the loss against it (all negatives). A device only
    ever holds [B/n, B/n] logits.
    zimg, ztxt: [B, D] sharded over every axis of `mesh` (the step's batch sharding)."""
    axes = tuple(mesh.axis_names)
    n = mesh.size
    ring = [(i, (i + 1) % n) for i in range(n)]

    def per_device(zimg, ztxt, t, b):
        def negatives(_, carry):
            total, texts = carry
            texts = jax.lax.ppermute(texts, axes, ring)
            return total + _sigmoid_block(zimg, texts, t, b, jnp.float32(0.0)), texts

        own = _sigmoid_block(zimg, ztxt, t, b, jnp.float32(1.0))
        total, _ = jax.lax.fori_loop(1, n, negatives, (own, ztxt))
        return jax.lax.psum(total, axes)

    batch = P(axes)
    chunked = jax.shard_map(per_device, mesh=mesh, in_specs=(batch, batch, P(), P()), out_specs=P())
    return chunked(zimg, ztxt, t, b) / zimg.shape[0]

