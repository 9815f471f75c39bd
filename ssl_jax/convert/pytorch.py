"""Official PyTorch ViT checkpoints (DINO, DINOv2, MAE, MoCo v3) -> ssl_jax's VisionTransformer.

    params, model = convert_vit(load_state_dict("dino_deitsmall16_pretrain.pth"), num_heads=6)
    module = ssl_jax.models.vit.vit(**model)            # model: the matching ViT's arguments
    features = module.apply({"params": params}, images)  # images [B, H, W, 3], normalised, NHWC

Files are read without unpickling code: `.safetensors` with safetensors' numpy loader
(no torch needed), `.pth`/`.pt` with `torch.load(..., weights_only=True)` (torch is the
optional `[convert]` extra). Wrappers and prefixes of the releases are removed first: the
`model` / `teacher` / `state_dict` entries of training checkpoints and the `module.` /
`backbone.` prefixes (DINO's full checkpoints) or `module.base_encoder.` (MoCo v3's
`vit-s-300ep.pth.tar`, whose momentum encoder and predictor are dropped, as
`main_lincls.py` does). The name mapping (timm's names, which DINO, DINOv2, MAE and
MoCo v3 share; `i` is the block index):

| PyTorch key | ssl_jax parameter | transform |
|---|---|---|
| `cls_token` [1, 1, D] | `cls_token` | - |
| `pos_embed` [1, 1+N, D] | `pos_embed` | - ([CLS] slot first; N fixes `img_size`; fixed sin-cos tables too) |
| `register_tokens` [1, R, D] (DINOv2 with registers) | `register_tokens` | - |
| `patch_embed.proj.weight` [D, 3, p, p] | `patch_embed/kernel` [p*p*3, D] | (row, column, channel) order |
| `patch_embed.proj.bias` | `patch_embed/bias` | - |
| `blocks.i.norm1.weight` / `.bias` | `blocks_i/norm1/scale` / `bias` | - |
| `blocks.i.attn.qkv.weight` [3D, D] / `.bias` | `blocks_i/attn/qkv/kernel` [D, 3D] / `bias` | transpose |
| `blocks.i.attn.proj.weight` / `.bias` | `blocks_i/attn/proj/kernel` / `bias` | transpose |
| `blocks.i.ls1.gamma`, `blocks.i.ls2.gamma` (DINOv2) | `blocks_i/ls1/gamma`, `blocks_i/ls2/gamma` | - |
| `blocks.i.norm2.weight` / `.bias` | `blocks_i/norm2/scale` / `bias` | - |
| `blocks.i.mlp.fc1.weight` / `.bias` | `blocks_i/fc1/kernel` / `bias` | transpose |
| `blocks.i.mlp.fc2.weight` / `.bias` | `blocks_i/fc2/kernel` / `bias` | transpose |
| `norm.weight` / `.bias` | `norm/scale` / `bias` | - |

Not converted (named in `IGNORED`): classifier heads and MoCo v3's projector (`head.*`,
`fc_norm.*`), DINOv2's `mask_token` (used only in pre-training), MAE's decoder (`decoder_*`,
`mask_token`), MoCo v3's `momentum_encoder.*` and `predictor.*`. Any other key is an
error. The architecture is read off the shapes: D, depth, p, the position grid,
registers, LayerScale; the head count cannot be (qkv is [3D, D] whatever the split), so
the caller gives it: 6 for DINO's and DINOv2's ViT-S, 12 for MoCo v3's vit_small and
every ViT-B. At other input sizes the position embeddings
are interpolated bicubically by jax (DINO/DINOv2 use torch's bicubic, a slightly
different kernel): features match the PyTorch model exactly only at the native grid.
"""
from __future__ import annotations

import math
import re

import numpy as np

WRAPPERS = ("model", "teacher", "state_dict", "module")
PREFIXES = ("module.", "backbone.", "base_encoder.")
IGNORED = re.compile(r"^(head\.|head$|fc_norm\.|decoder_|mask_token$|dino_head\.|ibot_head\.|momentum_encoder\.|"
                     r"predictor\.)")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a `.safetensors` or `.pth`/`.pt` file as float32 numpy arrays, unwrapped."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        state = load_file(path)
    else:
        try:
            import torch
        except ImportError:
            raise ImportError("reading a .pth checkpoint needs torch: pip install -e '.[convert]' "
                              "(or convert it to .safetensors elsewhere)") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k: np.asarray(v.float().numpy() if hasattr(v, "numpy") else v, np.float32) for k, v in state.items()}


def strip_prefixes(state: dict) -> dict:
    """Removes DDP's `module.`, DINO's `backbone.` and MoCo v3's `base_encoder.` prefixes (a DINO
    teacher also holds `head.*`)."""
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            key = key[len(prefix):] if key.startswith(prefix) else key
        out[key] = value
    return out


def model_kwargs(state: dict, num_heads: int) -> dict:
    """Arguments of `ssl_jax.models.vit.vit` for the architecture these weights belong to
    (`num_heads`: the source model's head count, which the weights do not determine)."""
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the checkpoint's embed_dim {dim}")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    side = math.isqrt(state["pos_embed"].shape[1] - 1)
    return {"size": "custom", "embed_dim": dim, "depth": depth, "num_heads": num_heads,
            "patch_size": patch, "img_size": side * patch,
            "num_register_tokens": state["register_tokens"].shape[1] if "register_tokens" in state else 0,
            # the value only matters for initialisation: converted weights replace gamma
            "layerscale_init": 1e-5 if "blocks.0.ls1.gamma" in state else 0.0}


def _set(tree: dict, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def convert_vit(state: dict, num_heads: int) -> tuple[dict, dict]:
    """(flax params, `vit(...)` kwargs) of a DINO / DINOv2 / MAE / MoCo v3 / timm ViT state dict
    whose attention has `num_heads` heads."""
    state = strip_prefixes(state)
    kwargs = model_kwargs(state, num_heads)
    params: dict = {}
    unknown = []
    for key, value in state.items():
        if IGNORED.match(key):
            continue
        if key in ("cls_token", "pos_embed", "register_tokens"):
            _set(params, key, value)
        elif key == "patch_embed.proj.weight":  # [D, C, p, p] -> [(p, p, C), D], patchify's order
            _set(params, "patch_embed/kernel", value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0]))
        elif key == "patch_embed.proj.bias":
            _set(params, "patch_embed/bias", value)
        elif m := re.fullmatch(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|ls1|ls2)\."
                               r"(weight|bias|gamma)", key):
            block, module, kind = m.groups()
            module = {"attn.qkv": "attn/qkv", "attn.proj": "attn/proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}.get(
                module, module)
            if kind == "gamma":
                _set(params, f"blocks_{block}/{module}/gamma", value)
            elif module.startswith("norm"):
                _set(params, f"blocks_{block}/{module}/{'scale' if kind == 'weight' else 'bias'}", value)
            else:
                _set(params, f"blocks_{block}/{module}/{'kernel' if kind == 'weight' else 'bias'}",
                     value.T if kind == "weight" else value)
        elif key in ("norm.weight", "norm.bias"):
            _set(params, f"norm/{'scale' if key.endswith('weight') else 'bias'}", value)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) of the checkpoint have no ssl_jax ViT counterpart: "
                         f"{', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}; "
                         f"is it a ViT checkpoint of DINO, DINOv2, MAE, MoCo v3 or timm?")
    return params, kwargs
