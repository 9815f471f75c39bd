"""Official PyTorch ViT checkpoints -> ssl_jax's ViT.

MoCo v3 (no torch needed): a synthetic state dict under moco-v3's own key names
(`module.base_encoder.*`, `module.momentum_encoder.*`, `module.predictor.*`, vit_small's 12
heads of width 32) converts to the parameters whose features equal a float64 numpy
transcription of timm's `VisionTransformer.forward_features` run on the PyTorch layout.

The releases against timm (a suite that needs torch + timm, skipped with the reason when they
cannot be imported):

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

import jax
import numpy as np
import pytest
from scipy.special import erf

from ssl_jax.convert.pytorch import convert_vit, load_state_dict
from ssl_jax.errors import UserError
from ssl_jax.models.vit import vit
from conftest import NEEDS_TORCH_EXTRA

try:
    import torch
    import timm
except Exception as e:  # ImportError, or torchvision's RuntimeError beside a CPU-only torch
    torch = timm = None
    TIMM_MISSING = f"{NEEDS_TORCH_EXTRA} cannot be imported ({type(e).__name__}: {e}); see this file's docstring"


# ----------------------------------------------------------------------------- MoCo v3, numpy


def np_layer_norm(x, weight, bias, eps=1e-6):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def np_timm_vit(state, images, num_heads):
    """timm's VisionTransformer.forward_features (as MoCo v3's vits.py subclasses it) on a PyTorch
    state dict without prefixes, float64: images [B, 3, H, W] -> normed tokens [B, 1+N, D].
    Conv2d(k=p, stride=p) then flatten(2).transpose(1, 2); Linear is x @ W.T + b; Attention
    splits qkv as reshape(B, N, 3, heads, D // heads)."""
    w = {k: np.asarray(v, np.float64) for k, v in state.items()}
    conv = w["patch_embed.proj.weight"]  # [D, 3, p, p]
    dim, _, p, _ = conv.shape
    b, _, h, wd = images.shape
    patches = images.reshape(b, 3, h // p, p, wd // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, -1, 3 * p * p)
    x = patches @ conv.reshape(dim, -1).T + w["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(w["cls_token"], (b, 1, dim)), x], axis=1) + w["pos_embed"]
    n, hd = x.shape[1], dim // num_heads
    i = 0
    while f"blocks.{i}.norm1.weight" in w:
        pre = f"blocks.{i}."
        y = np_layer_norm(x, w[pre + "norm1.weight"], w[pre + "norm1.bias"])
        qkv = (y @ w[pre + "attn.qkv.weight"].T + w[pre + "attn.qkv.bias"]).reshape(b, n, 3, num_heads, hd)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        logits = q @ k.transpose(0, 1, 3, 2) * hd**-0.5
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, dim)
        x = x + y @ w[pre + "attn.proj.weight"].T + w[pre + "attn.proj.bias"]
        y = np_layer_norm(x, w[pre + "norm2.weight"], w[pre + "norm2.bias"])
        y = y @ w[pre + "mlp.fc1.weight"].T + w[pre + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = x + y @ w[pre + "mlp.fc2.weight"].T + w[pre + "mlp.fc2.bias"]
        i += 1
    return np_layer_norm(x, w["norm.weight"], w["norm.bias"])


def mocov3_vit_state(rng, dim=384, depth=1, patch=16, grid=2):
    """A vit_small-width base encoder's tensors under timm's names, every one random."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        for name, shape in (("norm1", (dim,)), ("norm2", (dim,))):
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = shape, shape
        for name, (out, inp) in (("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim)),
                                 ("mlp.fc1", (4 * dim, dim)), ("mlp.fc2", (dim, 4 * dim))):
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = (out, inp), (out,)
    state = {k: rng.randn(*s).astype(np.float32) * (0.2 if len(s) > 1 else 0.1) for k, s in shapes.items()}
    for key in state:
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            state[key] += 1.0
    return state


def test_mocov3_checkpoint_with_12_heads_converts_to_the_same_features():
    """moco-v3's checkpoint layout (main_moco.py saves `state_dict` of the DDP-wrapped MoCo_ViT):
    base encoder + projector `head.*`, momentum encoder, predictor. 12 heads of width 32."""
    rng = np.random.RandomState(0)
    base = mocov3_vit_state(rng)
    ckpt = {f"module.base_encoder.{k}": v for k, v in base.items()}
    ckpt.update({f"module.momentum_encoder.{k}": v + 1.0 for k, v in base.items()})
    ckpt.update({"module.base_encoder.head.0.weight": rng.randn(16, 384), "module.predictor.0.weight": rng.randn(8, 16),
                 "module.momentum_encoder.head.0.weight": rng.randn(16, 384)})
    params, kwargs = convert_vit(ckpt, num_heads=12)
    assert kwargs["num_heads"] == 12 and kwargs["embed_dim"] == 384 and kwargs["img_size"] == 32
    images = rng.randn(2, 32, 32, 3).astype(np.float32)
    ours = np.asarray(vit(**kwargs).apply({"params": params}, images, method="tokens"))
    want = np_timm_vit(base, images.transpose(0, 3, 1, 2).astype(np.float64), num_heads=12)
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # The head count matters: DINO's 64-wide split (6 heads) of the same weights is another model.
    assert not np.allclose(want, np_timm_vit(base, images.transpose(0, 3, 1, 2).astype(np.float64), num_heads=6),
                           atol=1e-3)


def test_convert_needs_a_head_count_that_divides_the_width():
    with pytest.raises(UserError, match="num_heads=7"):
        convert_vit(mocov3_vit_state(np.random.RandomState(0), dim=32, patch=4), num_heads=7)


# ----------------------------------------------------------------------------- releases, timm


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
    if timm is None:
        pytest.skip(TIMM_MISSING)
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

    params, model_kwargs = convert_vit(load_state_dict(path), num_heads=model.blocks[0].attn.num_heads)
    module = vit(**model_kwargs)
    images = rng.randn(2, size, size, 3).astype(np.float32)
    ours = np.asarray(jax.jit(lambda p, x: module.apply({"params": p}, x, method="tokens"))(params, images))
    with torch.no_grad():
        theirs = model.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()  # [CLS], registers, ...
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
