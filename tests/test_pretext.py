"""Pretext tasks: rotation prediction (RotNet) and label augmentation (SLA) against ports of the
references, the shared cross-entropy against float64 numpy, labels used only where they exist, the
batch's label/index fields from the pipeline; MP3 without position information and with masked
context keys; the instance-discrimination head sharded over 8 devices; SiT's corruption, tokens
and losses; and the `:smoke` presets end to end.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TFDS_DATA_DIR, run_smoke_preset, smoke_params
from ssl_jax import losses, train
from ssl_jax.core.batch import example_batch
from ssl_jax.methods.rotation import aggregate_joint_logits, rotate_four, rotation_targets


def np_cross_entropy(logits, labels, weights, smoothing):
    """torch F.cross_entropy(reduction='none', label_smoothing=s), then the weighted mean, in float64."""
    logits = np.float64(logits)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    num_classes = logits.shape[-1]
    per = []
    for row, label in zip(log_p.reshape(-1, num_classes), labels.reshape(-1)):
        target = np.full(num_classes, smoothing / num_classes)
        target[max(label, 0)] += 1.0 - smoothing
        per.append(-(target * row).sum())
    per = np.array(per)
    w = np.ones_like(per) if weights is None else np.float64(weights).reshape(-1)
    return (per * w).sum() / w.sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch_formula(smoothing):
    rng = np.random.RandomState(0)
    logits = rng.randn(6, 4, 7).astype(np.float32) * 3
    labels = rng.randint(0, 7, size=(6, 4))
    weights = (rng.rand(6, 4) > 0.4).astype(np.float32)
    for w in (None, weights):
        got = float(losses.cross_entropy(logits, labels, None if w is None else jnp.asarray(w), smoothing))
        np.testing.assert_allclose(got, np_cross_entropy(logits, labels, w, smoothing), rtol=1e-5)
    # Entries with zero weight may hold any label (-1 = unknown) and get no gradient.
    unknown = np.where(weights > 0, labels, -1)
    grad = jax.grad(lambda x: losses.cross_entropy(x, unknown, jnp.asarray(weights), smoothing))(jnp.asarray(logits))
    assert not np.asarray(grad)[weights == 0].any() and np.asarray(grad)[weights > 0].any()


def test_rotations_targets_and_aggregation_follow_the_references():
    images = np.random.RandomState(1).randn(3, 5, 5, 2).astype(np.float32)
    rotated = np.asarray(rotate_four(jnp.asarray(images)))
    for k in range(4):  # torch.rot90(x, k, (2, 3)) on NCHW == np.rot90 over (H, W)
        np.testing.assert_array_equal(rotated[:, k], np.rot90(images, k, axes=(1, 2)))
    labels = np.array([2, 0, 1])
    # SLA: labels = torch.stack([labels * n + i for i in range(n)], 1).view(-1)
    np.testing.assert_array_equal(np.asarray(rotation_targets(3, jnp.asarray(labels))).reshape(-1),
                                  np.stack([labels * 4 + i for i in range(4)], 1).reshape(-1))
    np.testing.assert_array_equal(np.asarray(rotation_targets(3)), np.tile(np.arange(4), (3, 1)))
    # Aggregated inference: agg = sum_i preds[i::n, i::n] / n over the image-major [B * 4, 4C] logits.
    preds = np.random.RandomState(2).randn(3 * 4, 4 * 5)
    want = sum(preds[i::4, i::4] / 4 for i in range(4))
    np.testing.assert_allclose(np.asarray(aggregate_joint_logits(jnp.asarray(preds.reshape(3, 4, 20)))), want,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="square"):
        rotate_four(jnp.zeros((1, 4, 6, 3)))


def test_sla_uses_labels_only_where_they_exist():
    """The SLA loss is the joint cross-entropy over the labelled examples only (label -1 = outside the
    labelled fraction): it equals the numpy loss over the labelled rows of the same logits, and
    relabelling a labelled example changes it."""
    config = importlib.import_module("configs.sla_resnet").get_config("smoke")
    config.augment.global_crops.size = 8
    run = train.setup(config, steps_per_epoch=3)
    variables = jax.jit(run.method.init)(jax.random.key(0),
                                                                        example_batch(config.augment, 1))
    batch = example_batch(config.augment, 8, jax.random.key(1), fields=("label",))
    batch["label"] = np.array([3, -1, 5, -1, 0, 9, -1, 2], np.int32)
    rng = jax.random.key(2)

    @jax.jit
    def loss_and_logits(b):
        loss = run.method.loss(variables.params, None, None, variables.model_state, b, rng, 0)[0]
        logits = run.method.rotated_logits(variables.params, variables.model_state, b["views"]["global"][:, 0],
                                           train=True, rng=rng)[0]  # the same train-mode forward
        return loss, logits

    loss, logits = loss_and_logits(batch)
    labelled = batch["label"] >= 0
    targets = np.stack([batch["label"][labelled] * 4 + i for i in range(4)], 1)
    np.testing.assert_allclose(float(loss), np_cross_entropy(np.asarray(logits)[labelled], targets, None, 0.0),
                               rtol=1e-5)
    relabelled = dict(batch, label=np.where(labelled, (batch["label"] + 1) % 10, -1).astype(np.int32))
    assert abs(float(loss_and_logits(relabelled)[0]) - float(loss)) > 1e-4


def test_pipeline_label_and_index_fields(tfds_data_dir):
    """'index' is the image's position in the split (the same image in every epoch), 'label' its tfds
    label, or -1 outside a fixed labelled fraction of the images."""
    import tensorflow_datasets as tfds

    from ssl_jax.data import pipeline

    config = importlib.import_module("configs.sla_resnet").get_config("smoke")
    config.dataset.train_split = "train[:48]"
    config.dataset.fields = ("label", "index")
    config.dataset.labelled_fraction = 0.25
    batches = pipeline.train_batches(config, 0, 3, 16)
    epochs = [[next(batches) for _ in range(3)] for _ in range(2)]
    labels = np.array([int(e["label"]) for e in tfds.as_numpy(tfds.load("cifar10", split="train[:48]",
                                                                          data_dir=TFDS_DATA_DIR))])
    labelled_sets = []
    for epoch in epochs:
        index = np.concatenate([b["index"] for b in epoch])
        label = np.concatenate([b["label"] for b in epoch])
        assert sorted(index) == list(range(48))
        known = label >= 0
        np.testing.assert_array_equal(label[known], labels[index[known]])
        labelled_sets.append(set(index[known]))
        assert 0 < known.sum() < 48
    assert labelled_sets[0] == labelled_sets[1]
    assert not np.array_equal(np.concatenate([b["index"] for b in epochs[0]]),
                              np.concatenate([b["index"] for b in epochs[1]]))  # reshuffled


def test_pipeline_labelled_only_reads_the_labelled_subset(tfds_data_dir):
    """`dataset.labelled_only` (the supervised-only baseline) trains on exactly the images the
    semi-supervised run sees labelled, with their labels; its epoch keeps the split's length by
    passing over that subset several times, each pass a permutation of all of it."""
    from ssl_jax.data import pipeline
    from ssl_jax.errors import UserError

    config = importlib.import_module("configs.suave_resnet50").get_config("smoke")
    config.dataset.train_split = "train[:64]"
    config.dataset.fields = ("label", "index")
    config.dataset.labelled_fraction = 0.25
    mixed = pipeline.train_batches(config, 0, 4, 16)
    mixed = [next(mixed) for _ in range(4)]
    index = np.concatenate([b["index"] for b in mixed])
    label = np.concatenate([b["label"] for b in mixed])
    labelled = dict(zip(index[label >= 0], label[label >= 0]))
    assert 4 <= len(labelled) <= 32
    config.dataset.labelled_only = True
    only = pipeline.train_batches(config, 0, 4, 16)
    only = [next(only) for _ in range(4)]
    index = np.concatenate([b["index"] for b in only])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in only]), [labelled[i] for i in index])
    passes = len(index) // len(labelled)
    for p in range(passes):  # each full pass is a permutation of the labelled subset
        assert sorted(index[p * len(labelled):(p + 1) * len(labelled)]) == sorted(labelled)
    assert passes < 2 or not np.array_equal(index[:len(labelled)], index[len(labelled):2 * len(labelled)])
    config.dataset.labelled_fraction = 1.0
    with pytest.raises(UserError, match="labelled_fraction below 1"):
        pipeline.labelled_only(config.dataset)


# ----------------------------------------------------------------------------- MP3


def _grid_permute(images, perm, patch):
    """Rearranges the patch grid of images [B, S, S, C]: output patch i is input patch perm[i] (row-major)."""
    b, size, _, ch = images.shape
    g = size // patch
    blocks = images.reshape(b, g, patch, g, patch, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, patch, patch, ch)
    blocks = blocks[:, perm]
    return blocks.reshape(b, g, g, patch, patch, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, size, size, ch)


@pytest.fixture(scope="module")
def mp3_method():
    config = importlib.import_module("configs.mp3_vit_small").get_config("smoke")
    run = train.setup(config, steps_per_epoch=3)
    variables = jax.jit(run.method.init)(jax.random.key(0),
                                                                        example_batch(config.augment, 1))
    return config, run.method, variables.params


def test_mp3_has_no_position_information(mp3_method):
    """No position parameter anywhere, a config with position embeddings is refused, and permuting the
    input patches permutes the output tokens (and their position logits): nothing to cheat with."""
    config, method, params = mp3_method
    names = ["/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert not [n for n in names if "pos_embed" in n or "cls_token" in n], names
    leaky = config.copy_and_resolve_references()
    leaky.model.pos_embed = "learned"
    with pytest.raises(ValueError, match="pos_embed='none'"):
        type(method)(leaky, 3)
    images = np.random.RandomState(3).randn(2, 16, 16, 3).astype(np.float32)
    perm = np.random.RandomState(4).permutation(16)
    logits = jax.jit(lambda x, c: method.position_logits(params, x, c))
    base = np.asarray(logits(images, None))
    permuted = np.asarray(logits(_grid_permute(images, perm, 4), None))
    np.testing.assert_allclose(permuted, base[:, perm], rtol=1e-4, atol=1e-5)
    context = np.random.RandomState(5).rand(2, 16) > 0.5
    np.testing.assert_allclose(np.asarray(logits(_grid_permute(images, perm, 4), context[:, perm])),
                               np.asarray(logits(images, context))[:, perm], rtol=1e-4, atol=1e-5)


def test_mp3_keys_are_the_context_tokens_only(mp3_method):
    """Changing a patch outside the context changes no context token's output (it is never a key),
    but changes its own output (it is still a query); changing a context patch changes the others."""
    _, method, params = mp3_method
    images = np.random.RandomState(6).randn(1, 16, 16, 3).astype(np.float32)
    context = np.zeros((1, 16), bool)
    context[0, [0, 5, 9, 14]] = True
    logits = jax.jit(lambda x: method.position_logits(params, x, context))
    base = np.asarray(logits(images))
    changed = images.copy()
    changed[0, 4:8, 4:8] += 3.0  # patch (row 1, col 1) = token 5, in the context
    outside = images.copy()
    outside[0, 0:4, 4:8] += 3.0  # token 1, not in the context
    out = np.asarray(logits(outside))
    np.testing.assert_allclose(out[0, context[0]], base[0, context[0]], rtol=1e-5, atol=1e-6)
    assert np.abs(out[0, 1] - base[0, 1]).max() > 1e-3
    inside = np.asarray(logits(changed))
    assert np.abs(inside[0, ~context[0]] - base[0, ~context[0]]).max() > 1e-3


# ----------------------------------------------------------------------------- instance discrimination


def test_instance_head_sharded_over_8_devices_equals_unsharded():
    """The [D, N_images] classifier split over its N axis on 8 devices (config.parallel.fsdp = 8 with the
    config's rules) gives the loss and gradients of one device; without CutMix the loss is the
    cross-entropy of each crop against its image's index, summed over the two crop groups."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from ssl_jax import sharding
    from ssl_jax.sharding import batch_sharding

    config = importlib.import_module("configs.instance_vit_tiny").get_config("smoke")
    config.parallel.fsdp = 8
    config.method.cutmix_alpha = 0.0
    run = train.setup(config, steps_per_epoch=3)
    assert dict(run.mesh.shape) == {"data": 1, "fsdp": 8}
    params = jax.jit(run.method.init)(jax.random.key(0),
                                                                     example_batch(config.augment, 1)).params
    batch = example_batch(config.augment, 16, jax.random.key(1), fields=("index",))
    batch["index"] = np.random.RandomState(2).randint(0, 512, 16).astype(np.int32)

    def loss_fn(p, b):
        loss, aux = run.method.loss(p, None, None, None, b, jax.random.key(3), 0)
        return loss, aux.metrics

    shardings = sharding.state_shardings(params, run.mesh, config.parallel.rules)
    assert shardings["instances"]["mlp_0"]["kernel"].spec == P(None, "fsdp")
    assert shardings["instances"]["mlp_0"]["bias"].spec == P("fsdp")
    sharded = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), in_shardings=(shardings, batch_sharding(run.mesh)))
    placed = jax.device_put(params, shardings)
    assert placed["instances"]["mlp_0"]["kernel"].addressable_shards[0].data.shape == (32, 512 // 8)
    (loss8, metrics8), grads8 = jax.device_get(sharded(placed, jax.device_put(batch, batch_sharding(run.mesh))))
    one = Mesh(np.array(jax.devices()[:1]), ("data",))
    single = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss1, _), grads1 = jax.device_get(single(jax.device_put(params, NamedSharding(one, P())), batch))
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads8)[0], jax.tree.leaves(grads1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()) + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    assert float(metrics8["instances_out_of_range"]) == 0
    # Cross-entropy of every crop against its image's index, global and local groups summed (no drop-path here).
    want = 0.0
    for group in ("global", "local"):
        crops = batch["views"][group]
        features, _ = run.method.network.apply(params, {}, crops.reshape((-1,) + crops.shape[2:]), train=True)
        logits = run.method.head.apply({"params": params["instances"]}, features)
        want += np_cross_entropy(np.asarray(logits), np.repeat(batch["index"], crops.shape[1]), None, 0.0)
    np.testing.assert_allclose(loss1, want, rtol=1e-5)


# ----------------------------------------------------------------------------- SiT


def test_sit_blur_is_kornia_on_the_rectangle():
    """smooth_patch: kornia GaussianBlur2d((k, k), (s, s)) of the crop alone, reflect-padded at the
    crop's edges (float64: np.pad(mode='reflect') and the normalised outer-product kernel)."""
    from ssl_jax.methods.sit_distort import _blur_inside

    image = np.random.RandomState(3).rand(20, 24, 3)
    top, bottom, left, right, k, sigma = 3, 17, 5, 21, 7, 1.7
    out = np.asarray(_blur_inside(jnp.asarray(image, jnp.float32), (top, bottom, left, right), jnp.asarray(k),
                                  jnp.asarray(sigma), 15))[top:bottom, left:right]
    x = np.arange(k) - k // 2
    g = np.exp(-x**2 / (2 * sigma**2))
    kernel = np.outer(g, g) / g.sum() ** 2
    padded = np.pad(image[top:bottom, left:right], ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    want = np.zeros_like(image[top:bottom, left:right])
    for i in range(k):
        for j in range(k):
            want += kernel[i, j] * padded[i:i + bottom - top, j:j + right - left]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_sit_distortion_stages():
    """distortImages on a constant-per-channel image: a grey rectangle (channels equal to their mean),
    noise blocks covering at most max_drop plus one block of the image (the loop stops once their
    summed area passes U(0, max_drop)), and the partner's pixels only when it is another image."""
    from ssl_jax.methods.sit_distort import distort

    image = jnp.broadcast_to(jnp.asarray([1.0, 2.0, 3.0]), (32, 32, 3))
    partner = jnp.full((32, 32, 3), 10.0)
    for seed in range(6):
        out = np.asarray(distort(jax.random.key(seed), image, partner, jnp.asarray(True)))
        alone = np.asarray(distort(jax.random.key(seed), image, partner, jnp.asarray(False)))
        clean = np.asarray(distort(jax.random.key(seed), image, partner, jnp.asarray(False), max_drop=0.0))
        grey = np.all(np.isclose(clean, 2.0), axis=-1)  # the grey rectangle (blurring keeps it grey inside)
        noise = np.any(alone != clean, axis=-1)  # the same rectangles, plus the noise blocks
        assert noise.mean() <= 0.3 + 0.25**2
        assert not np.any(np.all(alone == 10.0, axis=-1))
        pasted = np.all(out == 10.0, axis=-1)
        assert np.all(out[~pasted] == alone[~pasted])
        if seed == 0:
            assert grey.any() and pasted.any()


def test_sit_tokens_heads_and_gradients():
    """The rotation token is the register, after [CLS] in the ViT's output ([CLS] is the pooled output);
    the loss is the reference's learned-uncertainty sum of its three logged terms, and every head, the
    [CLS], the register token and the task weights receive gradient."""
    config = importlib.import_module("configs.sit_vit_small").get_config("smoke")
    run = train.setup(config, steps_per_epoch=3)
    method = run.method
    params = jax.jit(method.init)(jax.random.key(0),
                                                                 example_batch(config.augment, 1)).params
    backbone = method.network.modules["backbone"]
    images = jnp.asarray(np.random.RandomState(9).randn(2, 16, 16, 3), jnp.float32)
    tokens = backbone.apply({"params": params["backbone"]}, images, method="tokens")
    assert tokens.shape[1] == 2 + (16 // config.model.patch_size) ** 2
    pooled = backbone.apply({"params": params["backbone"]}, images)  # [CLS]
    np.testing.assert_allclose(np.asarray(tokens[:, 0]), np.asarray(pooled), rtol=1e-5, atol=1e-6)
    batch = example_batch(config.augment, 8, jax.random.key(1))
    grad_fn = jax.jit(jax.value_and_grad(lambda p: method.loss(p, None, None, None, batch, jax.random.key(2), 0),
                                         has_aux=True))
    (loss, aux), grads = grad_fn(params)
    adj = {"reconstruction": 0.5, "rotation": 1.0, "contrastive": 1.0}  # SiT losses.py LearnedLoss.adj
    # calculate_weighted_loss: adj exp(-s) L + s / 2, with s = 1 at init
    want = sum(a * np.exp(-1.0) * float(aux.metrics[f"{name}_loss"]) + 0.5 for name, a in adj.items())
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    for name in ("reconstruction", "rotation", "contrastive", "task_weights"):
        assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name
    assert np.abs(grads["backbone"]["register_tokens"]).max() > 0 and np.abs(grads["backbone"]["cls_token"]).max() > 0


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("config_file", smoke_params(["rotation_resnet50", "sla_resnet", "mp3_vit_small",
                                                    "instance_vit_tiny", "sit_vit_small"]))
def test_smoke_preset_end_to_end(config_file, tfds_data_dir, tmp_path):
    """`python -m ssl_jax.main --config=configs/<paper>.py:smoke` trains 6 steps on CIFAR-10,
    checkpoints and reports kNN."""
    run_smoke_preset(config_file, tmp_path / config_file)
