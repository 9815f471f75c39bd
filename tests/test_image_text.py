"""Image-text pretraining (CLIP, SigLIP, SLIP, LiT): losses against float64 numpy references of the
official code, SigLIP's chunked loss on 8 devices, the locked tower, the tokenizer, the data and
the retrieval metrics."""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_config, smoke_params
from ssl_jax import image_text_losses as itl


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_loss_ref(zimg, ztxt, scale):
    """openai/CLIP paper Figure 3 / open_clip ClipLoss, float64:
    (cross_entropy(logits_per_image, labels) + cross_entropy(logits_per_text, labels)) / 2."""
    def ce(logits):
        logits = logits - logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))
    logits_per_image = scale * zimg @ ztxt.T
    return (ce(logits_per_image) + ce(logits_per_image.T)) / 2


def siglip_loss_ref(zimg, ztxt, t, b):
    """big_vision siglip.py loss_fn, float64: labels 2*eye-1, -sum(log_sigmoid(labels*logits), -1), mean."""
    logits = zimg @ ztxt.T * t + b
    labels = 2 * np.eye(len(zimg)) - 1
    log_sigmoid = -np.logaddexp(0.0, -labels * logits)
    return np.mean(-np.sum(log_sigmoid, axis=-1))


def test_clip_loss_matches_reference():
    rng = np.random.default_rng(0)
    zimg, ztxt = _normalised(rng, 12, 8), _normalised(rng, 12, 8)
    got = itl.clip_loss(jnp.asarray(zimg, jnp.float32), jnp.asarray(ztxt, jnp.float32), jnp.float32(14.3))
    np.testing.assert_allclose(float(got), clip_loss_ref(zimg, ztxt, 14.3), rtol=1e-5)


def test_siglip_loss_matches_reference_with_bias():
    rng = np.random.default_rng(1)
    zimg, ztxt = _normalised(rng, 12, 8), _normalised(rng, 12, 8)
    ztxt[:4] = zimg[:4]  # some confident positives so the +1 labels matter
    for t, b in [(10.0, -10.0), (3.0, 0.5)]:
        got = itl.siglip_loss(jnp.asarray(zimg, jnp.float32), jnp.asarray(ztxt, jnp.float32), jnp.float32(t),
                              jnp.float32(b))
        np.testing.assert_allclose(float(got), siglip_loss_ref(zimg, ztxt, t, b), rtol=1e-5)


def test_siglip_chunked_equals_full_matrix_on_8_devices():
    """Loss and gradients (w.r.t. both embeddings, t and b) of the ring form on 8 devices equal the
    single-device full [B, B] loss."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    assert jax.device_count() == 8
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rng = np.random.default_rng(2)
    zimg, ztxt = (jnp.asarray(_normalised(rng, 16, 8), jnp.float32) for _ in range(2))
    t, b = jnp.float32(10.0), jnp.float32(-3.0)
    full = jax.value_and_grad(itl.siglip_loss, argnums=(0, 1, 2, 3))(zimg, ztxt, t, b)
    shard = NamedSharding(mesh, P("data"))
    chunked_fn = jax.jit(jax.value_and_grad(lambda *a: itl.siglip_loss_chunked(*a, mesh), argnums=(0, 1, 2, 3)))
    chunked = chunked_fn(jax.device_put(zimg, shard), jax.device_put(ztxt, shard), t, b)
    np.testing.assert_allclose(float(chunked[0]), float(full[0]), rtol=1e-5)
    np.testing.assert_allclose(float(chunked[0]), siglip_loss_ref(np.asarray(zimg, np.float64),
                                                                  np.asarray(ztxt, np.float64), 10.0, -3.0), rtol=1e-5)
    for got, want in zip(chunked[1], full[1]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- tokenizer

CAPTIONS = ["A dog runs on the grass .", "Two children play in the snow .", "a man rides a red bike",
            "A black dog jumps over a log .", "People walk down a busy street ."] * 20


def test_tokenizer_round_trip_layout_and_workdir(tmp_path):
    """Trained on captions: encode -> decode gives the (case-folded) text back; [BOS] pieces [EOS] PAD...;
    a cut keeps EOS last; sticky EOS pads with EOS; for_run stores the model in the workdir and reads it back."""
    import ml_collections

    from ssl_jax.text import tokenizer as tok

    text_cfg = ml_collections.ConfigDict({"tokenizer": "", "vocab_size": 64})
    first = tok.for_run(text_cfg, str(tmp_path), lambda: CAPTIONS)
    assert (tmp_path / tok.FILE_NAME).exists()
    ids = first.encode(CAPTIONS[:3], 32)
    assert ids.shape == (3, 32) and ids.dtype == np.int32
    assert first.decode(ids) == [c.lower() for c in CAPTIONS[:3]]
    length = int(np.sum(ids[0] != tok.PAD))
    assert ids[0, 0] == tok.BOS and ids[0, length - 1] == tok.EOS and np.all(ids[0, length:] == tok.PAD)
    cut = first.encode(CAPTIONS[:1], 4)
    assert cut[0, 0] == tok.BOS and cut[0, -1] == tok.EOS
    sticky = first.encode(CAPTIONS[:1], 32, sticky_eos=True)
    assert np.all(sticky[0, length - 1:] == tok.EOS)
    again = tok.for_run(text_cfg, str(tmp_path))  # no captions needed: read from the workdir
    np.testing.assert_array_equal(again.encode(CAPTIONS[:3], 32), ids)


# ----------------------------------------------------------------------------- text tower

def _tower(style, pool):
    from ssl_jax.models.text import TextTower

    return TextTower(vocab_size=64, max_len=8, width=32, depth=1, heads=2, out_dim=16, style=style, pool=pool)


def test_clip_text_tower_is_causal_and_pools_at_eot():
    """CLIP's tower reads the EOT token (the last non-PAD one), whose state sees only the tokens up to it
    (the causal mask): with PAD after EOT it equals the tower on the sequence cut after EOT, pooled at its
    last position. Without the mask the PADs would be attended to and the outputs would differ."""
    ids = jnp.asarray([[2, 10, 11, 12, 3, 0, 0, 0], [2, 13, 3, 0, 0, 0, 0, 0]], jnp.int32)
    clip, last = _tower("clip", "eot"), _tower("clip", "last")
    params = clip.init(jax.random.key(0), ids)
    out = clip.apply(params, ids)
    np.testing.assert_allclose(out[0], last.apply(params, ids[:1, :5])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], last.apply(params, ids[1:, :3])[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], clip.apply(params, ids.at[0, 2].set(30))[0])  # an earlier token matters


def test_siglip_text_tower_is_bidirectional_clip_causal():
    """Every position's final state (ln_final's output): SigLIP's (no mask) at position 1 changes when the
    token at position 5 does, CLIP's (causal) does not; 'last' and 'map' pooling give [B, out_dim]."""
    ids = jnp.asarray([[2, 10, 11, 12, 13, 14, 3, 3]], jnp.int32)
    later = ids.at[0, 5].set(20)

    def states(tower, params, x):
        _, found = tower.apply(params, x, capture_intermediates=lambda m, _: m.name == "ln_final",
                               mutable=["intermediates"])
        return np.asarray(found["intermediates"]["ln_final"]["__call__"][0])

    for style, pool, sees_later in (("siglip", "last", True), ("siglip", "map", True), ("clip", "eot", False)):
        tower = _tower(style, pool)
        params = tower.init(jax.random.key(0), ids)
        assert tower.apply(params, ids).shape == (1, 16)
        changed = not np.allclose(states(tower, params, ids)[0, 1], states(tower, params, later)[0, 1])
        assert changed == sees_later, (style, pool)


# ----------------------------------------------------------------------------- evaluation metrics

def test_retrieval_recall_matches_brute_force():
    """R@K both ways against a per-query sort in numpy (5 captions per image, ties impossible)."""
    from ssl_jax.eval.retrieval import recall_at_k

    rng = np.random.default_rng(3)
    images = _normalised(rng, 30, 6)
    owner = np.repeat(np.arange(30), 5)
    texts = _normalised(rng, 150, 6) + 0.8 * images[owner]  # correlated, so recalls are far from 0 and 1
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    got = recall_at_k(images, texts, owner)
    sims = images @ texts.T
    for k in (1, 5, 10):
        i2t = np.mean([np.any(owner[np.argsort(-sims[i])[:k]] == i) for i in range(30)])
        t2i = np.mean([owner[j] in np.argsort(-sims[:, j])[:k] for j in range(150)])
        assert got[f"i2t_r@{k}"] == pytest.approx(i2t) and got[f"t2i_r@{k}"] == pytest.approx(t2i)
    assert 0 < got["i2t_r@1"] < 1 and 0 < got["t2i_r@1"] < 1


def test_zero_shot_follows_clip_notebook():
    """`zeroshot_classifier` of openai/CLIP's prompt-engineering notebook: normalise each prompt embedding,
    average over templates, normalise; predict argmax of image @ weights."""
    from ssl_jax.eval import zero_shot

    assert len(zero_shot.CIFAR10_TEMPLATES) == 18 and len(zero_shot.CIFAR10_CLASSES) == 10
    rng = np.random.default_rng(4)
    prompts = rng.standard_normal((10, 18, 8)) * rng.uniform(0.5, 3, (10, 18, 1))  # unnormalised, unequal norms
    weights = []
    for c in range(10):
        e = prompts[c] / np.linalg.norm(prompts[c], axis=-1, keepdims=True)
        e = e.mean(axis=0)
        weights.append(e / np.linalg.norm(e))
    weights = np.stack(weights)
    np.testing.assert_allclose(zero_shot.class_embeddings(prompts), weights, rtol=1e-12)
    images = _normalised(rng, 50, 8)
    labels = rng.integers(0, 10, 50)
    want = np.mean(np.argmax(100.0 * images @ weights.T, axis=1) == labels)
    assert zero_shot.zero_shot_accuracy(images, weights, labels) == pytest.approx(want)


# ----------------------------------------------------------------------------- data

def _write_pairs(root, count=6):
    """`count` 16 px JPEGs with 2-3 captions each, as img2dataset files and as two webdataset shards."""
    import io
    import tarfile

    import tensorflow as tf

    (root / "files" / "train").mkdir(parents=True)
    (root / "tars" / "train").mkdir(parents=True)
    members = []
    for i in range(count):
        image = tf.io.encode_jpeg(tf.fill([16, 16, 3], tf.constant(i * 40, tf.uint8))).numpy()
        captions = "".join(f"caption {i} number {j}\n" for j in range(2 + i % 2)).encode()
        key = f"{i:09d}"
        (root / "files" / "train" / f"{key}.jpg").write_bytes(image)
        (root / "files" / "train" / f"{key}.txt").write_bytes(captions)
        members.append((key, image, captions))
    for shard, part in enumerate((members[:count // 2], members[count // 2:])):
        with tarfile.open(root / "tars" / "train" / f"{shard:05d}.tar", "w") as tar:
            for key, image, captions in part:
                for name, data in ((f"{key}.jpg", image), (f"{key}.txt", captions)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _data_config(data_dir):
    from ssl_jax import config_image_text as it

    c = it.use_smoke_image_text(__import__("configs.clip_vit_b32", fromlist=["x"]).flickr8k_config())
    c.dataset.data_dir = str(data_dir)
    c.dataset.train_split = "train"
    c.batch_size = 2
    c.augment.global_crops.size = 8
    c.text.max_len = 24
    c.text.tokenizer = ""
    c.text.vocab_size = 64
    return c


def test_image_text_batches_files_and_tars_same_deterministic_and_resumable(tmp_path):
    """Files and tar shards give the same batches; a batch depends on (seed, step) only (a run started at
    step 2 sees the uninterrupted run's batch 2); each image's caption is one of its own, drawn anew each epoch."""
    from ssl_jax.data import image_text
    from ssl_jax.text import tokenizer as tok

    _write_pairs(tmp_path)
    files, tars = _data_config(tmp_path / "files"), _data_config(tmp_path / "tars")
    first = [next(it) for it in [image_text.train_batches(files, 0, 3, 2, str(tmp_path / "w1"))] for _ in range(6)]
    from_tars = image_text.train_batches(tars, 0, 3, 2, str(tmp_path / "w1"))
    resumed = image_text.train_batches(files, 2, 3, 2, str(tmp_path / "w1"))
    np.testing.assert_array_equal(next(resumed)["text"], first[2]["text"])
    tokenizer = tok.for_run(files.text, str(tmp_path / "w1"))
    drawn = {}
    for step, batch in enumerate(first):
        assert batch["views"]["global"].shape == (2, 1, 8, 8, 3) and batch["text"].shape == (2, 24)
        other = next(from_tars)
        np.testing.assert_array_equal(other["text"], batch["text"])
        np.testing.assert_allclose(other["views"]["global"], batch["views"]["global"])
        for view, text in zip(batch["views"]["global"], tokenizer.decode(batch["text"])):
            # Image i is a flat grey of value 40 i: recover i from the normalised view.
            grey = (float(np.mean(view[0, ..., 0])) * files.augment.std[0] + files.augment.mean[0]) * 255
            image = round(grey / 40)
            assert text in {f"caption {image} number {j}" for j in range(2 + image % 2)}
            drawn.setdefault(image, []).append(text)
    assert sorted(drawn) == list(range(6))  # each epoch visits every image once
    assert any(len(set(texts)) > 1 for texts in drawn.values())  # captions drawn anew each epoch


def test_coco_captions_features_map_to_pairs():
    """tfds coco_captions' example dict (image bytes, captions/text) -> (image, captions)."""
    from ssl_jax.data.image_text import coco_example

    example = {"image": b"jpegbytes", "captions": {"text": np.asarray([b"a cat .", b"two dogs"], object),
                                                   "id": np.asarray([1, 2])}, "objects": {}}
    assert coco_example(example) == (b"jpegbytes", ("a cat .", "two dogs"))


# ----------------------------------------------------------------------------- LiT's locked tower

def test_lit_locked_tower_gets_no_gradient_no_optimiser_state_and_never_changes(monkeypatch):
    """LiT (8 devices): config.init_from loads the locked tower, and a source without it is an error
    (`init_from_required`); one real train step: the image tower lives outside params (so no gradient
    can reach it and the optimiser holds nothing for it) and is bit-identical after the step; the text
    tower and the temperature moved."""
    import importlib

    from flax import traverse_util

    from ssl_jax import init_from, train, tree_paths
    from ssl_jax.core.batch import example_batch
    from ssl_jax.errors import UserError

    config = importlib.import_module("configs.lit_vit_b16").get_config("smoke")
    config.text.vocab_size = 64
    config.optim.warmup_epochs = 0  # a nonzero learning rate at step 0
    run = train.setup(config, steps_per_epoch=1)
    state = train.create_state(config, run)
    assert "backbone" not in state.params and set(state.teacher) == {"backbone"}
    pretrained = {f"backbone/{k}": np.asarray(v) + 1.0 for k, v in
                  traverse_util.flatten_dict(jax.device_get(state.teacher["backbone"]), sep="/").items()}
    config.init_from = "pretrained.pth"
    for source, fails in (({}, True), (pretrained, False)):  # initialize expects a fresh state: the failing call first
        monkeypatch.setattr(init_from, "read_source", lambda path, source=source: init_from.Source(
            source, None, {}, {}, {}, "test"))
        if fails:
            with pytest.raises(UserError, match="teacher/backbone/"):
                init_from.initialize(config, state, log=lambda *_: None)
        else:
            state = init_from.initialize(config, state, log=lambda *_: None)
            loaded = traverse_util.flatten_dict(jax.device_get(state.teacher["backbone"]), sep="/")
            for k, v in loaded.items():
                np.testing.assert_array_equal(v, pretrained[f"backbone/{k}"])
    opt_leaves = [tree_paths.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert opt_leaves and not any("backbone" in name for name in opt_leaves)
    batch = example_batch(config.augment, config.batch_size, jax.random.key(1))
    batch["text"] = np.asarray(jax.random.randint(jax.random.key(2), (config.batch_size, config.text.max_len), 2, 64),
                               np.int32)
    before = jax.tree.map(np.asarray, (state.teacher, state.params))
    new_state, metrics = train.jit_step(config, run)(state, batch)
    assert float(metrics["nonfinite"]) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new_state.teacher), before[0])
    assert not np.allclose(np.asarray(new_state.params["t"]), before[1]["t"])
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(np.asarray(a), b), new_state.params["text"],
                                           before[1]["text"]))
    assert any(changed)


# ----------------------------------------------------------------------------- end to end

FLICKR8K = os.environ.get("FLICKR8K_DIR") or os.path.normpath(os.path.join(REPO, "..", "shared", "data", "flickr8k"))
IMAGE_TEXT_CONFIGS = ("clip_vit_b32", "siglip_vit_b16", "slip_vit_b16", "lit_vit_b16")


@pytest.fixture(scope="session")
def flickr8k_dir() -> str:
    if not os.path.isdir(os.path.join(FLICKR8K, "train")):
        pytest.skip(f"Flickr8k not found at {FLICKR8K} (set FLICKR8K_DIR)")
    return FLICKR8K


@pytest.mark.parametrize("name", smoke_params(IMAGE_TEXT_CONFIGS))
def test_smoke_preset_end_to_end(name, tfds_data_dir, flickr8k_dir, tmp_path):
    """`python -m ssl_jax.main --config=configs/<paper>.py:smoke` trains 6 steps on 64 Flickr8k pairs (its
    tokenizer trained and kept in the workdir), checkpoints and reports kNN on CIFAR-10; CLIP's run is then
    evaluated zero-shot on CIFAR-10 and by retrieval on Flickr8k's test images."""
    workdir = tmp_path / name
    result = run_config(os.path.join(REPO, "configs", f"{name}.py") + ":smoke", workdir,
                        f"--config.dataset.data_dir={flickr8k_dir}", "--config.eval.train_split=train[:400]",
                        "--config.eval.test_split=test[:200]")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "metrics" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    train_records = [r for r in records if r["split"] == "train"]
    assert train_records[-1]["step"] == 6 and all(math.isfinite(r["loss"]) for r in train_records)
    assert (workdir / "checkpoints" / "6").is_dir() and (workdir / "tokenizer.model").is_file()
    assert [r for r in records if r["split"] == "eval"][-1]["knn_top1@20"] > 0.1
    if name == "clip_vit_b32":
        from ssl_jax.evaluate import evaluate_checkpoint

        results = evaluate_checkpoint(str(workdir), ["zeroshot", "retrieval"])
        assert 0.0 <= results["zeroshot_top1"] <= 1.0
        assert 0.0 < results["i2t_r@10"] <= 1.0 and 0.0 < results["t2i_r@10"] <= 1.0


# ----------------------------------------------------------------------------- method composition

def simclr_loss_ref(q_a, q_b, tau):
    """facebookresearch/SLIP losses.py `SIMCLRLoss.forward`, float64: normalised q_a, q_b; logits_aa and
    logits_bb with the diagonal pushed to -1e9; (CE([ab, aa]) + CE([ba, bb])) / 2."""
    q_a = q_a / np.linalg.norm(q_a, axis=1, keepdims=True)
    q_b = q_b / np.linalg.norm(q_b, axis=1, keepdims=True)
    mask = np.eye(len(q_a)) * 1e9
    aa, bb = q_a @ q_a.T / tau - mask, q_b @ q_b.T / tau - mask
    ab, ba = q_a @ q_b.T / tau, q_b @ q_a.T / tau

    def ce(logits):
        logits = logits - logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(logp[np.arange(len(logits)), np.arange(len(logits))])
    return (ce(np.concatenate([ab, aa], 1)) + ce(np.concatenate([ba, bb], 1))) / 2


def test_slip_loss_is_clip_plus_scaled_simclr_on_the_right_views():
    """SLIP's loss from its smoke preset's method: CLIP's loss on view 0 and the caption (logit scale
    exp(log(1/0.07))), plus ssl_scale x SLIP's SIMCLRLoss on the MLP outputs of views 1 and 2, against
    float64 transcriptions fed with the towers' own outputs; ssl_scale and the temperature are read
    from the config, so another value would not match."""
    import importlib

    from ssl_jax.core.batch import example_batch
    from ssl_jax.methods.slip import SLIP

    config = importlib.import_module("configs.slip_vit_b16").get_config("smoke")
    config.method.ssl_scale = 0.7  # not 1, so a dropped or misplaced weight shows
    method = SLIP(config, 1)
    batch = example_batch(config.augment, 8, jax.random.key(5))
    batch["text"] = np.asarray(jax.random.randint(jax.random.key(6), (8, config.text.max_len), 2, 200), np.int32)
    variables = method.init(jax.random.key(7), batch)
    params, stats = variables.params, variables.model_state

    @jax.jit
    def loss_and_embeddings(params, stats):
        loss, out = method.loss(params, None, None, stats, batch, jax.random.key(8), 0)
        towers, views = method.towers, batch["views"]["global"]
        h, state = [], stats["ssl_mlp"]
        for v in (1, 2):  # one view at a time through the MLP's BatchNorm, as SLIP's image_mlp
            out_v, updated = method.ssl_mlp.apply(
                {"params": params["ssl_mlp"], "batch_stats": state},
                towers.image_features(params["backbone"], views[:, v]), train=True, mutable=["batch_stats"])
            h.append(out_v)
            state = updated["batch_stats"]
        return (loss, out.metrics["logit_scale"], towers.embed_images(params, views[:, 0]),
                towers.embed_texts(params, batch["text"]), *h)

    loss, scale, zimg, ztxt, h1, h2 = (np.asarray(x, np.float64) for x in loss_and_embeddings(params, stats))
    h = [h1, h2]
    want = clip_loss_ref(zimg, ztxt, 1 / 0.07) + 0.7 * simclr_loss_ref(h[0], h[1], config.method.ssl_temperature)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    np.testing.assert_allclose(float(scale), 1 / 0.07, rtol=1e-6)


def test_logit_scale_is_capped_at_the_configured_maximum():
    """CLIP's and SLIP's scale: exp(s) below the cap, exactly the cap above it (paper: at most 100)."""
    from ssl_jax.methods.clip import clipped_scale

    assert float(clipped_scale(jnp.float32(np.log(14.0)), 100.0)) == pytest.approx(14.0, rel=1e-6)
    assert float(clipped_scale(jnp.float32(6.0), 100.0)) == pytest.approx(100.0, rel=1e-6)
