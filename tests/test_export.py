"""`python -m ssl_jax.export`: a backbone written in timm's naming, re-imported exactly, loaded by
timm to the same outputs (when timm is importable), never half-written."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import NEEDS_TORCH_EXTRA, REPO
from test_convert import mocov3_vit_state
from ssl_jax import export
from ssl_jax.api import load
from ssl_jax.convert.pytorch import convert_vit, load_state_dict

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
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.export", f"--checkpoint={official_file(tmp_path, False)}",
                           f"--out={out}", "--arch=vit_small"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "in timm's naming" in proc.stdout, proc.stderr[-2000:]
    params, kwargs = convert_vit(load_state_dict(str(out)), num_heads=6)
    assert kwargs["depth"] == 2 and kwargs["img_size"] == 32
    bad = subprocess.run([sys.executable, "-m", "ssl_jax.export", f"--checkpoint={official_file(tmp_path, False)}",
                          f"--out={tmp_path / 'x.safetensors'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
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
