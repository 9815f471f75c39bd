"""Pure loss functions shared by the methods. No parameters, no state.

Losses are written over the *global* batch: under `jit` with a batch sharded on
the mesh's `data` axis, the means below become cross-device reductions inserted
by XLA, so the same code is right on 1 or 512 devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


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
