"""Official PyTorch checkpoints (DINO, DINOv2, iBOT, MAE, MoCo v3, timm, torchvision ResNet,
Hugging Face ViT / DINOv2) -> ssl_jax parameters.

    params, model = convert_vit(load_state_dict("dino_deitsmall16_pretrain.pth"), num_heads=6)
    module = ssl_jax.models.vit.vit(**model)            # model: the matching ViT's arguments
    features = module.apply({"params": params}, images)  # images [B, H, W, 3], normalised, NHWC

    converted = convert_state_dict(load_state_dict(path))   # every tensor, heads and decoder too
    converted.params["head/last_layer/v"], converted.model_state["backbone/bn1/mean"], converted.skipped

Files are read without unpickling code: `.safetensors` with safetensors' numpy loader
(no torch needed, the `[weights]` extra), `.pth`/`.pt` with `torch.load(..., weights_only=True)`
(torch is the optional `[convert]` extra). Wrappers and prefixes of the releases are removed
first: the `model` / `teacher` / `state_dict` entries of training checkpoints and the
`module.` / `backbone.` prefixes (DINO's and iBOT's full checkpoints) or `module.base_encoder.`
(MoCo v3's `vit-s-300ep.pth.tar`, whose momentum encoder and predictor are dropped, as
`main_lincls.py` does). A Hugging Face layout is first renamed to timm's (`names.hf_to_timm`).
The name mapping is `names.py`'s table; tensors without a counterpart on purpose (classifiers,
MoCo v3's projector, MAE's fixed decoder position table, BatchNorm's step counter) are listed
in `Converted.skipped` with the reason. Any other key is an error naming it.

For `convert_vit` the architecture is read off the shapes: D, depth, p, the position grid,
registers, LayerScale; the head count cannot be (qkv is [3D, D] whatever the split), so
the caller gives it: 6 for DINO's and DINOv2's ViT-S, 12 for MoCo v3's vit_small and
every ViT-B. timm's `no_embed_class` layout (a position table without the [CLS] slot, as its
DINOv2-with-registers models) gets a zero [CLS] slot, the same function. At other input sizes
the position embeddings are interpolated bicubically by jax (DINO/DINOv2 use torch's bicubic,
a slightly different kernel): features match the PyTorch model exactly only at the native grid.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from ssl_jax.convert import names
from ssl_jax.errors import UserError

WRAPPERS = ("model", "teacher", "state_dict", "module")
PREFIXES = ("module.", "backbone.", "base_encoder.")


class Converted(NamedTuple):
    """A state dict under ssl_jax's names: `params` and `model_state` map "/"-paths from the
    method's tree root ("backbone/blocks_0/fc1/kernel") to arrays; `sources` maps each path to
    its PyTorch key; `skipped` maps PyTorch keys converted on purpose to nothing to the reason."""

    params: dict[str, np.ndarray]
    model_state: dict[str, np.ndarray]
    sources: dict[str, str]
    skipped: dict[str, str]


def load_state_dict(path) -> dict[str, np.ndarray]:
    """The tensors of a `.safetensors` or `.pth`/`.pt` file as float32 numpy arrays, unwrapped."""
    path = str(path)
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise UserError("reading a .safetensors file needs safetensors: pip install 'ssl_jax[weights]'") from None
        state = load_file(path)
    else:
        try:
            import torch
        except ImportError:
            raise UserError(f"reading {path} needs torch: pip install 'ssl_jax[convert]' (or convert it to "
                            f".safetensors elsewhere)") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k: np.asarray(v.float().numpy() if hasattr(v, "numpy") else v, np.float32) for k, v in state.items()
            if hasattr(v, "shape")}


def strip_prefixes(state: dict) -> dict:
    """Removes DDP's `module.`, DINO's `backbone.` and MoCo v3's `base_encoder.` prefixes (a DINO
    teacher also holds `head.*`)."""
    return {names.strip(key, PREFIXES): value for key, value in state.items()}


def convert_state_dict(state: dict) -> Converted:
    """Every tensor of an official state dict under ssl_jax's names (`Converted`); an unknown
    name is a UserError naming it."""
    state = strip_prefixes(state)
    if names.is_hf_layout(state):
        state = names.hf_to_timm(state)
    has_decoder = any(k.startswith("decoder_") for k in state)
    head_layers = names.head_linear_layers(state)
    out = Converted({}, {}, {}, {})
    unknown = []
    for key, value in state.items():
        try:
            collection, path, array = names.ssl_name(key, value, has_decoder, head_layers)
        except KeyError:
            unknown.append(key)
            continue
        if collection is None:
            out.skipped[key] = path
        else:
            getattr(out, collection)[path] = np.asarray(array, np.float32)
            out.sources[path] = key
    if unknown:
        raise UserError(f"{len(unknown)} key(s) of the checkpoint have no ssl_jax counterpart: "
                        f"{', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}; is it a DINO, "
                        f"DINOv2, iBOT, MAE, MoCo v3, timm or Hugging Face ViT, or a torchvision ResNet?")
    pos = out.params.get("backbone/pos_embed")
    if pos is not None and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:  # timm no_embed_class: no [CLS] slot
        out.params["backbone/pos_embed"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def model_kwargs(params: dict, num_heads: int) -> dict:
    """Arguments of `ssl_jax.models.vit.vit` for the ViT these (flax) backbone params belong to
    (`num_heads`: the source model's head count, which the weights do not determine)."""
    patch_dim, dim = params["patch_embed"]["kernel"].shape
    if num_heads < 1 or dim % num_heads:
        raise UserError(f"num_heads={num_heads} does not divide the checkpoint's embed_dim {dim}")
    depth = sum(1 for name in params if re.fullmatch(r"blocks_\d+", name))
    patch = math.isqrt(patch_dim // 3)
    side = math.isqrt(params["pos_embed"].shape[1] - 1)
    return {"size": "custom", "embed_dim": dim, "depth": depth, "num_heads": num_heads,
            "patch_size": patch, "img_size": side * patch,
            "num_register_tokens": params["register_tokens"].shape[1] if "register_tokens" in params else 0,
            # the value only matters for initialisation: converted weights replace gamma
            "layerscale_init": 1e-5 if "gamma" in params["blocks_0"].get("ls1", {}) else 0.0}


def convert_vit(state: dict, num_heads: int) -> tuple[dict, dict]:
    """(flax backbone params, `vit(...)` kwargs) of a DINO / DINOv2 / iBOT / MAE / MoCo v3 / timm /
    Hugging Face ViT state dict whose attention has `num_heads` heads (heads, decoder and
    DINOv2's pre-training mask token are left out)."""
    converted = convert_state_dict(state)
    backbone = {path[len("backbone/"):]: value for path, value in converted.params.items()
                if path.startswith("backbone/") and path != "backbone/mask_token"}
    if "patch_embed/kernel" not in backbone:
        raise UserError("the checkpoint holds no ViT backbone (no patch_embed.proj.weight)")
    params = unflatten(backbone)
    return params, model_kwargs(params, num_heads)
