"""SwAV: the loss against a float64 numpy port of `main_swav.py`, Sinkhorn-Knopp marginals over
[queue; batch], symmetry of the swapped prediction, the queue, prototype normalisation and
freezing, 8 devices = 1. Suave / Daino: labels used only where they exist, Sinkhorn over the
unlabelled images only. The `:smoke` presets end to end.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import run_smoke_preset, smoke_params
from ssl_jax import losses, sharding, train
from ssl_jax.core.batch import example_batch
from ssl_jax.methods.swav import assignment_codes, push_queue, swapped_prediction
from ssl_jax.sharding import batch_sharding, replicated

# ----------------------------------------------------------------------------- numpy reference (float64)


def np_sinkhorn(out, epsilon, iters):
    """main_swav.py `distributed_sinkhorn` on one process."""
    q = np.exp(out / epsilon).T  # [K, B]
    num_prototypes, batch = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= num_prototypes
        q /= q.sum(axis=0, keepdims=True)
        q /= batch
    return (q * batch).T


def np_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def np_swav_loss(output, queue, prototypes, crops_for_assign, num_crops, temperature, epsilon, iters):
    """main_swav.py `train`'s loss: output [num_crops * bs, K] crop-major, queue [A, L, D] or None."""
    bs = output.shape[0] // num_crops
    loss = 0.0
    for i, crop_id in enumerate(crops_for_assign):
        out = output[bs * crop_id:bs * (crop_id + 1)]
        if queue is not None:
            out = np.concatenate([queue[i] @ prototypes, out])
        q = np_sinkhorn(out, epsilon, iters)[-bs:]
        subloss = 0.0
        for v in np.delete(np.arange(num_crops), crop_id):
            x = output[bs * v:bs * (v + 1)] / temperature
            subloss -= np.mean(np.sum(q * np_log_softmax(x), axis=1))
        loss += subloss / (num_crops - 1)
    return loss / len(crops_for_assign)


def _unit(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _swav_inputs(seed, batch=8, views=4, dim=6, prototypes=10, queue=16):
    rng = np.random.RandomState(seed)
    z = _unit(rng.randn(batch, views, dim), -1)
    c = _unit(rng.randn(dim, prototypes), 0)
    q = _unit(rng.randn(2, queue, dim), -1)
    return z, c, q


def _swav_loss(z, c, queue, use_queue, crops_for_assign, temperature=0.1, epsilon=0.05, iters=3):
    scores = jnp.asarray(z, jnp.float32) @ jnp.asarray(c, jnp.float32)
    queue_scores = None if queue is None else jnp.asarray(queue[:len(crops_for_assign)], jnp.float32) @ c
    codes = assignment_codes(scores[:, jnp.asarray(crops_for_assign)], queue_scores, jnp.asarray(use_queue),
                             epsilon, iters)
    return float(swapped_prediction(scores, codes, crops_for_assign, temperature))


@pytest.mark.parametrize("crops_for_assign", [(0, 1), (2,), (1, 3)])
def test_swav_loss_matches_main_swav(crops_for_assign):
    """With and without a full queue; the assigned crops need not be the first ones."""
    z, c, queue = _swav_inputs(0)
    output = np.concatenate([z[:, v] @ c for v in range(z.shape[1])])  # crop-major, as the reference
    for use_queue in (False, True):
        want = np_swav_loss(output, queue if use_queue else None, c, crops_for_assign, z.shape[1], 0.1, 0.05, 3)
        got = _swav_loss(z, c, queue, use_queue, crops_for_assign)
        np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=f"queue in use: {use_queue}")
    # A queue that is not in use (not yet full) changes nothing.
    np.testing.assert_allclose(_swav_loss(z, c, queue, False, crops_for_assign),
                               _swav_loss(z, c, None, False, crops_for_assign), rtol=1e-6)


def test_sinkhorn_marginals_over_queue_and_batch():
    """Codes of the [queue; batch] rows: each row sums to 1 (the last normalisation) and, as the
    iterations go on, each prototype receives (rows in use) / K; rows left out get nothing."""
    rng = np.random.RandomState(1)
    logits = rng.randn(24, 6).astype(np.float32)
    for weights in (None, np.r_[np.zeros(8), np.ones(16)]):
        in_use = np.ones(24, bool) if weights is None else weights.astype(bool)
        q3 = np.asarray(losses.sinkhorn_knopp(logits, 0.5, 3, weights))
        np.testing.assert_allclose(q3[in_use].sum(1), 1.0, rtol=1e-5)
        assert not q3[~in_use].any()
        q = np.asarray(losses.sinkhorn_knopp(logits, 0.5, 200, weights))
        np.testing.assert_allclose(q.sum(0), in_use.sum() / 6, rtol=1e-3)
        np.testing.assert_allclose(q[in_use], np_sinkhorn(np.float64(logits[in_use]), 0.5, 200), rtol=1e-4)


def test_swapped_prediction_is_symmetric():
    """Swapping the two assigned crops, permuting the batch or permuting the other crops leaves the
    loss unchanged; permuting one crop's batch alone does not (it changes which codes go with which)."""
    z, c, _ = _swav_inputs(2)
    base = _swav_loss(z, c, None, False, (0, 1))
    np.testing.assert_allclose(_swav_loss(z[:, [1, 0, 2, 3]], c, None, False, (0, 1)), base, rtol=1e-5)
    np.testing.assert_allclose(_swav_loss(z[:, [0, 1, 3, 2]], c, None, False, (0, 1)), base, rtol=1e-5)
    perm = np.random.RandomState(3).permutation(z.shape[0])
    np.testing.assert_allclose(_swav_loss(z[perm], c, None, False, (0, 1)), base, rtol=1e-5)
    shuffled = z.copy()
    shuffled[:, 1] = z[perm, 1]
    assert abs(_swav_loss(shuffled, c, None, False, (0, 1)) - base) > 1e-3


def test_queue_pushes_newest_first_only_while_active():
    queue = jnp.arange(2 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 1)
    new = -(10.0 * jnp.arange(2)[None, :, None] + jnp.arange(2)[:, None, None] + 1)  # [B, A, D]: -(10 a + b + 1)
    same, filled = push_queue(queue, jnp.asarray(0), new, jnp.asarray(False))
    assert np.array_equal(same, queue) and int(filled) == 0
    pushed, filled = push_queue(queue, jnp.asarray(4), new, jnp.asarray(True))
    assert int(filled) == 6  # capped at the queue length
    np.testing.assert_array_equal(pushed[0, :, 0], [-1, -2, 0, 1, 2, 3])
    np.testing.assert_array_equal(pushed[1, :, 0], [-11, -12, 6, 7, 8, 9])


# ----------------------------------------------------------------------------- Suave / Daino


def test_labelled_targets_read_labels_only_where_they_exist():
    """Labelled rows (label >= 0) become one-hot, unlabelled ones keep the method's targets, and what
    an unknown label holds (-1, -7) is never read."""
    soft = jax.nn.softmax(jnp.asarray(np.random.RandomState(7).randn(5, 2, 4), jnp.float32))
    labels = np.array([2, -1, 0, -1, 3])
    got = np.asarray(losses.labelled_targets(soft, jnp.asarray(labels)))
    for b, label in enumerate(labels):
        want = np.asarray(soft[b]) if label < 0 else np.tile(np.eye(4)[label], (2, 1))
        np.testing.assert_array_equal(got[b], want)
    other_unknown = jnp.asarray(np.where(labels < 0, -7, labels))
    np.testing.assert_array_equal(np.asarray(losses.labelled_targets(soft, other_unknown)), got)


def test_suave_codes_balance_the_unlabelled_images_only():
    """Suave's Sinkhorn runs over the unlabelled rows alone (numpy port on those rows), so the labelled
    images' scores cannot move the unlabelled codes; the labelled rows are their one-hot labels."""
    z, c, _ = _swav_inputs(8, batch=10, prototypes=4)
    scores = jnp.asarray(z[:, :2] @ c, jnp.float32)  # [B, A, K]
    labels = np.array([1, -1, -1, 3, -1, 0, -1, -1, 2, -1])
    unlabelled = labels < 0
    codes = assignment_codes(scores, None, jnp.asarray(False), 0.05, 3, batch_weights=jnp.asarray(unlabelled))
    targets = np.asarray(losses.labelled_targets(codes, jnp.asarray(labels)))
    for a in range(2):
        np.testing.assert_allclose(targets[unlabelled, a], np_sinkhorn(np.float64(scores[unlabelled, a]), 0.05, 3),
                                   rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(targets[~unlabelled, 0], np.eye(4)[labels[~unlabelled]])
    moved = scores.at[~unlabelled].multiply(-1.0)
    moved_codes = assignment_codes(moved, None, jnp.asarray(False), 0.05, 3, batch_weights=jnp.asarray(unlabelled))
    np.testing.assert_allclose(np.asarray(moved_codes)[unlabelled], np.asarray(codes)[unlabelled], rtol=1e-6)


def test_daino_classifier_is_the_teachers_head():
    """`--eval=classifier` scores Daino's class prototypes with the teacher (the network DINO
    evaluates): [B, num_classes] logits that follow the teacher's weights and ignore the student's."""
    from collections import namedtuple

    state = namedtuple("State", "params teacher model_state")  # the fields class_logits reads
    config = importlib.import_module("configs.daino_small").get_config("smoke")
    method = train.setup(config, steps_per_epoch=3).method
    variables = jax.jit(method.init)(jax.random.key(0), example_batch(config.augment, 1))
    images = example_batch(config.augment, 4, jax.random.key(1))["views"]["global"][:, 0]
    logits = jax.jit(method.class_logits)

    def scores(params, teacher):
        return np.asarray(logits(state(params, teacher, None), images))

    shift = lambda tree: jax.tree.map(lambda x: x + 0.05, tree)  # noqa: E731
    base = scores(variables.params, variables.teacher)
    assert base.shape == (4, config.dataset.num_classes) and np.isfinite(base).all()
    np.testing.assert_array_equal(scores(shift(variables.params), variables.teacher), base)
    assert np.abs(scores(variables.params, shift(variables.teacher)) - base).max() > 1e-4


def test_suave_classifier_scores_the_images_against_the_class_prototypes():
    """Suave's class_logits are cosines between the online network's eval-mode projections and the
    prototype columns: with each image's own projection (rescaled) as a prototype, image i's best
    class is i and its score is 1."""
    from collections import namedtuple

    state = namedtuple("State", "params model_state")
    config = importlib.import_module("configs.suave_resnet50").get_config("smoke")
    method = train.setup(config, steps_per_epoch=3).method
    variables = jax.jit(method.init)(jax.random.key(0), example_batch(config.augment, 1))
    images = example_batch(config.augment, config.dataset.num_classes, jax.random.key(1))["views"]["global"][:, 0]
    z, _ = method.network.apply(variables.params, variables.model_state or {}, images, train=False)
    prototypes = (np.asarray(z, np.float64) * np.arange(1, 11)[:, None]).T  # column i: image i's projection, scaled
    params = dict(variables.params, prototypes={"kernel": jnp.asarray(prototypes / np.linalg.norm(prototypes, axis=0),
                                                                      jnp.float32)})
    logits = np.asarray(jax.jit(method.class_logits)(
        state(params, variables.model_state), images))
    assert logits.shape == (10, 10)
    np.testing.assert_array_equal(np.argmax(logits, axis=1), np.arange(10))
    np.testing.assert_allclose(np.diag(logits), 1.0, rtol=1e-4)


# ----------------------------------------------------------------------------- the method on the mesh


def load_config(preset: str = "smoke"):
    return importlib.import_module("configs.swav_resnet50").get_config(preset)


@pytest.fixture(scope="module")
def swav_on_meshes():
    """Loss, aux and gradients on 8 devices and on 1, from one state and one batch (step 0, queue active)."""
    config = load_config()
    run8 = train.setup(config, steps_per_epoch=3)
    # method.init alone compiles in seconds, where train.create_state's compile takes ~10x longer.
    state = jax.jit(run8.method.init)(jax.random.key(0), example_batch(config.augment, 1))
    batch = example_batch(config.augment, config.batch_size, jax.random.key(3))
    offsets = np.repeat(np.arange(8, dtype=np.float32), 2)[:, None, None, None, None]  # per-device shards differ
    batch["views"]["global"] = batch["views"]["global"] + offsets
    results = {}
    for devices in (8, 1):
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        rep = replicated(mesh)
        fn = jax.jit(jax.value_and_grad(run8.method.loss, has_aux=True),
                     in_shardings=(rep, rep, rep, rep, batch_sharding(mesh), rep, rep), out_shardings=rep)
        results[devices] = jax.device_get(fn(
            *jax.device_put((state.params, state.teacher, state.method_state, state.model_state), rep),
            sharding.to_global_batch(batch, mesh), jax.random.key(7), jnp.asarray(0, jnp.int32)))
    return config, run8, state, results


def test_sharded_loss_gradients_and_state_equal_single_device(swav_on_meshes):
    config, _, _, results = swav_on_meshes
    ((loss8, aux8), grads8), ((loss1, aux1), grads1) = results[8], results[1]
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path((grads8, aux8))[0], jax.tree.leaves((grads1, aux1))):
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4 * float(np.max(np.abs(b), initial=0)) + 5e-6,
                                   err_msg=jax.tree_util.keystr(path))
    # Step 0 >= epoch_queue_starts 0: the assigned crops' projections went into the queue, newest first.
    queue, batch = aux8.method_state["queue"], config.batch_size
    assert int(aux8.method_state["queue_filled"]) == batch and float(aux8.metrics["queue_in_use"]) == 0.0
    np.testing.assert_allclose(np.linalg.norm(queue[:, :batch], axis=-1), 1.0, rtol=1e-5)
    assert not queue[:, batch:].any()
    assert np.abs(grads8["prototypes"]["kernel"]).max() > 0  # frozen by the optimiser, not by the loss


def test_prototypes_frozen_for_an_epoch_then_unit_norm(swav_on_meshes):
    """optim.freeze_patterns keeps the prototypes for the first epoch (3 steps); after each later
    update their columns are unit-norm, i.e. the reference's in-place normalisation before the next step."""
    _, run, state, results = swav_on_meshes
    grads = results[1][1]
    params, opt_state = state.params, jax.jit(run.tx.init)(state.params)
    start = np.asarray(params["prototypes"]["kernel"])
    np.testing.assert_allclose(np.linalg.norm(start, axis=0), 1.0, rtol=1e-5)
    update = jax.jit(run.tx.update)
    for step in range(4):
        updates, opt_state = update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        kernel = np.asarray(params["prototypes"]["kernel"])
        if step < 3:  # renormalising unit columns moves them by rounding only (as the reference's in-place one)
            np.testing.assert_allclose(kernel, start, rtol=1e-6, atol=1e-7)
    assert np.abs(kernel - start).max() > 1e-6
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("config_file", smoke_params(["swav_resnet50", "suave_resnet50", "daino_small"]))
def test_smoke_preset_end_to_end(config_file, tfds_data_dir, tmp_path):
    """`python -m ssl_jax.main --config=configs/<paper>.py:smoke` trains 6 steps on CIFAR-10,
    checkpoints and reports kNN."""
    run_smoke_preset(config_file, tmp_path / config_file)
