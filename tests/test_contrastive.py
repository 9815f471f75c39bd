"""SimCLR, BYOL, MoCo v3 and SimSiam: losses against float64 numpy references, the global
batch (negatives and BatchNorm statistics) under 8-device sharding, where gradients may and
may not flow, and each paper config's `:smoke` preset end to end from the command line.
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
from ssl_jax.methods.simsiam import SimSiam
from ssl_jax.models.heads import ProjectionMLP
from ssl_jax.sharding import batch_sharding, replicated

CONFIG_FILES = {"simclr": "simclr_resnet50", "byol": "byol_resnet50", "mocov3": "mocov3_vit_small",
                "simsiam": "simsiam_resnet50"}


# ----------------------------------------------------------------------------- numpy references (float64)

def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_cross_entropy(logits, target):
    logits = logits - logits.max()
    return -(logits[target] - np.log(np.sum(np.exp(logits))))


def np_simclr_loss(z1, z2, temperature):
    """google-research/simclr `add_contrastive_loss`: loss_a + loss_b, each a mean over anchors of
    CE([a_i . b_j, a_i . a_j (j != i)] / t, positive = b_i), written as loops."""
    a, b = np_normalize(np.float64(z1)), np_normalize(np.float64(z2))
    total = 0.0
    for x, y in ((a, b), (b, a)):
        per_anchor = []
        for i in range(len(x)):
            logits = [x[i] @ y[j] / temperature for j in range(len(y))]
            logits += [x[i] @ x[j] / temperature for j in range(len(x)) if j != i]
            per_anchor.append(np_cross_entropy(np.array(logits), i))
        total += np.mean(per_anchor)
    return total


def np_moco_ctr(q, k, temperature):
    """moco-v3 `contrastive_loss`: CE(q k^T / t, arange) * 2t, loops over queries."""
    q, k = np_normalize(np.float64(q)), np_normalize(np.float64(k))
    return np.mean([np_cross_entropy(k @ q[i] / temperature, i) for i in range(len(q))]) * 2 * temperature


def np_byol_regression(p, z):
    return np.mean(np.sum((np_normalize(np.float64(p)) - np_normalize(np.float64(z))) ** 2, axis=1))


def np_negative_cosine(p, z):
    return -np.mean(np.sum(np_normalize(np.float64(p)) * np_normalize(np.float64(z)), axis=1))


def _embeddings(seed, batch=12, dim=7):
    rng = np.random.RandomState(seed)
    return (rng.randn(batch, dim) * 2).astype(np.float32), (rng.randn(batch, dim) * 2).astype(np.float32)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_simclr_reference(temperature):
    z1, z2 = _embeddings(0)
    got = losses.nt_xent(z1, z2, temperature) + losses.nt_xent(z2, z1, temperature)
    np.testing.assert_allclose(float(got), np_simclr_loss(z1, z2, temperature), rtol=2e-5)


def test_nt_xent_is_invariant_to_permuting_the_batch_and_swapping_views():
    z1, z2 = _embeddings(1)
    perm = np.random.RandomState(2).permutation(len(z1))
    symmetric = lambda a, b: float(losses.nt_xent(a, b, 0.2) + losses.nt_xent(b, a, 0.2))  # noqa: E731
    base = symmetric(z1, z2)
    np.testing.assert_allclose(symmetric(z1[perm], z2[perm]), base, rtol=1e-6)
    np.testing.assert_allclose(symmetric(z2, z1), base, rtol=1e-6)
    # ... but not to permuting one view alone (that changes which pairs are positives).
    assert abs(symmetric(z1[perm], z2) - base) > 1e-3


def test_info_nce_matches_mocov3_reference():
    q, k = _embeddings(3)
    np.testing.assert_allclose(float(losses.info_nce(q, k, 0.2)), np_moco_ctr(q, k, 0.2), rtol=2e-5)


def test_normalized_mse_and_negative_cosine_match_references():
    p, z = _embeddings(4)
    np.testing.assert_allclose(float(losses.normalized_mse(p, z)), np_byol_regression(p, z), rtol=1e-5)
    np.testing.assert_allclose(float(losses.negative_cosine(p, z)), np_negative_cosine(p, z), rtol=1e-5)
    # Both depend on directions only.
    np.testing.assert_allclose(float(losses.normalized_mse(3 * p, 0.5 * z)), np_byol_regression(p, z), rtol=1e-5)


def test_normalized_std_is_one_for_spread_and_zero_for_collapsed_embeddings():
    spread = np.random.RandomState(5).randn(4096, 16).astype(np.float32)
    assert abs(float(losses.normalized_std(spread)) - 1.0) < 0.02
    collapsed = np.tile(spread[:1], (64, 1))
    assert float(losses.normalized_std(collapsed)) < 1e-5


# ----------------------------------------------------------------------------- methods on the mesh

def load_config(method: str, preset: str = "smoke"):
    return importlib.import_module(f"configs.{CONFIG_FILES[method]}").get_config(preset)


def tiny_config(method: str):
    """The method's smoke preset at 16 px (compile time dominates on 2 cores)."""
    config = load_config(method)
    config.augment.global_crops.size = 16
    return config


def _loss_and_grads(run, state, batch, argnums=0):
    """value_and_grad of method.loss over run.mesh: (loss, aux, grads w.r.t. `argnums`)."""
    rep = replicated(run.mesh)
    fn = jax.jit(jax.value_and_grad(run.method.loss, argnums=argnums, has_aux=True),
                 in_shardings=(rep, rep, rep, rep, batch_sharding(run.mesh), rep, rep), out_shardings=rep)
    (loss, aux), grads = fn(state.params, state.teacher, state.method_state, state.model_state,
                            sharding.to_global_batch(batch, run.mesh), jax.random.key(7), jnp.asarray(0, jnp.int32))
    return jax.device_get((loss, aux, grads))


def _assert_trees_close(actual, expected, rtol, atol, what):
    """Leaf by leaf |a - e| <= rtol |e| + atol * max|e| + 5e-6: float32 reduction-order noise scales
    with each tensor's magnitude (a sum over 8 device partials is ordered differently), while
    the bugs this guards against (a loss or gradient off by the device count) are factors."""
    leaves_expected, tree_expected = jax.tree.flatten(expected)
    assert jax.tree.structure(actual) == tree_expected, what
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], leaves_expected):
        e = np.asarray(e)
        np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol * float(np.max(np.abs(e))) + 5e-6,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module", params=sorted(CONFIG_FILES))
def method_on_meshes(request):
    """(name, config, 8-device Run, 1-device Run, a fresh state, a random global batch)."""
    config = tiny_config(request.param)
    run8 = train.setup(config, steps_per_epoch=3)
    assert run8.mesh.devices.size == 8
    run1 = run8._replace(mesh=Mesh(np.array(jax.devices()[:1]), ("data",)))
    state = train.create_state(config, run8)
    batch = example_batch(config.augment, config.batch_size, jax.random.key(3))
    # Make every device's shard different in distribution, so per-device statistics (BN,
    # negatives) would differ from global ones.
    batch["views"]["global"] = batch["views"]["global"] + np.repeat(np.arange(8, dtype=np.float32), config.batch_size // 8)[:, None, None, None, None]
    return request.param, config, run8, run1, state, batch


def test_sharded_loss_gradients_and_batchnorm_equal_single_device(method_on_meshes):
    """The global batch on 8 devices gives the single-device loss, gradients (not off by the
    device count) and BatchNorm running statistics: negatives and BN span all devices."""
    name, config, run8, run1, state, batch = method_on_meshes
    loss8, aux8, grads8 = _loss_and_grads(run8, state, batch)
    state1 = jax.device_put(state, replicated(run1.mesh))
    loss1, aux1, grads1 = _loss_and_grads(run1, state1, batch)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    _assert_trees_close(grads8, grads1, rtol=1e-4, atol=2e-4, what=f"{name} grads")
    _assert_trees_close(aux8.model_state, aux1.model_state, rtol=1e-5, atol=1e-5, what=f"{name} BN stats")
    _assert_trees_close(aux8.metrics, aux1.metrics, rtol=1e-5, atol=1e-5, what=f"{name} metrics")
    assert aux8.model_state is not None and "projector" in aux8.model_state
    if config.model.name == "resnet":
        assert "backbone" in aux8.model_state


def test_teacher_gets_no_gradient(method_on_meshes):
    """Differentiating the loss w.r.t. the EMA teacher gives exactly zero (BYOL, MoCo v3); SimCLR and
    SimSiam keep no teacher at all."""
    name, _, run8, _, state, batch = method_on_meshes
    assert (state.teacher is not None) == (name in ("byol", "mocov3")), name
    if state.teacher is None:
        return
    _, _, teacher_grads = _loss_and_grads(run8, state, batch, argnums=1)
    for path, g in jax.tree_util.tree_flatten_with_path(teacher_grads)[0]:
        assert not np.any(np.asarray(g)), f"gradient reached teacher{jax.tree_util.keystr(path)}"


def test_eval_features_do_not_depend_on_the_rest_of_the_batch(method_on_meshes):
    """Evaluation normalises with BatchNorm's running averages: an image's features are the
    same alone or in a batch (train-mode BN would mix the batch in)."""
    _, _, run8, _, state, batch = method_on_meshes
    images = batch["views"]["global"][:, 0]
    features = jax.jit(run8.method.features)
    variables = run8.method.eval_variables(state)
    together = np.asarray(features(variables, state.model_state, images))
    alone = np.asarray(features(variables, state.model_state, images[:1]))
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-5, atol=1e-5)


def test_simsiam_gradient_flows_only_through_the_predictor_branch():
    """SimSiam's gradient equals that of the loss with the targets z replaced by constants;
    without the stop-gradient it would not."""
    config = tiny_config("simsiam")
    run = train.setup(config, steps_per_epoch=3)
    run1 = run._replace(mesh=Mesh(np.array(jax.devices()[:1]), ("data",)))
    state = jax.device_put(train.create_state(config, run), replicated(run1.mesh))
    batch = example_batch(config.augment, config.batch_size, jax.random.key(4))
    views = jnp.asarray(batch["views"]["global"])
    method, rng = run.method, jax.random.key(7)
    online_rng = jax.random.split(rng)[0]
    online = jax.jit(method._online)
    _, projections, _ = online(state.params, state.model_state, views, online_rng)
    z1, z2 = (jax.lax.stop_gradient(z) for z in projections)

    def constant_target_loss(params):
        queries, _, _ = method._online(params, state.model_state, views, online_rng)
        return 0.5 * (losses.negative_cosine(queries[0], z2) + losses.negative_cosine(queries[1], z1))

    want = jax.jit(jax.grad(constant_target_loss))(state.params)
    _, _, got = _loss_and_grads(run1, state, batch)
    _assert_trees_close(got, want, rtol=1e-4, atol=2e-5, what="simsiam grads")

    no_stop_gradient = type("NoStopGradient", (SimSiam,), {"target": "online"})(config, 3)
    _, _, other = _loss_and_grads(run1._replace(method=no_stop_gradient), state, batch)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(got)))
    assert diff > 1e-4, "the stop-gradient must change the gradient"


def test_batchnorm_statistics_are_over_the_global_batch():
    """ProjectionMLP's BatchNorm on an 8-device sharded batch: running mean/var after one step
    equal numpy's over the whole batch (PyTorch momentum 0.1, biased variance)."""
    mesh = sharding.make_mesh()
    mlp = ProjectionMLP(hidden_dim=4, out_dim=3, num_layers=1, last_bn=True)
    rng = np.random.RandomState(6)
    x = (rng.randn(32, 5) + np.repeat(np.arange(8), 4)[:, None]).astype(np.float32)  # per-device offsets
    variables = mlp.init(jax.random.key(0), x)
    apply = jax.jit(lambda v, x: mlp.apply(v, x, train=True, mutable=["batch_stats"]),
                    in_shardings=(replicated(mesh), batch_sharding(mesh)), out_shardings=replicated(mesh))
    _, updated = apply(variables, jax.device_put(x, batch_sharding(mesh)))
    h = np.float64(x) @ np.float64(variables["params"]["linear_0"]["kernel"])
    stats = jax.device_get(updated["batch_stats"]["bn_0"])
    np.testing.assert_allclose(stats["mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * h.var(0), rtol=1e-5, atol=1e-6)
    first_device = h[:4]
    assert not np.allclose(0.1 * first_device.mean(0), stats["mean"], atol=1e-3)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("method", smoke_params(sorted(CONFIG_FILES)))
def test_smoke_preset_end_to_end(method, tfds_data_dir, tmp_path):
    """`python -m ssl_jax.main --config=configs/<paper>.py:smoke` trains 6 steps on CIFAR-10,
    checkpoints and reports kNN at k = 20 and 200."""
    last_eval = run_smoke_preset(CONFIG_FILES[method], tmp_path / method)
    assert last_eval["knn_top1@200"] > 0.1  # above chance (10 classes)
