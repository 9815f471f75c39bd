"""Official PyTorch ViT checkpoints -> ssl_jax's ViT, checked against timm (a suite that needs
torch + timm, skipped with the reason when they cannot be imported).

For each release (DINO ViT-S/16 and ViT-B/16, DINOv2 ViT-S/14 with and without registers,
MAE ViT-B/16) the corresponding timm model is built with random weights (every tensor
redrawn, so LayerScale and the norms are far from their init), its state dict is written in
the release's own layout and format (DINO's full training checkpoint with `teacher` /
`backbone.` and a head; DINOv2's `register_tokens`, [CLS] position slot and `mask_token`;
MAE's visualisation checkpoint with its decoder), converted with `ssl_jax.convert.pytorch`
and run by ssl_jax's ViT: its [CLS] and patch tokens after the final norm equal timm's
`forward_features` on random images to float32 tolerance.

Run it with torch and timm importable: `pip install -e '.[bench]'` (torch 2.14.1 +
torchvision 0.29.1 + timm, 5.5 GB on x86_64), then `python -m pytest -q tests/test_convert.py`.
timm imports torchvision, and PyPI's torchvision does not import beside the CPU build
torch==2.13.0 of the `[convert]` extra, so with `[convert]` alone this file is skipped.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[convert]')")
try:
    import timm
except Exception as e:  # ImportError, or torchvision's RuntimeError beside a CPU-only torch
    pytest.skip(f"timm cannot be imported ({type(e).__name__}: {e}); see this file's docstring", allow_module_level=True)

import jax  # noqa: E402

from ssl_jax.convert.pytorch import convert_vit, load_state_dict  # noqa: E402
from ssl_jax.models.vit import vit  # noqa: E402


def dino_full_checkpoint(state, rng):
    """DINO's checkpoint.pth layout: {'teacher': {'backbone.<key>': ..., 'head.<key>': ...}, 'student': ...}."""
    teacher = {f"backbone.{k}": v for k, v in state.items()}
    teacher["head.last_layer.weight_v"] = torch.from_numpy(rng.randn(16, 8).astype(np.float32))
    return {"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}, "epoch": 100}


def dinov2_layout(state, rng):
    """DINOv2's hub layout from timm's (the inverse of timm's `_convert_dinov2`): registers are
    `register_tokens`, and the position embedding has a [CLS] slot that timm folded into cls_token."""
    out = {k: v for k, v in state.items()}
    out["mask_token"] = torch.zeros_like(state["cls_token"])
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        cls_pos = torch.from_numpy(rng.randn(*state["cls_token"].shape).astype(np.float32))
        out["cls_token"] = state["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    return out


def mae_visualize_checkpoint(state, rng):
    """MAE's mae_visualize_vit_base.pth layout: {'model': encoder + decoder_* + mask_token}."""
    extra = {"mask_token": (1, 1, 512), "decoder_embed.weight": (512, 768), "decoder_pos_embed": (1, 197, 512),
             "decoder_blocks.0.attn.qkv.weight": (1536, 512), "decoder_pred.weight": (768, 512)}
    return {"model": {**state, **{k: torch.from_numpy(rng.randn(*s).astype(np.float32)) for k, s in extra.items()}}}


CASES = {
    # release: (timm model, timm kwargs, image size, layout of the release's file, file suffix)
    "dino_vits16": ("vit_small_patch16_224", {}, 224, dino_full_checkpoint, ".pth"),
    "dino_vitb16": ("vit_base_patch16_224", {}, 224, lambda s, r: s, ".pth"),
    # DINOv2 is released at 518 px (37 x 37 positions); 224 px gives the same names at a 16 x 16 grid.
    "dinov2_vits14": ("vit_small_patch14_dinov2", {"img_size": 224}, 224, dinov2_layout, ".pth"),
    "dinov2_vits14_reg4": ("vit_small_patch14_reg4_dinov2", {"img_size": 224}, 224, dinov2_layout, ".safetensors"),
    "mae_vitb16": ("vit_base_patch16_224", {}, 224, mae_visualize_checkpoint, ".pth"),
}


@pytest.mark.parametrize("release", sorted(CASES))
def test_converted_checkpoint_matches_timm(release, tmp_path):
    name, kwargs, size, layout, suffix = CASES[release]
    torch.manual_seed(0)
    rng = np.random.RandomState(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            ones = key.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".gamma"))
            p.copy_(torch.randn_like(p) * (0.1 if ones else 0.05) + (1.0 if ones else 0.0))
    state = layout({k: v.clone() for k, v in model.state_dict().items()}, rng)
    if release.startswith("dinov2"):  # our inverse layout is what timm's own loader maps back
        from timm.models.vision_transformer import checkpoint_filter_fn

        mapped = checkpoint_filter_fn(dict(state), model)
        assert all(torch.allclose(mapped[k], v, atol=1e-6) for k, v in model.state_dict().items())
    path = str(tmp_path / f"{release}{suffix}")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)

    params, model_kwargs = convert_vit(load_state_dict(path))
    module = vit(**model_kwargs)
    images = rng.randn(2, size, size, 3).astype(np.float32)
    ours = np.asarray(jax.jit(lambda p, x: module.apply({"params": p}, x, return_tokens=True))(params, images))
    with torch.no_grad():
        theirs = model.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    prefix = model.num_prefix_tokens
    theirs = np.concatenate([theirs[:, :1], theirs[:, prefix:]], axis=1)  # [CLS] + patches (registers dropped)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
