"""Pure loss functions shared by the methods. No parameters, no state.

Losses are written over the *global* batch: under `jit` with a batch sharded on
the mesh's `data` axis, the means below become cross-device reductions inserted
by XLA, so the same code is right on 1 or 512 devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError


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


def ema_center(center: jax.Array, teacher_logits: jax.Array, momentum: float,
               weights: jax.Array | None = None) -> jax.Array:
    """DINO's `update_center`: c <- m c + (1 - m) mean over batch and views of t.

    teacher_logits: [B, V_t, K] (the raw teacher head outputs, over the global batch), or
    [B, V_t, N, K] patch logits (iBOT's `center2`: the mean over every leading axis).
    `weights` [B, V_t(, N)] (e.g. a patch mask) makes it the weighted mean over those
    entries (DINOv2's patch center: masked patches only); all-zero weights leave c <- m c.
    """
    logits = teacher_logits.astype(jnp.float32)
    axes = tuple(range(logits.ndim - 1))
    if weights is None:
        batch_center = jnp.mean(logits, axis=axes)
    else:
        w = weights.astype(jnp.float32)[..., None]
        batch_center = jnp.sum(logits * w, axis=axes) / jnp.maximum(jnp.sum(w), 1.0)
    return center * momentum + batch_center * (1.0 - momentum)


def mean_entropy(probs: jax.Array) -> jax.Array:
    """Mean Shannon entropy (nats) of the distributions on the last axis of probs [..., K]."""
    return -jnp.mean(jnp.sum(probs * jnp.log(jnp.clip(probs, 1e-30)), axis=-1))


# ----------------------------------------------------------------------------
# Masked self-distillation (iBOT, DINOv2): the patch loss, Sinkhorn-Knopp
# centering and the KoLeo regulariser.
# ----------------------------------------------------------------------------


def masked_patch_cross_entropy(student_logits: jax.Array, teacher_probs: jax.Array, mask: jax.Array,
                               student_temp: float) -> jax.Array:
    """iBOT's patch loss: CE(teacher patch, student patch) on the masked patches of each crop.

    student_logits: [B, V, N, K] (the student saw crop v with `mask` applied);
    teacher_probs: [B, V, N, K] (the teacher saw the same crop unmasked); mask: [B, V, N] bool.
    Per crop: the sum over its masked patches / max(#masked, 1) (a crop without masked
    patches contributes 0); then the mean over the B * V crops. This is `iBOTLoss.forward`'s
    `loss2` averaged over the global views (bytedance/ibot) and DINOv2's
    `iBOTPatchLoss.forward_masked` (sum weighted by 1/#masked, / number of crops).
    Unmasked patches get exactly zero weight (and zero gradient).
    """
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    ce = -jnp.sum(teacher_probs * log_p, axis=-1)  # [B, V, N]
    m = mask.astype(jnp.float32)
    per_crop = jnp.sum(jnp.where(mask, ce, 0.0), axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    return jnp.mean(per_crop)


def sinkhorn_knopp(teacher_logits: jax.Array, temperature: jax.Array, num_iters: int = 3,
                   weights: jax.Array | None = None) -> jax.Array:
    """DINOv2's `sinkhorn_knopp_teacher` (SwAV's): balanced soft assignments, no gradient.

    teacher_logits: [M, K] over the *global* batch (M samples: [CLS] of every global crop, or
    masked patches); returns Q [M, K] whose rows sum to 1 and whose columns (prototypes)
    each receive M / K in total: Q = exp(t / tau), normalised to sum 1, then `num_iters`
    times: each prototype's row (of Q^T) to 1/K, each sample to 1/M; finally x M.
    `weights` [M] (0/1) leaves some rows out (padding, unmasked patches): they get Q = 0 and
    M is their count (the reference's all-reduced `n_masked_patches`).

    Each prototype's own maximum (over the rows kept) is subtracted before exp: the first
    per-prototype normalisation cancels it exactly, so the result is the reference's, but no
    column can underflow to all zeros in float32 (with one global maximum, a prototype whose
    best logit lay more than ~104 x tau below it gave 0 / 0 = NaN) nor overflow.
    """
    logits = teacher_logits.astype(jnp.float32) / temperature
    valid = jnp.ones(logits.shape[:1], bool) if weights is None else weights.astype(bool)
    logits = jnp.where(valid[:, None], logits, -jnp.inf)
    q = jnp.exp(logits - jnp.max(logits, axis=0, keepdims=True))  # [M, K]; 0 on left-out rows
    num_samples = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
    num_prototypes = logits.shape[1]
    q = q / jnp.sum(q)
    for _ in range(num_iters):
        q = q / jnp.sum(q, axis=0, keepdims=True) / num_prototypes  # each prototype: 1/K in total
        q = q / jnp.maximum(jnp.sum(q, axis=1, keepdims=True), 1e-30) / num_samples  # each sample: 1/M
    return jax.lax.stop_gradient(q * num_samples)


def koleo(features: jax.Array, eps: float = 1e-8) -> jax.Array:
    """DINOv2's KoLeo regulariser (Sablayrolles et al. 2018): -mean_i log(d(x_i, NN(x_i)) + eps).

    features: [..., n, D]; each [n, D] set is separate (the reference computes it per GPU
    batch). Features are L2-normalised, in float32; the nearest neighbour is the max inner
    product excluding the sample itself; d(x, y) = max(||x - y||, eps). Mean over every
    sample of every set.

    Guard: users of the reference hit an inf loss (then NaN gradients) when two samples of a
    set coincide (duplicate images in small batches, a collapsed backbone, or a [CLS] that
    drop-path cut off from the image) with fp16/bf16 features: the reference's
    d = ||x - y + eps|| (torch's `PairwiseDistance(eps=1e-8)`) loses eps to rounding there,
    so d = 0 and -log(0) = inf. Here the features are cast to float32 first and d is floored
    at eps as sqrt(max(||x - y||^2, eps^2)): a duplicate costs -log(2 eps) ~ 17.7 and gets a
    zero gradient from that pair (the reference's eps-shifted difference would push it along
    the arbitrary direction (1, ..., 1) with a ~1/eps gradient instead); for d >> eps the
    two definitions agree to O(eps). The normalisation also takes sqrt after the max, so
    all-zero features give a finite loss and gradient. A set of n < 2 samples has no
    neighbour: a UserError.
    """
    n = features.shape[-2]
    if n < 2:
        raise UserError(f"KoLeo needs at least 2 samples per set, got {n} (raise the batch size or "
                        f"method.koleo_group_size)")
    x = features.astype(jnp.float32)
    # x / max(||x||, eps), with sqrt taken after the max: finite gradient at x = 0 too.
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))
    dots = jnp.einsum("...id,...jd->...ij", x, x)
    dots = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, dots)  # never its own neighbour
    neighbour = jnp.take_along_axis(x, jnp.argmax(dots, axis=-1)[..., None], axis=-2)  # [..., n, D]
    sq_dist = jnp.sum(jnp.square(x - neighbour), axis=-1)
    dist = jnp.sqrt(jnp.maximum(sq_dist, eps * eps))
    return -jnp.mean(jnp.log(dist + eps))


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


# ----------------------------------------------------------------------------
# Masked image modelling (MAE, SimMIM, I-JEPA): regression on masked patches.
# ----------------------------------------------------------------------------


def normalized_patch_targets(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """MAE's `norm_pix_loss` target: each patch [..., P] minus its mean, over sqrt(var + eps),
    with torch's default unbiased variance (`target.var(dim=-1)`), in float32."""
    patches = patches.astype(jnp.float32)
    mean = jnp.mean(patches, axis=-1, keepdims=True)
    var = jnp.var(patches, axis=-1, keepdims=True, ddof=1)
    return (patches - mean) / jnp.sqrt(var + eps)


def masked_patch_mse(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """MAE's `forward_loss`: the per-patch mean squared error over [B, N, P], averaged over the
    masked patches only (mask [B, N], True = removed): sum(mse * mask) / sum(mask)."""
    per_patch = jnp.mean(jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32)), axis=-1)
    m = mask.astype(jnp.float32)
    return jnp.sum(per_patch * m) / jnp.sum(m)


def masked_pixel_l1(predictions: jax.Array, targets: jax.Array, mask: jax.Array, channels: int = 3) -> jax.Array:
    """SimMIM's loss: L1 on the pixels of masked patches, predictions/targets [B, N, p*p*C],
    mask [B, N]: sum(|x_rec - x| * mask) / (number of masked pixels + 1e-5) / C, where the
    reference's pixel mask counts spatial positions (p*p per masked patch, not channels)."""
    pixels_per_patch = predictions.shape[-1] // channels
    l1 = jnp.abs(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
    m = mask.astype(jnp.float32)
    return jnp.sum(l1 * m[..., None]) / (jnp.sum(m) * pixels_per_patch + 1e-5) / channels


def masked_smooth_l1(predictions: jax.Array, targets: jax.Array, valid: jax.Array, beta: float = 1.0) -> jax.Array:
    """I-JEPA's `F.smooth_l1_loss(z, h)` (beta 1, mean reduction) over the valid tokens only:
    predictions/targets [..., T, D], valid [..., T]. Huber per element
    (0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta), mean over D, then over valid tokens."""
    d = jnp.abs(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
    per_token = jnp.mean(jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta), axis=-1)
    v = valid.astype(jnp.float32)
    return jnp.sum(per_token * v) / jnp.maximum(jnp.sum(v), 1.0)


# ----------------------------------------------------------------------------
# Classification pretext tasks (rotation, label augmentation, position prediction,
# instance discrimination): cross-entropy with integer targets.
# ----------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy of logits [..., C] against integer labels [...] (torch's
    `F.cross_entropy(..., label_smoothing=s)`: target (1 - s) one-hot + s / C uniform), in float32.

    `weights` [...] (0/1, or any non-negative) makes it the weighted mean over the entries that
    count, e.g. only the labelled examples; entries with weight 0 get exactly zero gradient and
    may hold any label (-1 for "unknown"). All-zero weights give 0.
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe_labels = jnp.clip(labels, 0, logits.shape[-1] - 1)
    nll = -jnp.take_along_axis(log_p, safe_labels[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
    if weights is None:
        return jnp.mean(nll)
    w = weights.astype(jnp.float32)
    return jnp.sum(jnp.where(w > 0, nll, 0.0) * w) / jnp.maximum(jnp.sum(w), 1e-12)


def labelled_targets(soft_targets: jax.Array, labels: jax.Array) -> jax.Array:
    """Semi-supervised targets (Suave / Daino): soft_targets [B, V, K] (Sinkhorn codes or teacher
    probabilities over K = number of classes) with each labelled example's rows replaced by its
    one-hot label; labels [B] int, -1 where unknown. Unlabelled rows are returned unchanged and
    a label is read only where it is >= 0. No gradient."""
    labelled = labels >= 0
    one_hot = jax.nn.one_hot(jnp.maximum(labels, 0), soft_targets.shape[-1], dtype=soft_targets.dtype)
    return jax.lax.stop_gradient(jnp.where(labelled[:, None, None], one_hot[:, None, :], soft_targets))
