"""Pure loss functions shared by the methods. No parameters, no state.

Losses are written over the *global* batch: under `jit` with a batch sharded on
the mesh's `data` axis, the means below become cross-device reductions inserted
by XLA, so the same code is right on 1 or 512 devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / jnp.maximum(norm, eps)


def dino_teacher_probs(teacher_logits: jax.Array, center: jax.Array, temperature: jax.Array) -> jax.Array:
    """Centred, sharpened teacher distribution softmax((t - c) / tau), with stop-gradient.

    teacher_logits: [B, V_t, K]; center: [K]. Returns [B, V_t, K] float32.
    """
    logits = (teacher_logits.astype(jnp.float32) - center) / temperature
    return jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))


def dino_cross_entropy(student_logits: jax.Array, teacher_probs: jax.Array, student_temp: float) -> jax.Array:
    """DINO's loss: mean over (teacher view, student view) pairs of CE(teacher, student).

    student_logits: [B, V_s, K]; teacher_probs: [B, V_t, K]. Student view i and
    teacher view i are the same crop (the global crops come first in both), so
    the pairs with i == j are skipped, as in `DINOLoss.forward`. Each pair's term
    is a batch mean; the result is the mean over the V_t * V_s - min(V_t, V_s) pairs.
    """
    num_student, num_teacher = student_logits.shape[1], teacher_probs.shape[1]
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    # ce[b, t, s] = -sum_k q[b, t, k] log p[b, s, k]
    ce = -jnp.einsum("btk,bsk->bts", teacher_probs, log_p)
    same_view = jnp.eye(num_teacher, num_student, dtype=bool)
    per_pair = jnp.mean(ce, axis=0)  # [V_t, V_s]
    num_terms = num_teacher * num_student - min(num_teacher, num_student)
    return jnp.sum(jnp.where(same_view, 0.0, per_pair)) / num_terms


def ema_center(center: jax.Array, teacher_logits: jax.Array, momentum: float) -> jax.Array:
    """DINO's `update_center`: c <- m c + (1 - m) mean over batch and views of t.

    teacher_logits: [B, V_t, K] (the raw teacher head outputs, over the global batch).
    """
    batch_center = jnp.mean(teacher_logits.astype(jnp.float32), axis=(0, 1))
    return center * momentum + batch_center * (1.0 - momentum)


def mean_entropy(probs: jax.Array) -> jax.Array:
    """Mean Shannon entropy (nats) of the distributions on the last axis of probs [..., K]."""
    return -jnp.mean(jnp.sum(probs * jnp.log(jnp.clip(probs, 1e-30)), axis=-1))


# ----------------------------------------------------------------------------
# Two-view losses. Each is one direction, loss(queries of view a, keys of view b);
# the methods symmetrise. Queries/keys are [B, D] over the global batch.
# ----------------------------------------------------------------------------


def nt_xent(anchors: jax.Array, positives: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's NT-Xent, one direction (`loss_a` of SimCLR's `add_contrastive_loss`).

    For anchor i (view a) the positive is positives[i] (view b); the negatives are the
    other 2B - 2 embeddings of both views in the global batch. Cosine similarities /
    temperature, cross-entropy, mean over the B anchors.
    anchors, positives: [B, D]. SimCLR's loss is nt_xent(a, b) + nt_xent(b, a).
    """
    a = l2_normalize(anchors.astype(jnp.float32))
    b = l2_normalize(positives.astype(jnp.float32))
    logits_ab = a @ b.T / temperature  # [B, B], positives on the diagonal
    self_mask = jnp.eye(a.shape[0], dtype=bool)
    logits_aa = jnp.where(self_mask, -jnp.inf, a @ a.T / temperature)  # an anchor is not its own negative
    logits = jnp.concatenate([logits_ab, logits_aa], axis=1)  # [B, 2B]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits_ab))


def info_nce(queries: jax.Array, keys: jax.Array, temperature: float) -> jax.Array:
    """MoCo v3's `contrastive_loss`: CE(q k^T / tau, diagonal labels) * 2 tau.

    queries, keys: [B, D] (keys from the momentum encoder, all B of the global batch
    as negatives: MoCo v3's `concat_all_gather`). The 2 tau factor is the reference's.
    """
    q = l2_normalize(queries.astype(jnp.float32))
    k = l2_normalize(keys.astype(jnp.float32))
    logits = q @ k.T / temperature  # [B, B]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)) * (2.0 * temperature)


def normalized_mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """BYOL's regression loss ||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z), mean over the batch [B, D]."""
    return jnp.mean(2.0 - 2.0 * cosine_similarity(predictions, targets))


def negative_cosine(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """SimSiam's D(p, z) = -cos(p, z), mean over the batch [B, D] (the stop-gradient is the caller's)."""
    return -jnp.mean(cosine_similarity(predictions, targets))


def cosine_similarity(x: jax.Array, y: jax.Array) -> jax.Array:
    """Row-wise cosine similarity of [B, D] arrays -> [B], in float32."""
    return jnp.sum(l2_normalize(x.astype(jnp.float32)) * l2_normalize(y.astype(jnp.float32)), axis=-1)


def normalized_std(embeddings: jax.Array) -> jax.Array:
    """sqrt(D) x the mean per-dimension std of L2-normalised embeddings [B, D].

    SimSiam's collapse monitor (its Fig. 2): ~1 for embeddings spread over the
    sphere, 0 when every input maps to the same point.
    """
    z = l2_normalize(embeddings.astype(jnp.float32))
    return jnp.mean(jnp.std(z, axis=0)) * jnp.sqrt(float(z.shape[-1]))
