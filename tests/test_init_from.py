"""`--config.init_from`: a fresh TrainState loaded from an official checkpoint or an ssl_jax run.

The official files are synthetic state dicts under the releases' own key names (DINO's full
checkpoint: `backbone.*` + `head.*` with the weight-normalised last layer; Hugging Face's
DINOv2 layout; MAE's decoder; torchvision's ResNet-50), saved as .safetensors (no torch). The
loaded model's features are compared with float64 numpy transcriptions of the PyTorch forward
passes (`test_convert.np_timm_vit`, DINO's `DINOHead.forward` below)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from conftest import make_smoke_config
from test_convert import mocov3_vit_state, np_timm_vit
from ssl_jax import init_from, train
from ssl_jax.convert.pytorch import convert_state_dict
from ssl_jax.errors import UserError
from ssl_jax.guards.checkpoint import Checkpointer

DIM, HEADS, PATCH = 16, 2, 8  # TINY_OVERRIDES' ViT at the smoke preset's 32 px crops: a 4 x 4 grid


def np_gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def np_dino_head(state, x, prefix="head."):
    """DINO's DINOHead.forward (vision_transformer.py), float64: mlp (Linear, GELU, Linear, GELU,
    Linear), F.normalize, then weight_norm(Linear): x @ (g * v / ||v||_row).T."""
    w = {k[len(prefix):]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith(prefix)}
    x = np.asarray(x, np.float64)
    for j in (0, 2, 4):
        x = x @ w[f"mlp.{j}.weight"].T + w[f"mlp.{j}.bias"]
        x = np_gelu(x) if j < 4 else x
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    v, g = w["last_layer.weight_v"], w["last_layer.weight_g"]
    return x @ (g * v / np.linalg.norm(v, axis=1, keepdims=True)).T


def dino_checkpoint(rng, out_dim=32, hidden=32, bottleneck=16):
    """DINO's checkpoint['teacher'] layout at the tiny size: `backbone.<timm key>` and `head.*`."""
    state = {f"backbone.{k}": v for k, v in mocov3_vit_state(rng, dim=DIM, patch=PATCH, grid=4).items()}
    for j, (out, inp) in zip((0, 2, 4), ((hidden, DIM), (hidden, hidden), (bottleneck, hidden))):
        state[f"head.mlp.{j}.weight"] = (rng.randn(out, inp) * 0.3).astype(np.float32)
        state[f"head.mlp.{j}.bias"] = (rng.randn(out) * 0.1).astype(np.float32)
    state["head.last_layer.weight_g"] = np.ones((out_dim, 1), np.float32)  # norm_last_layer: fixed at 1
    state["head.last_layer.weight_v"] = rng.randn(out_dim, bottleneck).astype(np.float32)
    return state


def fresh_state(config):
    run = train.setup(config)
    return run, train.create_state(config, run)


def test_dino_checkpoint_initialises_student_and_teacher(tmp_path):
    rng = np.random.RandomState(0)
    ckpt = dino_checkpoint(rng)
    path = str(tmp_path / "dino_teacher.safetensors")
    save_file(ckpt, path)
    config = make_smoke_config(init_from=path)
    run, state = fresh_state(config)
    logged = []
    state = init_from.initialize(config, state, logged.append)

    images = rng.randn(2, 32, 32, 3).astype(np.float32)
    backbone = {k[len("backbone."):]: v for k, v in ckpt.items() if k.startswith("backbone.")}
    want_cls = np_timm_vit(backbone, images.transpose(0, 3, 1, 2).astype(np.float64), HEADS)[:, 0]
    for tree in (state.params, state.teacher):  # the teacher starts as the student, as in main_dino.py
        cls = np.asarray(run.method.features(tree["backbone"], None, images))
        np.testing.assert_allclose(cls, want_cls, rtol=1e-4, atol=1e-4)
        logits = np.asarray(run.method.head.apply({"params": tree["head"]}, cls))
        np.testing.assert_allclose(logits, np_dino_head(ckpt, want_cls), rtol=1e-4, atol=1e-5)
    text = logged[0]
    total = len(traverse_util.flatten_dict(state.params))
    assert f"loaded {total} of {total}" in text
    assert "head.last_layer.weight_g: weight-norm g = 1, fixed here" in text


def test_partial_load_is_refused_unless_not_strict(tmp_path):
    rng = np.random.RandomState(1)
    backbone_only = {k: v for k, v in dino_checkpoint(rng).items() if k.startswith("backbone.")}
    path = str(tmp_path / "dino_backbone.safetensors")
    save_file(backbone_only, path)
    config = make_smoke_config(init_from=path)
    _, state = fresh_state(config)
    with pytest.raises(UserError, match=r"arrays not loaded: head/.*init_from_strict=False keeps"):
        init_from.initialize(config, state, lambda _: None)
    config.init_from_strict = False
    logged = []
    loaded = init_from.initialize(config, state, logged.append)
    assert "kept fresh: head/mlp/mlp_0/kernel (not in the source)" in logged[0]
    np.testing.assert_array_equal(loaded.params["head"]["mlp"]["mlp_0"]["kernel"],
                                  state.params["head"]["mlp"]["mlp_0"]["kernel"])
    np.testing.assert_array_equal(loaded.params["backbone"]["cls_token"], backbone_only["backbone.cls_token"])


def test_position_table_of_another_grid_is_resampled_and_bad_paths_are_one_line(tmp_path):
    rng = np.random.RandomState(2)
    ckpt = dino_checkpoint(rng)
    ckpt["backbone.pos_embed"] = rng.randn(1, 1 + 36, DIM).astype(np.float32)  # a 6 x 6 grid (48 px)
    path = str(tmp_path / "dino48.safetensors")
    save_file(ckpt, path)
    config = make_smoke_config(init_from=path)
    _, state = fresh_state(config)
    logged = []
    state = init_from.initialize(config, state, logged.append)
    assert "backbone/pos_embed: resampled (1, 37, 16) -> (1, 17, 16)" in logged[0]
    np.testing.assert_allclose(state.params["backbone"]["pos_embed"][0, 0], ckpt["backbone.pos_embed"][0, 0])
    config.init_from = str(tmp_path / "missing.bin")
    with pytest.raises(UserError, match="is neither an ssl_jax workdir"):
        init_from.initialize(config, state, print)


def hf_dinov2(timm_state):
    """Hugging Face's Dinov2Model names of a timm-layout DINOv2 state dict (transformers'
    convert_dinov2_to_hf.py: qkv split into query/key/value in that order, ls*.gamma ->
    layer_scale*.lambda1, norm -> layernorm; registers are embeddings.register_tokens)."""
    out = {}
    for key, value in timm_state.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            pre = f"encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.split(".")[-1]
                for part, chunk in zip(("query", "key", "value"), np.split(value, 3)):
                    out[f"{pre}attention.attention.{part}.{kind}"] = chunk
            else:
                rest = rest.replace("attn.proj", "attention.output.dense").replace("ls1.gamma", "layer_scale1.lambda1")
                out[pre + rest.replace("ls2.gamma", "layer_scale2.lambda1")] = value
        elif key.startswith("norm."):
            out["layernorm." + key[5:]] = value
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.split(".")[-1]] = value
        else:
            out["embeddings." + {"pos_embed": "position_embeddings"}.get(key, key)] = value
    return out


def test_hugging_face_dinov2_layout_converts_like_the_official_one():
    rng = np.random.RandomState(3)
    official = mocov3_vit_state(rng, dim=DIM, patch=PATCH, grid=4, depth=2)
    official.update({"blocks.0.ls1.gamma": rng.randn(DIM), "blocks.0.ls2.gamma": rng.randn(DIM),
                     "blocks.1.ls1.gamma": rng.randn(DIM), "blocks.1.ls2.gamma": rng.randn(DIM),
                     "register_tokens": rng.randn(1, 4, DIM), "mask_token": rng.randn(1, DIM)})
    want, got = convert_state_dict(official), convert_state_dict(hf_dinov2(official))
    assert sorted(want.params) == sorted(got.params)
    for path in want.params:
        np.testing.assert_array_equal(got.params[path], want.params[path], err_msg=path)
    assert got.params["backbone/mask_token"].shape == (1, 1, DIM)
    with pytest.raises(UserError, match="encoder.layer.0.attention.rotary.weight"):
        convert_state_dict({**hf_dinov2(official), "encoder.layer.0.attention.rotary.weight": np.zeros(2)})


def test_mae_decoder_and_resnet50_cover_every_parameter():
    """MAE's visualisation checkpoint (models_mae.py names) and torchvision's resnet50 state dict
    (the keys written out from torchvision/models/resnet.py's structure) fill exactly the flax
    modules' parameters and BatchNorm statistics, shapes included."""
    from ssl_jax.models.mim_heads import MAEDecoder
    from ssl_jax.models.resnet import resnet

    rng = np.random.RandomState(4)
    enc, dec, depth = 16, 8, 2
    mae = {k: v for k, v in mocov3_vit_state(rng, dim=enc, patch=PATCH, grid=4).items()}
    mae.update({"mask_token": rng.randn(1, 1, dec), "decoder_embed.weight": rng.randn(dec, enc),
                "decoder_embed.bias": rng.randn(dec), "decoder_pos_embed": np.zeros((1, 17, dec)),
                "decoder_norm.weight": rng.randn(dec), "decoder_norm.bias": rng.randn(dec),
                "decoder_pred.weight": rng.randn(PATCH * PATCH * 3, dec), "decoder_pred.bias": rng.randn(192)})
    for i in range(depth):
        for name, shape in (("norm1.weight", (dec,)), ("norm1.bias", (dec,)), ("attn.qkv.weight", (3 * dec, dec)),
                            ("attn.qkv.bias", (3 * dec,)), ("attn.proj.weight", (dec, dec)), ("attn.proj.bias", (dec,)),
                            ("norm2.weight", (dec,)), ("norm2.bias", (dec,)), ("mlp.fc1.weight", (4 * dec, dec)),
                            ("mlp.fc1.bias", (4 * dec,)), ("mlp.fc2.weight", (dec, 4 * dec)), ("mlp.fc2.bias", (dec,))):
            mae[f"decoder_blocks.{i}.{name}"] = rng.randn(*shape)
    mae = {k: np.asarray(v, np.float32) for k, v in mae.items()}
    converted = convert_state_dict(mae)
    decoder = MAEDecoder((4, 4), PATCH * PATCH * 3, dec, depth, 2)
    shapes = jax.eval_shape(decoder.init, jax.random.key(0), np.zeros((1, 5, enc)), np.zeros((1, 16), np.int32))
    want = {k: v.shape for k, v in traverse_util.flatten_dict(shapes["params"], sep="/").items()}
    got = {k[len("decoder/"):]: v.shape for k, v in converted.params.items() if k.startswith("decoder/")}
    assert got == want
    assert converted.skipped == {"decoder_pos_embed": "MAE's fixed sin-cos table, recomputed here"}
    np.testing.assert_array_equal(converted.params["decoder/decoder_embed/kernel"], mae["decoder_embed.weight"].T)

    width = 8
    torchvision = torchvision_resnet_shapes((3, 4, 6, 3), True, width)
    state = {k: np.asarray(rng.randn(*s), np.float32) for k, s in torchvision.items()}
    converted = convert_state_dict(state)
    # torch's Conv2d is a cross-correlation with weight [O, I, kh, kw]; flax's kernel is [kh, kw, I, O]
    weight, x = state["layer1.0.conv2.weight"].astype(np.float64), rng.randn(6, 7, width)
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(0, 1))  # [4, 5, I, 3, 3]
    ours = jax.lax.conv_general_dilated(x[None].astype(np.float32), converted.params["backbone/layer1_0/conv2/kernel"],
                                        (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    np.testing.assert_allclose(ours, np.einsum("yxiab,oiab->yxo", windows, weight), rtol=1e-4, atol=1e-4)
    variables = jax.eval_shape(resnet(50, width=width).init, jax.random.key(0), np.zeros((1, 32, 32, 3)))
    for collection, ours in (("params", converted.params), ("batch_stats", converted.model_state)):
        want = {k: v.shape for k, v in traverse_util.flatten_dict(variables[collection], sep="/").items()}
        assert {k[len("backbone/"):]: v.shape for k, v in ours.items()} == want, collection
    assert set(converted.skipped) == {"fc.weight", "fc.bias", "bn1.num_batches_tracked"}


def torchvision_resnet_shapes(stages, bottleneck: bool, width: int) -> dict[str, tuple]:
    """The state dict shapes of torchvision's ResNet (models/resnet.py: conv1, bn1, layerS.i.{convK, bnK,
    downsample.0 / .1 on each stage's first block where the shape changes}, fc) with 10 classes."""
    expansion = 4 if bottleneck else 1
    shapes = {"conv1.weight": (width, 3, 7, 7), "fc.weight": (10, 8 * width * expansion), "fc.bias": (10,)}
    bn = lambda name, c: {f"{name}.{s}": (c,) for s in ("weight", "bias", "running_mean", "running_var")}  # noqa
    shapes.update(bn("bn1", width))
    shapes["bn1.num_batches_tracked"] = ()
    inplanes = width
    for stage, blocks in enumerate(stages, start=1):
        planes = width * 2 ** (stage - 1)
        for b in range(blocks):
            pre = f"layer{stage}.{b}."
            convs = (((planes, inplanes, 1), (planes, planes, 3), (4 * planes, planes, 1)) if bottleneck
                     else ((planes, inplanes, 3), (planes, planes, 3)))
            for k, (o, i, size) in enumerate(convs, 1):
                shapes[f"{pre}conv{k}.weight"] = (o, i, size, size)
                shapes.update(bn(f"{pre}bn{k}", o))
            if b == 0 and (stage > 1 or inplanes != planes * expansion):
                shapes[f"{pre}downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                shapes.update(bn(f"{pre}downsample.1", planes * expansion))
            inplanes = planes * expansion
    return shapes


@pytest.fixture(scope="module")
def trained_run(tfds_data_dir, tmp_path_factory):
    """A tiny DINO run of 2 steps (its checkpoint at step 2), trained in this process."""
    config = make_smoke_config(num_epochs=1)
    config.steps_per_epoch = 2
    path = str(tmp_path_factory.mktemp("source_run") / "dino")
    train.train_and_evaluate(config, path)
    return path


@pytest.mark.parametrize("which", ["workdir", "step"])
def test_a_fresh_run_starts_from_an_ssl_jax_run(trained_run, which, tmp_path):
    """Through train.restore_or_create (the loop's own start): student, teacher and nothing else."""
    source = trained_run if which == "workdir" else f"{trained_run}/checkpoints/2"
    config = make_smoke_config(init_from=source)
    run = train.setup(config)
    state = train.restore_or_create(config, run, Checkpointer(str(tmp_path / "new"), 4, 2))
    from ssl_jax.eval.frozen import restore

    trained = restore(trained_run, 2).state
    assert int(state.step) == 0
    for ours, theirs in ((state.params, trained.params), (state.teacher, trained.teacher)):
        jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert not np.array_equal(trained.params["backbone"]["cls_token"], trained.teacher["backbone"]["cls_token"])
