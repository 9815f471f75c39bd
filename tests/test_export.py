"""`python -m ssl_jax.export`: a ViT or ResNet backbone written in timm's naming, re-imported
exactly through `ssl_jax.convert`, loaded by timm (`strict=True`) to the same outputs (when timm
is importable: the `[bench]` extra), never half-written."""
from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import main_process
from conftest import NEEDS_TORCH_EXTRA
from test_convert import mocov3_vit_state
from test_init_from import torchvision_resnet_shapes
from ssl_jax import export
from ssl_jax.api import load
from ssl_jax.convert.pytorch import convert_state_dict, convert_vit, load_state_dict

DIM = 24  # vit_small's 6 heads of width 4


def official_file(tmp_path, registers: bool) -> str:
    """A DINO (or, with registers and LayerScale, DINOv2) ViT at 32 px, patch 8, as .safetensors."""
    rng = np.random.RandomState(int(registers))
    state = mocov3_vit_state(rng, dim=DIM, patch=8, grid=4, depth=2)
    if registers:
        state["register_tokens"] = rng.randn(1, 4, DIM).astype(np.float32)
        state.update({f"blocks.{i}.ls{j}.gamma": rng.randn(DIM).astype(np.float32) for i in range(2) for j in (1, 2)})
    path = str(tmp_path / f"official_{registers}.safetensors")
    save_file(state, path)
    return path


@pytest.mark.parametrize("registers", [False, True])
def test_export_round_trip_is_exact(tmp_path, registers):
    source = official_file(tmp_path, registers)
    out = str(tmp_path / "exported" / "model.safetensors")
    tensors = export.export(source, out, arch="vit_small", image_size=32)
    assert sorted(os.listdir(tmp_path / "exported")) == ["model.safetensors"]
    assert set(load_file(out)) == set(tensors)
    if registers:  # timm's vit_*_reg4_dinov2 layout
        assert "reg_token" in tensors and tensors["pos_embed"].shape == (1, 16, DIM)
    else:  # the official file's own names and values come back
        original = load_state_dict(source)
        assert set(tensors) == set(original)
        for key in original:
            np.testing.assert_array_equal(tensors[key], original[key], err_msg=key)
    images = np.random.RandomState(5).randint(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    want = load(source, arch="vit_small", image_size=32).embed(images, output="patch")
    reloaded = load(out, image_size=32)  # the architecture comes from the file's metadata
    np.testing.assert_allclose(reloaded.embed(images, output="patch"), want, rtol=0, atol=1e-6)


def resnet_file(tmp_path, stages, bottleneck: bool, width: int, stem: int = 7) -> str:
    """A torchvision-layout ResNet (with `fc` and `num_batches_tracked`) of random tensors as .safetensors."""
    rng = np.random.RandomState(len(stages) + stem)
    shapes = torchvision_resnet_shapes(stages, bottleneck, width)
    shapes["conv1.weight"] = (width, 3, stem, stem)
    state = {k: np.asarray(rng.rand(*s) + 0.5 if k.endswith("running_var") else rng.randn(*s), np.float32)
             for k, s in shapes.items()}
    path = str(tmp_path / f"resnet_{stem}.safetensors")
    save_file(state, path)
    return path


@pytest.mark.parametrize("depth, stem", [(50, 7), (18, 3)])
def test_resnet_export_round_trip_is_exact(tmp_path, depth, stem):
    """A ResNet-50 (ImageNet stem) and a CIFAR-stem ResNet-18 come back under the file's own names and
    values, less the classifier and BatchNorm's step counter; ssl_jax.load rebuilds the same network."""
    stages, bottleneck = {50: ((3, 4, 6, 3), True), 18: ((2, 2, 2, 2), False)}[depth]
    source = resnet_file(tmp_path, stages, bottleneck, width=4, stem=stem)
    out = str(tmp_path / "exported.safetensors")
    tensors = export.export(source, out, image_size=32)
    original = {k: v for k, v in load_state_dict(source).items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(tensors) == set(original) == set(load_file(out))
    for key in original:
        np.testing.assert_array_equal(tensors[key], original[key], err_msg=key)
    converted = convert_state_dict(load_state_dict(out))
    assert not converted.skipped and len(converted.params) + len(converted.model_state) == len(original)
    reloaded, first = load(out), load(source, image_size=32)
    assert reloaded.arch == f"resnet{depth}" and reloaded.module.cifar_stem == (stem == 3)
    assert reloaded.preprocess == first.preprocess  # the file records it: no image_size needed
    import jax

    jax.tree.map(np.testing.assert_array_equal, reloaded.variables, first.variables)


def test_resnet_variables_go_through_the_converter_unchanged():
    """Flax ResNet variables -> timm names -> `ssl_jax.convert` gives every array back, bit for bit."""
    import jax
    from flax import traverse_util

    from ssl_jax.models.resnet import resnet

    rng = np.random.RandomState(0)
    shapes = jax.eval_shape(resnet(10, width=4, cifar_stem=True).init, jax.random.key(0), np.zeros((1, 8, 8, 3)))
    variables = jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), shapes)
    tensors = export.resnet_state_dict(variables)
    assert "layer2.0.downsample.0.weight" in tensors and tensors["conv1.weight"].shape == (4, 3, 3, 3)
    converted = convert_state_dict(tensors)
    for collection, flat in (("params", converted.params), ("batch_stats", converted.model_state)):
        want = traverse_util.flatten_dict(variables[collection], sep="/")
        assert set(flat) == {f"backbone/{k}" for k in want}
        for key, value in want.items():
            np.testing.assert_array_equal(flat[f"backbone/{key}"], value, err_msg=key)


def test_an_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    import safetensors.numpy

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        export.export(official_file(tmp_path, False), str(tmp_path / "out" / "model.safetensors"), arch="vit_small")
    assert os.listdir(tmp_path / "out") == []


def test_export_command_line(tmp_path):
    out = tmp_path / "m.safetensors"
    proc = main_process.run([f"--checkpoint={official_file(tmp_path, False)}", f"--out={out}", "--arch=vit_small"],
                            "ssl_jax.export", timeout=300)
    assert proc.returncode == 0 and "in timm's naming" in proc.stdout, proc.stderr[-2000:]
    params, kwargs = convert_vit(load_state_dict(str(out)), num_heads=6)
    assert kwargs["depth"] == 2 and kwargs["img_size"] == 32
    bad = main_process.run([f"--checkpoint={official_file(tmp_path, False)}", f"--out={tmp_path / 'x.safetensors'}"],
                           "ssl_jax.export", timeout=300)
    assert bad.returncode == 1 and "pass arch=" in bad.stderr and not (tmp_path / "x.safetensors").exists()


def test_timm_loads_the_export_to_the_same_outputs(tmp_path):
    try:
        import timm
        import torch
    except Exception as e:  # ImportError, or torchvision's RuntimeError beside a CPU-only torch
        pytest.skip(f"{NEEDS_TORCH_EXTRA} cannot be imported ({type(e).__name__}: {e})")
    out = str(tmp_path / "model.safetensors")
    export.export(official_file(tmp_path, True), out, arch="vit_small", image_size=32)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=DIM, depth=2, num_heads=6, num_classes=0, reg_tokens=4,
        no_embed_class=True, init_values=1.0).eval()
    from safetensors.torch import load_file as load_torch

    model.load_state_dict(load_torch(out), strict=True)
    images = np.random.RandomState(6).randint(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ours = load(out, image_size=32)
    x = ours.prepare(images)
    with torch.no_grad():
        theirs = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours.embed(images, output="patch"), theirs[:, 5:], rtol=1e-4, atol=1e-4)


def test_timm_resnet50_loads_the_export_to_the_same_outputs(tmp_path):
    """timm's resnet50 with random weights and BatchNorm statistics, saved as .pth (torchvision's layout,
    with num_batches_tracked), exported, loaded strictly into a fresh timm resnet50: the same pooled
    features as the original model and as ssl_jax.load(out)."""
    try:
        import timm
        import torch
    except Exception as e:  # ImportError, or torchvision's RuntimeError beside a CPU-only torch
        pytest.skip(f"{NEEDS_TORCH_EXTRA} cannot be imported ({type(e).__name__}: {e})")
    from safetensors.torch import load_file as load_torch

    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif key.endswith(("running_mean", "bias")) or (key.endswith("weight") and tensor.ndim == 1):
                tensor.copy_(torch.randn_like(tensor) * 0.1 + (1.0 if key.endswith("weight") else 0.0))
    source, out = str(tmp_path / "resnet50.pth"), str(tmp_path / "resnet50.safetensors")
    torch.save(model.state_dict(), source)
    export.export(source, out, image_size=64)
    fresh = timm.create_model("resnet50", pretrained=False, num_classes=0).eval()
    fresh.load_state_dict(load_torch(out), strict=True)
    ours = load(out)
    images = np.random.RandomState(7).randint(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(ours.prepare(images)).permute(0, 3, 1, 2)
    with torch.no_grad():
        theirs, original = fresh(x).numpy(), model(x).numpy()
    np.testing.assert_array_equal(theirs, original)
    np.testing.assert_allclose(ours.embed(images), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
