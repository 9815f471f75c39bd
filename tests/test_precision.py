"""Mixed precision (bf16 compute, fp32 master weights and losses) and per-block remat.

The bf16 test trains the real DINO `:smoke` preset (not the tinier test overrides) for its
6 steps on real CIFAR-10 batches, once in float32 and once with compute_dtype=bfloat16,
from the same initial parameters and batches, and bounds the difference of the loss curves.
"""
from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CONFIG_FILE, REPO
from ssl_jax import sharding, train
from ssl_jax.core.batch import example_batch

# Stated tolerance: |loss_bf16 - loss_fp32| <= BF16_LOSS_RTOL * loss_fp32 at every step of the
# :smoke run (measured: see README, "Scaling out").
BF16_LOSS_RTOL = 0.01


def _load_smoke(config_file: str, **overrides):
    """`config_file`'s :smoke preset (never downloading), with top-level `overrides`."""
    spec = importlib.util.spec_from_file_location(os.path.basename(config_file)[:-3], config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.dataset.download = False
    config.update(overrides)
    return config


def _dino_smoke(**overrides):
    return _load_smoke(CONFIG_FILE, **overrides)


def _loss_curve(config, batches) -> tuple[list[float], object]:
    run = train.setup(config)
    step_fn = train.jit_step(config, run)
    state = train.create_state(config, run)
    losses = []
    for batch in batches:
        state, metrics = step_fn(state, sharding.to_global_batch(batch, run.mesh))
        losses.append(float(metrics["loss"]))
    return losses, state


def test_bf16_loss_curve_within_tolerance_of_fp32(tfds_data_dir):
    """DINO :smoke, 6 steps: bf16 losses within BF16_LOSS_RTOL of fp32; parameters, Adam
    moments, teacher and center stay float32 (master weights); the loss goes down in both."""
    from ssl_jax.data import pipeline

    fp32 = _dino_smoke(compute_dtype="float32")
    run = train.setup(fp32)
    iterator = pipeline.train_batches(fp32, 0, run.steps_per_epoch, run.local_batch)
    batches = [next(iterator) for _ in range(run.total_steps)]
    losses32, _ = _loss_curve(fp32, batches)
    losses16, state16 = _loss_curve(_dino_smoke(compute_dtype="bfloat16"), batches)
    print(f"\nfp32 {np.round(losses32, 4).tolist()}\nbf16 {np.round(losses16, 4).tolist()}")

    np.testing.assert_allclose(losses16, losses32, rtol=BF16_LOSS_RTOL)
    assert losses16[0] != losses32[0], "bf16 must actually compute in bf16"
    for what in ("params", "teacher", "opt_state", "method_state"):
        for leaf in jax.tree.leaves(getattr(state16, what)):
            assert leaf.dtype in (jnp.float32, jnp.int32), f"{what} leaf of dtype {leaf.dtype}"


def test_bf16_activations_fp32_params(smoke_config):
    """compute_dtype=bfloat16: the backbone returns bfloat16 features, the loss is float32."""
    smoke_config.compute_dtype = "bfloat16"
    run = train.setup(smoke_config, steps_per_epoch=3)
    state = jax.eval_shape(train.init_state_fn(smoke_config, run), jax.random.key(0))
    batch = example_batch(smoke_config.augment, 8)
    features = jax.eval_shape(run.method.backbone.apply, {"params": state.params["backbone"]},
                              batch["views"]["global"][:, 0])
    assert features.dtype == jnp.bfloat16
    loss, _ = jax.eval_shape(run.method.loss, state.params, state.teacher, state.method_state, state.model_state,
                             batch, jax.random.key(0), state.step)
    assert loss.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


def test_unknown_compute_dtype_is_a_clear_error(smoke_config):
    smoke_config.compute_dtype = "float16"
    with pytest.raises(ValueError, match="unknown config.compute_dtype 'float16'; choose one of"):
        train.setup(smoke_config, steps_per_epoch=3)


@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_remat_gives_the_same_loss_and_gradients(method, smoke_config_factory):
    """remat=True recomputes each block in the backward pass: the same loss and gradients
    (DINO: ViT blocks; SimCLR's :smoke: ResNet blocks with BatchNorm)."""
    results = []
    for remat in (False, True):
        if method == "dino":
            config = smoke_config_factory(remat=remat, **{"model.drop_path_rate": 0.0})
        else:
            config = _load_smoke(os.path.join(REPO, "configs", "simclr_resnet50.py"), remat=remat)
            config.augment.global_crops.size = 16
        run = train.setup(config, steps_per_epoch=3)
        state = train.create_state(config, run)
        batch = sharding.to_global_batch(example_batch(config.augment, 16, jax.random.key(3)), run.mesh)
        fn = jax.jit(jax.value_and_grad(run.method.loss, has_aux=True))
        (loss, _), grads = fn(state.params, state.teacher, state.method_state, state.model_state, batch,
                              jax.random.key(0), state.step)
        results.append(jax.device_get((loss, grads)))
    (loss_plain, grads_plain), (loss_remat, grads_remat) = results
    np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads_plain)):
        # float32 reduction-order noise only (recomputed blocks fuse differently); a remat bug is O(1)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
