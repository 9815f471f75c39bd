"""Tests for ssl_jax.losses: DINO's cross-view loss, teacher centring/sharpening,
the centre EMA, the entropy metric and Sinkhorn-Knopp (against dinov2's
`sinkhorn_knopp_teacher`, float64).

References are float64 numpy re-implementations of facebookresearch/dino's
`DINOLoss.forward` / `DINOLoss.update_center` (main_dino.py), written here from the
reference definitions, or closed-form values. Logits are laid out [B, V, K] in
ssl_jax; the reference works on view-major chunks of a [V*B, K] tensor, which the
numpy reference rebuilds explicitly.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import losses


# ----------------------------------------------------------------------------- numpy references

def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(x))


def np_dino_loss(student: np.ndarray, teacher: np.ndarray, center: np.ndarray,
                 student_temp: float, teacher_temp: float) -> float:
    """DINOLoss.forward in float64, on [B, V, K] inputs.

    The reference receives view-major [V*B, K] tensors and `.chunk`s them by view;
    here the chunks are built explicitly from the [B, V, K] layout.
    """
    student = np.asarray(student, np.float64)
    teacher = np.asarray(teacher, np.float64)
    batch, num_student, _ = student.shape
    num_teacher = teacher.shape[1]
    # [V*B, K], view-major, as torch.cat(crops) -> backbone -> head produces.
    student_flat = student.transpose(1, 0, 2).reshape(num_student * batch, -1)
    teacher_flat = teacher.transpose(1, 0, 2).reshape(num_teacher * batch, -1)
    student_out = np.split(student_flat / student_temp, num_student)
    teacher_out = np.split(np_softmax((teacher_flat - center) / teacher_temp), num_teacher)
    total_loss, n_loss_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = np.sum(-q * np_log_softmax(student_out[v]), axis=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def dino_loss_fn(student, teacher, center, student_temp, teacher_temp):
    """The loss under test: teacher probs, then the cross-entropy over view pairs."""
    probs = losses.dino_teacher_probs(jnp.asarray(teacher, jnp.float32), jnp.asarray(center, jnp.float32),
                                      teacher_temp)
    return losses.dino_cross_entropy(jnp.asarray(student, jnp.float32), probs, student_temp)


# Compiled once per shape (the temperatures are traced arguments).
jax_dino_loss = jax.jit(dino_loss_fn)


def _random_case(rng: np.random.RandomState, batch: int, num_student: int, num_teacher: int, dim: int):
    student = rng.randn(batch, num_student, dim).astype(np.float32)
    teacher = (2.0 * rng.randn(batch, num_teacher, dim)).astype(np.float32)
    center = (0.5 * rng.randn(dim)).astype(np.float32)
    return student, teacher, center


# ----------------------------------------------------------------------------- loss value

# Every value of B in {1, 3, 8}, V_s in {2, 4, 10}, K in {7, 64} appears, plus the shapes the
# other tests use (B=4, K=16) so their compiled loss is reused (2 shared CPU cores).
SHAPES = [(1, 2, 7), (3, 4, 64), (8, 10, 7), (3, 10, 64), (8, 2, 64), (1, 4, 7),
          (4, 2, 16), (4, 4, 16), (4, 6, 16)]


@pytest.mark.parametrize("batch,num_student,dim", SHAPES)
def test_dino_loss_matches_float64_reference_dinoloss_forward(batch, num_student, dim):
    rng = np.random.RandomState(1000 * batch + 10 * num_student + dim)
    student, teacher, center = _random_case(rng, batch, num_student, 2, dim)
    student_temp = float(rng.uniform(0.05, 0.3))
    teacher_temp = float(rng.uniform(0.03, 0.1))
    got = float(jax_dino_loss(student, teacher, center, student_temp, teacher_temp))
    want = np_dino_loss(student, teacher, center, student_temp, teacher_temp)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dino_loss_handles_more_teacher_views_than_student_views():
    """The reference skips v == iq for every pair index; with V_t > V_s the count is V_t*V_s - V_s."""
    rng = np.random.RandomState(3)
    student, teacher, center = _random_case(rng, 4, 2, 3, 16)
    got = float(jax_dino_loss(student, teacher, center, 0.1, 0.05))
    np.testing.assert_allclose(got, np_dino_loss(student, teacher, center, 0.1, 0.05), rtol=1e-5)


def test_dino_teacher_probs_are_centred_sharpened_softmax():
    rng = np.random.RandomState(4)
    _, teacher, center = _random_case(rng, 3, 2, 2, 13)
    probs = np.asarray(losses.dino_teacher_probs(jnp.asarray(teacher), jnp.asarray(center), 0.04))
    want = np_softmax((teacher.astype(np.float64) - center) / 0.04)
    assert probs.shape == teacher.shape
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_dino_loss_of_student_matching_the_other_view_equals_teacher_entropy():
    """Closed form: if softmax(s_j / T_s) == q_(1-j) for j in {0, 1}, every counted term is H(q)."""
    rng = np.random.RandomState(5)
    _, teacher, center = _random_case(rng, 4, 2, 2, 16)
    student_temp, teacher_temp = 0.1, 0.07
    q = np_softmax((teacher.astype(np.float64) - center) / teacher_temp)  # [B, 2, K]
    student = student_temp * np.log(q[:, ::-1])  # view 0 predicts teacher view 1 and vice versa
    entropy = -np.sum(q * np.log(q), axis=-1).mean()
    got = float(jax_dino_loss(student.astype(np.float32), teacher, center, student_temp, teacher_temp))
    np.testing.assert_allclose(got, entropy, rtol=1e-5)
    # Matching the *same* view instead is not optimal (those pairs are skipped): larger loss.
    same_view = (student_temp * np.log(q)).astype(np.float32)
    assert float(jax_dino_loss(same_view, teacher, center, student_temp, teacher_temp)) > entropy + 1e-3


@pytest.mark.parametrize("num_student", [2, 4])
def test_dino_loss_skips_same_view_pairs(num_student):
    """Every student view except view 0 predicts uniform (zero logits), so teacher view 0 only
    meets uniform students: CE(q0, uniform) = log K whatever q0 is. Student view 0 is sharp and
    only paired with teacher view 1. Redrawing teacher view 0 must leave the loss unchanged; if
    the (t0, s0) pair were counted it would move with q0."""
    rng = np.random.RandomState(6)
    batch, dim, student_temp, teacher_temp = 4, 16, 0.1, 0.04
    student = np.zeros((batch, num_student, dim), np.float32)
    student[:, 0] = 3.0 * rng.randn(batch, dim)
    teacher = rng.randn(batch, 2, dim).astype(np.float32)
    center = np.zeros(dim, np.float32)

    q1 = np_softmax(teacher[:, 1].astype(np.float64) / teacher_temp)
    ce_t1_s0 = np.mean(np.sum(-q1 * np_log_softmax(student[:, 0].astype(np.float64) / student_temp), -1))
    num_terms = 2 * num_student - 2
    # (t0, s_v) for v >= 1: num_student - 1 terms of log K; (t1, s_v) for v >= 2: log K; (t1, s0).
    closed_form = ((num_student - 1) * np.log(dim) + (num_student - 2) * np.log(dim) + ce_t1_s0) / num_terms

    values = []
    for _ in range(4):
        teacher[:, 0] = 5.0 * rng.randn(batch, dim)
        values.append(float(jax_dino_loss(student, teacher, center, student_temp, teacher_temp)))
    np.testing.assert_allclose(values, closed_form, rtol=1e-5)


# ----------------------------------------------------------------------------- gradients

def test_dino_loss_gradient_wrt_teacher_logits_and_center_is_exactly_zero():
    rng = np.random.RandomState(7)
    student, teacher, center = _random_case(rng, 4, 4, 2, 16)
    grad_t, grad_c = jax.jit(jax.grad(lambda t, c: dino_loss_fn(student, t, c, 0.1, 0.04), argnums=(0, 1)))(
        jnp.asarray(teacher), jnp.asarray(center))
    assert np.all(np.asarray(grad_t) == 0.0)
    assert np.all(np.asarray(grad_c) == 0.0)


def test_dino_loss_gradient_wrt_student_logits_matches_closed_form():
    """d/ds_j of the mean over pairs = sum_{i != j} (softmax(s_j/T_s) - q_i) / (T_s * B * n_terms)."""
    rng = np.random.RandomState(8)
    batch, num_student, dim, student_temp, teacher_temp = 4, 4, 16, 0.1, 0.04
    student, teacher, center = _random_case(rng, batch, num_student, 2, dim)
    grad_s = np.asarray(jax.jit(jax.grad(lambda s: dino_loss_fn(s, teacher, center, student_temp, teacher_temp)))(
        jnp.asarray(student)))
    assert np.abs(grad_s).max() > 0.0

    q = np_softmax((teacher.astype(np.float64) - center) / teacher_temp)
    p = np_softmax(student.astype(np.float64) / student_temp)
    num_terms = 2 * num_student - 2
    want = np.zeros_like(p)
    for j in range(num_student):
        for i in range(2):
            if i != j:
                want[:, j] += p[:, j] - q[:, i]
    want /= student_temp * batch * num_terms
    np.testing.assert_allclose(grad_s, want, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- invariances

def test_dino_loss_is_invariant_to_a_shared_batch_permutation():
    rng = np.random.RandomState(9)
    student, teacher, center = _random_case(rng, 4, 6, 2, 16)
    perm = np.array([2, 0, 3, 1])
    base = float(jax_dino_loss(student, teacher, center, 0.1, 0.05))
    permuted = float(jax_dino_loss(student[perm], teacher[perm], center, 0.1, 0.05))
    np.testing.assert_allclose(permuted, base, rtol=1e-6)
    # Permuting only the student batch breaks the pairing: the loss changes.
    mismatched = float(jax_dino_loss(student[perm], teacher, center, 0.1, 0.05))
    assert abs(mismatched - base) > 1e-3


def test_dino_loss_is_invariant_to_permuting_local_student_views():
    rng = np.random.RandomState(10)
    student, teacher, center = _random_case(rng, 4, 6, 2, 16)
    base = float(jax_dino_loss(student, teacher, center, 0.1, 0.05))
    order = np.array([0, 1, 4, 2, 5, 3])
    permuted = float(jax_dino_loss(student[:, order], teacher, center, 0.1, 0.05))
    np.testing.assert_allclose(permuted, base, rtol=1e-6)
    # Swapping both global views of the student and of the teacher is a relabelling too.
    swap = np.array([1, 0, 2, 3, 4, 5])
    both = float(jax_dino_loss(student[:, swap], teacher[:, ::-1], center, 0.1, 0.05))
    np.testing.assert_allclose(both, base, rtol=1e-6)
    # But swapping a global with a local student view is not (the skipped pairs move).
    global_local = np.array([2, 1, 0, 3, 4, 5])
    assert abs(float(jax_dino_loss(student[:, global_local], teacher, center, 0.1, 0.05)) - base) > 1e-4


# ----------------------------------------------------------------------------- centre and entropy

@pytest.mark.parametrize("momentum", [0.0, 0.9, 0.996])
def test_ema_center_is_momentum_average_with_batch_and_view_mean(momentum):
    rng = np.random.RandomState(11)
    center = rng.randn(12).astype(np.float32)
    teacher = (3.0 * rng.randn(5, 2, 12) + 1.0).astype(np.float32)
    got = np.asarray(losses.ema_center(jnp.asarray(center), jnp.asarray(teacher), momentum))
    batch_center = teacher.astype(np.float64).reshape(-1, 12).sum(0) / (5 * 2)
    want = momentum * center.astype(np.float64) + (1.0 - momentum) * batch_center
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [2, 7, 64])
def test_mean_entropy_of_uniform_is_log_k(dim):
    probs = jnp.full((3, 2, dim), 1.0 / dim, jnp.float32)
    np.testing.assert_allclose(float(losses.mean_entropy(probs)), np.log(dim), rtol=1e-6)


def test_mean_entropy_of_one_hot_is_zero():
    probs = jax.nn.one_hot(jnp.array([[0, 3], [5, 1]]), 8)
    assert float(losses.mean_entropy(probs)) == 0.0


def test_mean_entropy_averages_per_distribution_entropies():
    rng = np.random.RandomState(12)
    probs = np_softmax(2.0 * rng.randn(4, 3, 9))
    want = np.mean(-np.sum(probs * np.log(probs), axis=-1))
    np.testing.assert_allclose(float(losses.mean_entropy(jnp.asarray(probs, jnp.float32))), want, rtol=1e-5)


# ----------------------------------------------------------------------------- Sinkhorn-Knopp

def np_sinkhorn_knopp_teacher(teacher_output: np.ndarray, teacher_temp: float, n_iterations: int) -> np.ndarray:
    """dinov2/loss/dino_clstoken_loss.py `sinkhorn_knopp_teacher` (= swav main_swav.py
    `distributed_sinkhorn`) on one process, in float64 and without any max subtraction
    (exp(+-300) is representable in float64)."""
    q = np.exp(np.asarray(teacher_output, np.float64) / teacher_temp).T  # [K, B]
    num_prototypes, batch = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= num_prototypes
        q /= q.sum(axis=0, keepdims=True)
        q /= batch
    return (q * batch).T


def test_sinkhorn_knopp_is_finite_and_exact_when_prototypes_lie_300_tau_apart():
    """Prototypes whose logits sit up to 300 tau below (or above) the others: a dead prototype's
    column must not underflow to 0 / 0. Each prototype gets a constant offset in [-300, 300] tau
    plus moderate per-sample noise; the float64 reference needs no max subtraction at that range."""
    rng = np.random.RandomState(11)
    temperature = 0.05
    offsets = np.linspace(-300.0, 300.0, 6) * temperature  # [K]
    logits = (offsets[None, :] + rng.randn(16, 6) * 2 * temperature).astype(np.float32)  # [M, K]
    for iters in (3, 50):
        q = np.asarray(losses.sinkhorn_knopp(jnp.asarray(logits), temperature, iters))
        assert np.all(np.isfinite(q))
        np.testing.assert_allclose(q, np_sinkhorn_knopp_teacher(logits, temperature, iters), rtol=1e-4, atol=1e-6)
