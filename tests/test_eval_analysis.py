"""Pure pieces of frozen-checkpoint evaluation and analysis, against hand-written references:
kNN at every k of the DINO protocol vs brute force, linear probes on a linearly separable
problem, top-k accuracy, linear CKA (identity, invariances), mean attention distance of
known patterns, the Fourier analysis of known feature maps, the DINO linear-probe
features of a ViT, fine-tuning's layer-wise lr decay, the PyTorch name mapping (without
torch) and MAE's reconstruction panels."""
from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.analysis import metrics
from ssl_jax.eval import finetune, linear
from ssl_jax.eval.knn import knn_predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def protocol(preset="smoke"):
    spec = importlib.util.spec_from_file_location("eval_protocols", os.path.join(REPO, "configs", "eval_protocols.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def brute_force_knn(train, train_labels, test, k, temperature, num_classes):
    """Every pairwise cosine similarity in float64, the k largest by full sort, exp(s/T) votes."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    similarity = test.astype(np.float64) @ train.astype(np.float64).T
    out = []
    for row in similarity:
        votes = np.zeros(num_classes)
        for j in np.argsort(-row, kind="stable")[:k]:
            votes[train_labels[j]] += np.exp(row[j] / temperature)
        out.append(np.argmax(votes))
    return np.array(out)


@pytest.mark.parametrize("k", [10, 20, 100, 200])
def test_knn_every_protocol_k_matches_brute_force(k):
    rng = np.random.RandomState(k)
    train, labels, test = rng.randn(400, 12), rng.randint(0, 10, 400), rng.randn(60, 12)
    got = knn_predict(train, labels, test, k=k, temperature=0.07, num_classes=10, chunk=25)
    np.testing.assert_array_equal(got, brute_force_knn(train, labels, test, k, 0.07, 10))


def test_top_k_accuracy_counts_labels_among_the_k_largest_logits():
    logits = np.array([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4], [0.5, 0.1, 0.2, 0.3, 0.4, 0.0], [0, 1, 2, 3, 4, 5.0]])
    labels = np.array([1, 5, 0])  # rank 1, rank 6, rank 6
    assert linear.top_k_accuracy(logits, labels) == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(1 / 3)}
    assert linear.top_k_accuracy(logits[:, :3], np.array([1, 0, 2])) == {"top1": 1.0}  # no top-5 of 3 classes


@pytest.fixture(scope="module")
def separable():
    """Four classes separated by a margin along random directions in 24-D, shifted off zero."""
    rng = np.random.RandomState(0)
    directions = rng.randn(4, 24)
    labels = rng.randint(0, 4, 640)
    x = rng.randn(640, 24) * 0.3 + 3.0 * directions[labels] + 5.0
    return x.astype(np.float32), labels


@pytest.mark.parametrize("name", ["linear_dino", "linear_mae"])
def test_linear_probe_recovers_a_linearly_separable_problem(separable, name):
    cfg = protocol()[name]
    cfg.epochs, cfg.batch_size = 30, 64
    # the smoke batch would give a tiny scaled lr; LARS moves each weight by lr x 0.001 x its norm
    cfg.optim.lr = 3.0 if name == "linear_dino" else 200.0
    x, y = separable
    probe, state, losses = linear.train_on_features(cfg, x[:512], y[:512], num_classes=4)
    assert losses[-1] < 0.2 * losses[0]
    assert linear.top_k_accuracy(probe.logits(state, x[512:]), y[512:])["top1"] == 1.0
    if name == "linear_mae":  # BatchNorm without affine: statistics only, no learned scale/shift
        assert set(state.params) == {"Dense_0"}
        np.testing.assert_allclose(state.batch_stats["BatchNorm_0"]["mean"], x[:512].mean(0), rtol=0.05)


def test_linear_cka_is_one_on_itself_and_invariant_to_orthogonal_maps_and_scale():
    rng = np.random.RandomState(1)
    x = rng.randn(50, 8) @ rng.randn(8, 20)
    q, _ = np.linalg.qr(rng.randn(20, 20))
    assert metrics.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert metrics.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-12)
    y = rng.randn(50, 5)
    assert metrics.linear_cka(x, y) == pytest.approx(metrics.linear_cka(x @ q, -2 * y), abs=1e-12)
    # Kornblith et al. Eq. 5 in feature space equals the Gram form used here.
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert metrics.linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    matrix = metrics.cka_matrix(np.stack([x.reshape(50, 4, 5), (x @ q).reshape(50, 4, 5), rng.randn(50, 4, 5)]))
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    np.testing.assert_allclose(matrix, matrix.T)
    assert matrix[0, 1] == pytest.approx(1.0) and matrix[0, 2] < 0.9


def _attention(side, pattern, prefix=1, heads=2, layers=1):
    """Attention [L, 1, H, T, T] whose patch-to-patch weights are `pattern` [N, N]; every patch
    also pays 0.5 to [CLS], which the renormalisation must ignore."""
    n = side * side
    attn = np.zeros((layers, 1, heads, prefix + n, prefix + n))
    attn[..., prefix:, prefix:] = pattern
    attn[..., prefix:, 0] = 0.5
    return attn


def test_mean_attention_distance_of_known_patterns():
    side, patch = 4, 8
    n = side * side
    assert np.allclose(metrics.mean_attention_distance(_attention(side, np.eye(n)), patch), 0.0)
    # uniform attention: the mean pairwise distance between patch centres, by brute force
    centres = [(r * patch, c * patch) for r in range(side) for c in range(side)]
    pairwise = np.mean([np.hypot(a[0] - b[0], a[1] - b[1]) for a in centres for b in centres])
    np.testing.assert_allclose(metrics.mean_attention_distance(_attention(side, np.ones((n, n)) / n), patch), pairwise)
    # every patch attends to the patch 2 columns over (wrapping in the row): 2 or 2 patches back
    shift = np.zeros((n, n))
    for q in range(n):
        r, c = divmod(q, side)
        shift[q, r * side + (c + 2) % side] = 1.0
    np.testing.assert_allclose(metrics.mean_attention_distance(_attention(side, shift, layers=3), patch),
                               np.full((3, 2), 2 * patch))


def test_cls_attention_maps_place_patches_row_major():
    attn = np.zeros((1, 2, 1 + 6 + 9, 1 + 6 + 9))  # [CLS] + 6 registers + 3x3 patches
    attn[0, 1, 0, 1 + 6 + 5] = 1.0  # head 1 looks at patch 5 = row 1, column 2
    maps = metrics.cls_attention_maps(attn, num_prefix=7)
    assert maps.shape == (1, 2, 3, 3) and maps[0, 1, 1, 2] == 1.0 and maps.sum() == 1.0


def test_fourier_analysis_reads_the_diagonal_frequencies_relative_to_zero():
    side, dim = 8, 3
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    # plane waves along the diagonal at frequency (1, 1) and (3, 3) (the highest this read-out
    # keeps for an even grid), on a constant offset so the zero frequency is the same
    maps = [1.0 + np.cos(2 * np.pi * f * (rows + cols) / side)[..., None] * np.ones(dim) for f in (1, 3)]
    tokens = np.stack([np.concatenate([np.zeros((1, 1, dim)), m.reshape(1, side * side, dim)], axis=1)
                       for m in maps])  # [L=2, B=1, 1+N, D]
    relative = metrics.relative_log_amplitude(tokens)
    assert relative.shape == (2, side // 2) and np.all(relative[:, 0] == 0)
    # amplitude N/2 at the wave's frequency vs N at zero: log(1/2); elsewhere log(1e-6 / N)
    np.testing.assert_allclose([relative[0, 1], relative[1, 3]], np.log(0.5), atol=1e-6)
    assert relative[1, -1] > relative[0, -1] + 5 and relative[0, 1] > relative[1, 1] + 5


@pytest.fixture(scope="module")
def tiny_vit():
    from ssl_jax.models.vit import VisionTransformer

    module = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=3, num_heads=2)
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    return module, jax.jit(module.init)(jax.random.key(0), images)["params"], images


def test_dino_probe_features_are_normed_cls_of_the_last_blocks_and_pooled_patches(tiny_vit):
    import flax.linen as nn
    import ml_collections

    from ssl_jax.eval.frozen import probe_features_fn

    module, params, images = tiny_vit
    config = ml_collections.ConfigDict({"model": {"name": "vit", "size": "custom", "img_size": 16, "patch_size": 8,
                                                  "embed_dim": 16, "depth": 3, "num_heads": 2, "drop_path_rate": 0.0}})
    features_fn = jax.jit(probe_features_fn(config, None, n_last_blocks=2, avgpool=True))
    features = features_fn((params, None), images)
    tokens, _ = jax.jit(lambda p, x: module.apply({"params": p}, x, method="block_outputs"))(params, images)
    norm = lambda t: nn.LayerNorm(1e-6).apply({"params": params["norm"]}, t)  # noqa: E731
    expected = jnp.concatenate([norm(tokens[1])[:, 0], norm(tokens[2])[:, 0], norm(tokens[2])[:, 1:].mean(1)], axis=-1)
    assert features.shape == (2, 48)
    np.testing.assert_allclose(features, expected, atol=1e-6)
    np.testing.assert_allclose(features[:, 16:32], module.apply({"params": params}, images), atol=1e-6)


def mae_layer_id(name: str, num_layers: int) -> int:
    """MAE util/lr_decay.py get_layer_id_for_vit, transcribed (num_layers = len(model.blocks) + 1)."""
    if name in ["cls_token", "pos_embed"]:
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    else:
        return num_layers


def test_finetune_layer_wise_lr_decay_follows_mae(tiny_vit):
    """Every parameter's update under build_finetune_optimizer is its AdamW update at MAE's lr scale
    layer_decay ** (num_layers - layer_id) (param_groups_lrd); registers and the mask token (absent
    from MAE's ViT) sit with cls_token in layer 0."""
    _, params, _ = tiny_vit
    depth = 3
    backbone = {**params, "register_tokens": jnp.zeros((1, 2, 16)), "mask_token": jnp.zeros((1, 1, 16))}
    tree = {"backbone": backbone, "fc_norm": {"scale": jnp.ones(16), "bias": jnp.zeros(16)},
            "head": {"kernel": jnp.zeros((16, 10)), "bias": jnp.zeros(10)}}
    mask = finetune.decay_mask(tree)
    assert mask["head"]["kernel"] and mask["backbone"]["blocks_1"]["fc1"]["kernel"]
    assert not (mask["backbone"]["cls_token"] or mask["backbone"]["pos_embed"] or mask["head"]["bias"])
    cfg = protocol().finetune
    cfg.optim.weight_decay = 0.0
    cfg.layer_decay = 0.5
    tx = finetune.build_finetune_optimizer(cfg, tree, steps_per_epoch=10)
    grads = jax.tree.map(jnp.ones_like, tree)
    updates, _ = jax.jit(tx.update)(grads, tx.init(tree), tree)
    unit = updates["head"]["bias"][0]  # layer num_layers: scale 1
    ids = {}
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        keys = [str(k.key) for k in path]
        torch_name = ".".join(k.replace("blocks_", "blocks.") for k in (keys[1:] if keys[0] == "backbone" else keys))
        layer = 0 if keys[1] in ("register_tokens", "mask_token") else mae_layer_id(torch_name, depth + 1)
        ids[torch_name] = layer
        np.testing.assert_allclose(update / unit, 0.5 ** (depth + 1 - layer), rtol=1e-6, err_msg=torch_name)
    assert ids["cls_token"] == ids["patch_embed.kernel"] == 0 and ids["blocks.2.fc2.bias"] == 3
    assert ids["norm.scale"] == ids["fc_norm.scale"] == ids["head.kernel"] == depth + 1


def test_finetuning_a_vit_without_cls_reads_its_mean_patch_token():
    """I-JEPA's encoder has no [CLS]: the fine-tuned classifier reads the backbone's pooled output
    (the mean patch token), and the head is sized from the ViT, not from a cls_token parameter."""
    from ssl_jax.models.backbones import backbone_kwargs, build_backbone

    spec = importlib.util.spec_from_file_location("ijepa_small", os.path.join(REPO, "configs", "ijepa_small.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    backbone = build_backbone(config.model, with_drop_path=False, **backbone_kwargs(config))
    size = config.model.img_size
    images = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    params = jax.jit(backbone.init)(jax.random.key(0), images)["params"]
    assert "cls_token" not in params
    cfg = protocol().finetune
    cfg.global_pool = False  # the backbone's own pooled output (global_pool is tested in test_mim_fidelity.py)
    tuner = finetune.FineTuner(config, cfg, params, num_classes=10)
    logits = jax.jit(tuner.logits)(tuner.params, images)
    pooled = backbone.apply({"params": params}, images)
    head = tuner.params["head"]
    np.testing.assert_allclose(logits, pooled @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6)


def test_unpatchify_inverts_patchify():
    from ssl_jax.analysis.reconstruction import unpatchify
    from ssl_jax.models.vit import patchify

    images = np.random.RandomState(0).rand(2, 16, 16, 3).astype(np.float32)
    np.testing.assert_array_equal(unpatchify(np.asarray(patchify(jnp.asarray(images), 4)), 4), images)


def test_convert_vit_maps_a_pytorch_layout_onto_the_vit_parameters():
    """Without torch: a ViT's own parameters written out under the PyTorch names and layouts (by
    hand, the inverse of the documented mapping) convert back to the same tree and architecture."""
    from ssl_jax.convert.pytorch import convert_vit
    from ssl_jax.models.vit import vit

    module = vit("custom", img_size=16, patch_size=4, embed_dim=128, depth=2, num_heads=2, layerscale_init=0.1,
                 num_register_tokens=2)
    params = jax.device_get(jax.jit(module.init)(jax.random.key(0),
                                                                                jnp.zeros((1, 16, 16, 3)))["params"])
    state = {"cls_token": params["cls_token"], "pos_embed": params["pos_embed"],
             "register_tokens": params["register_tokens"], "mask_token": np.zeros((1, 1, 128)),
             "patch_embed.proj.weight": params["patch_embed"]["kernel"].reshape(4, 4, 3, 128).transpose(3, 2, 0, 1),
             "patch_embed.proj.bias": params["patch_embed"]["bias"],
             "norm.weight": params["norm"]["scale"], "norm.bias": params["norm"]["bias"],
             "head.weight": np.zeros((10, 128))}
    for i in range(2):
        block = params[f"blocks_{i}"]
        for torch_name, ours in (("attn.qkv", block["attn"]["qkv"]), ("attn.proj", block["attn"]["proj"]),
                                 ("mlp.fc1", block["fc1"]), ("mlp.fc2", block["fc2"])):
            state[f"blocks.{i}.{torch_name}.weight"] = ours["kernel"].T
            state[f"blocks.{i}.{torch_name}.bias"] = ours["bias"]
        for norm in ("norm1", "norm2"):
            state[f"blocks.{i}.{norm}.weight"] = block[norm]["scale"]
            state[f"blocks.{i}.{norm}.bias"] = block[norm]["bias"]
        for ls in ("ls1", "ls2"):
            state[f"blocks.{i}.{ls}.gamma"] = block[ls]["gamma"]
    converted, kwargs = convert_vit({f"module.backbone.{k}": v for k, v in state.items()}, num_heads=2)
    assert kwargs == {"size": "custom", "embed_dim": 128, "depth": 2, "num_heads": 2, "patch_size": 4,
                      "img_size": 16, "num_register_tokens": 2, "layerscale_init": 1e-5}
    jax.tree.map(np.testing.assert_array_equal, converted, params)
    with pytest.raises(ValueError, match="blocks.0.attn.q_bias"):
        convert_vit({**state, "blocks.0.attn.q_bias": np.zeros(128)}, num_heads=2)


def test_mae_reconstructions_keep_visible_patches_and_grey_out_masked_ones():
    from ssl_jax.analysis.reconstruction import mae_reconstructions
    from ssl_jax.core.batch import example_batch
    from ssl_jax.methods.mae import MAE

    spec = importlib.util.spec_from_file_location("mae_small_config", os.path.join(REPO, "configs", "mae_small.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.model.update({"embed_dim": 16, "depth": 1, "num_heads": 2})
    config.method.update({"decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2})
    method = MAE(config, steps_per_epoch=1)
    params = jax.jit(method.init)(jax.random.key(0), example_batch(config.augment, 1)).params
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    display = np.random.RandomState(0).rand(3, 32, 32, 3)
    panels = mae_reconstructions(method, params, ((display - mean) / std).astype(np.float32), mean, std, seed=1)
    assert list(panels) == ["original", "masked", "reconstruction", "visible + reconstruction"]
    np.testing.assert_allclose(panels["original"], display, atol=1e-5)
    visible = np.all(np.isclose(panels["masked"], display, atol=1e-5), axis=-1)  # [B, H, W]
    grey = np.all(np.isclose(panels["masked"], 0.5, atol=1e-5), axis=-1)
    assert np.all(visible | grey) and 0.2 < visible.mean() < 0.3  # 75 % masked (4 of 16 patches visible)
    np.testing.assert_allclose(panels["visible + reconstruction"][visible], display[visible], atol=1e-5)
    np.testing.assert_allclose(panels["visible + reconstruction"][~visible], panels["reconstruction"][~visible])
