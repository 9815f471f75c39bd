"""PyTorch tensor names -> ssl_jax parameter paths, one rule per layout.

`ssl_name(key, value, has_decoder)` maps one tensor of an (unwrapped, unprefixed) state dict
to `(collection, path, array)`: collection "params" or "model_state" (BatchNorm running
statistics), path "/"-separated from the method's tree root ("backbone/blocks_0/fc1/kernel",
"head/last_layer/v", "decoder/decoder_pred/bias"), the array in flax's layout. It returns
`(None, reason, None)` for tensors that have no counterpart on purpose, and raises KeyError
for unknown names (the caller turns that into one line naming the key).

Layouts (sources: timm `vision_transformer.py` names, which DINO, DINOv2, iBOT, MAE and
MoCo v3 share; DINO `vision_transformer.py` `DINOHead`; iBOT `models/head.py` `iBOTHead`;
MAE `models_mae.py` `MaskedAutoencoderViT`; torchvision `models/resnet.py`; Hugging Face
`transformers` `modeling_vit.py` / `modeling_dinov2.py`, translated to timm's names first by
`hf_to_timm`):

| PyTorch | ssl_jax | transform |
|---|---|---|
| ViT `patch_embed.proj.weight` [D, 3, p, p] | `backbone/patch_embed/kernel` [p*p*3, D] | (row, column, channel) order |
| ViT `blocks.i.<norm1,attn.qkv,attn.proj,ls1,norm2,mlp.fc1,mlp.fc2,ls2>` | `backbone/blocks_i/...` | Linear: transpose |
| ViT `cls_token`, `pos_embed`, `register_tokens` / timm `reg_token`, `norm.*` | `backbone/...` | - |
| `mask_token` (DINOv2 [1, D], HF ViT) | `backbone/mask_token` [1, 1, D] | reshape (MAE's is the decoder's) |
| `<head>.mlp.<j>.weight` (j-th Linear) | `<head>/mlp/mlp_<j>/kernel` | transpose |
| `<head>.last_layer[2].weight_v` [K, d] / `.weight_g` [K, 1] | `<head>/last_layer[2]/v` [d, K] / `g` [1, K] | transpose |
| MAE `decoder_embed`, `decoder_blocks.i.*`, `decoder_norm`, `decoder_pred`, `mask_token` | `decoder/...` (`decoder_blocks_norm`) | as the ViT's |
| ResNet `conv1.weight`, `layerS.i.convK.weight` [O, I, k, k] | `backbone/conv1/kernel`, `backbone/layerS_i/convK/kernel` [k, k, I, O] | transpose |
| ResNet `bn*.weight` / `bias` / `running_mean` / `running_var` | params `scale` / `bias`, model_state `mean` / `var` | - |
| ResNet `layerS.i.downsample.0` / `.1` | `downsample_conv` / `downsample_bn` | as above |

`<head>` is `head` (DINO, iBOT), `dino_head` or `ibot_head` (DINOv2).
"""
from __future__ import annotations

import re

import numpy as np

IGNORED = {
    r"head\.(weight|bias)|fc_norm\..*|head\.\d+\..*": "classifier / projector head (not a DINO-style head)",
    r"fc\.(weight|bias)": "ResNet classifier",
    r"fc\.\d+\..*": "projector in place of the ResNet classifier (MoCo v3, BYOL-style)",
    r"momentum_encoder\..*|predictor\..*": "MoCo v3 momentum encoder / predictor (dropped, as main_lincls.py)",
    r"decoder_pos_embed": "MAE's fixed sin-cos table, recomputed here",
    r".*num_batches_tracked": "BatchNorm's step counter (flax uses a fixed momentum)",
    r"pooler\..*|classifier\..*": "Hugging Face pooler / classifier",
}
_IGNORED = re.compile("|".join(f"(?:{p})" for p in IGNORED))

VIT_BLOCK = re.compile(r"(?:blocks|decoder_blocks)\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|ls1|ls2)"
                       r"\.(weight|bias|gamma)")
HEAD = re.compile(r"(head|dino_head|ibot_head)\.(?:mlp\.(?:(\d+)\.)?(weight|bias)|(last_layer2?)\.(weight_g|weight_v|"
                  r"parametrizations\.weight\.original0|parametrizations\.weight\.original1))")
RESNET = re.compile(r"(?:layer(\d)\.(\d+)\.)?(conv\d|bn\d|downsample\.0|downsample\.1)\."
                    r"(weight|bias|running_mean|running_var)")
BN_NAMES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("model_state", "mean"),
            "running_var": ("model_state", "var")}


def strip(key: str, prefixes) -> str:
    """`key` without any of `prefixes` at its start (each removed once, in order)."""
    for prefix in prefixes:
        key = key[len(prefix):] if key.startswith(prefix) else key
    return key


def ignored_reason(key: str) -> str | None:
    """Why this tensor is deliberately not converted, or None."""
    if not _IGNORED.fullmatch(key):
        return None
    return next(reason for pattern, reason in IGNORED.items() if re.fullmatch(pattern, key))


def linear_or_norm(module: str, kind: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """(leaf path, array) of a torch Linear / LayerNorm / LayerScale tensor under flax's names."""
    if kind == "gamma":
        return f"{module}/gamma", value
    if module.startswith("norm") or module.endswith("norm"):
        return f"{module}/{'scale' if kind == 'weight' else 'bias'}", value
    return f"{module}/{'kernel' if kind == 'weight' else 'bias'}", value.T if kind == "weight" else value


def vit_block(key: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    """`blocks.i.*` (encoder) or `decoder_blocks.i.*` (MAE) -> (`blocks_i/...` or `decoder_blocks_i/...`, array)."""
    m = VIT_BLOCK.fullmatch(key)
    if not m:
        return None
    block, module, kind = m.groups()
    module = {"attn.qkv": "attn/qkv", "attn.proj": "attn/proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}.get(module, module)
    path, value = linear_or_norm(module, kind, value)
    return f"{key.split('.')[0]}_{block}/{path}", value


def ssl_name(key: str, value: np.ndarray, has_decoder: bool, head_layers: dict) -> tuple:
    """(collection, path, array) of one tensor, (None, reason, None) if deliberately skipped.
    `head_layers`: {head name: sorted indices of its Linear layers} (`<head>.mlp.<j>` -> mlp_<j'>)."""
    if (reason := ignored_reason(key)) is not None:
        return None, reason, None
    if key in ("cls_token", "pos_embed", "register_tokens", "reg_token"):
        return "params", "backbone/" + {"reg_token": "register_tokens"}.get(key, key), value
    if key == "mask_token":
        return "params", ("decoder/mask_token" if has_decoder else "backbone/mask_token"), value.reshape(1, 1, -1)
    if key == "patch_embed.proj.weight":  # [D, C, p, p] -> [(p, p, C), D], patchify's order
        return "params", "backbone/patch_embed/kernel", value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
    if key == "patch_embed.proj.bias":
        return "params", "backbone/patch_embed/bias", value
    if block := vit_block(key, value):
        return "params", ("decoder/" if key.startswith("decoder_") else "backbone/") + block[0], block[1]
    if m := re.fullmatch(r"(norm|decoder_norm|decoder_embed|decoder_pred)\.(weight|bias)", key):
        module, kind = m.groups()
        path, value = linear_or_norm({"decoder_norm": "decoder_blocks_norm"}.get(module, module), kind, value)
        return "params", ("backbone/" if module == "norm" else "decoder/") + path, value
    if m := HEAD.fullmatch(key):
        head, index, kind, last, wn = m.groups()
        if last is None:
            j = head_layers[head].index(int(index or 0))
            path, value = linear_or_norm(f"mlp/mlp_{j}", kind, value)
            return "params", f"{head}/{path}", value
        # weight_g [K, 1] (original0), weight_v [K, d] (original1): both transposed to flax's [., K]
        leaf = "g" if wn in ("weight_g", "parametrizations.weight.original0") else "v"
        return "params", f"{head}/{last}/{leaf}", value.reshape(value.shape[0], -1).T
    if m := RESNET.fullmatch(key):
        stage, index, module, kind = m.groups()
        module = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(module, module)
        prefix = f"backbone/layer{stage}_{index}/" if stage else "backbone/"
        if "conv" in module:
            if kind != "weight":
                raise KeyError(key)
            return "params", f"{prefix}{module}/kernel", value.transpose(2, 3, 1, 0)  # [O, I, k, k] -> [k, k, I, O]
        collection, leaf = BN_NAMES[kind]
        return collection, f"{prefix}{module}/{leaf}", value
    raise KeyError(key)


def head_linear_layers(state: dict) -> dict[str, list[int]]:
    """{head name: sorted indices j of its `<head>.mlp.<j>.weight` Linear layers} (GELU / BatchNorm
    entries of the nn.Sequential have no 2-D weight, so j is 0, 2, 4 or 0, 3, 6)."""
    layers: dict[str, list[int]] = {}
    for key, value in state.items():
        if (m := HEAD.fullmatch(key)) and m.group(3) == "weight" and np.ndim(value) == 2:
            layers.setdefault(m.group(1), []).append(int(m.group(2) or 0))
    return {head: sorted(indices) for head, indices in layers.items()}


HF_PREFIXES = ("vit.", "dinov2.")
HF_LAYER = {"layernorm_before": "norm1", "layernorm_after": "norm2", "norm1": "norm1", "norm2": "norm2",
            "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "layer_scale1.lambda1": "ls1.gamma",
            "layer_scale2.lambda1": "ls2.gamma"}
HF_EMBEDDINGS = {"cls_token": "cls_token", "mask_token": "mask_token", "position_embeddings": "pos_embed",
                 "register_tokens": "register_tokens", "patch_embeddings.projection.weight": "patch_embed.proj.weight",
                 "patch_embeddings.projection.bias": "patch_embed.proj.bias"}


def is_hf_layout(state: dict) -> bool:
    """True for a Hugging Face `ViTModel` / `Dinov2Model` state dict (`embeddings.*`, `encoder.layer.*`)."""
    return any(strip(k, HF_PREFIXES).startswith(("embeddings.", "encoder.layer.")) for k in state)


def hf_to_timm(state: dict) -> dict:
    """A Hugging Face ViT / DINOv2 state dict under timm's names: query, key and value are
    concatenated into `attn.qkv` ([3D, D], the inverse of transformers'
    `convert_vit_timm_to_pytorch.py` / `convert_dinov2_to_hf.py` split), the rest renamed."""
    out, qkv = {}, {}
    for key, value in state.items():
        key = strip(key, HF_PREFIXES)
        if key.startswith("embeddings.") and key[len("embeddings."):] in HF_EMBEDDINGS:
            out[HF_EMBEDDINGS[key[len("embeddings."):]]] = value
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", key):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        elif (m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key)) and m.group(2) in HF_LAYER:
            out[f"blocks.{m.group(1)}.{HF_LAYER[m.group(2)]}.{m.group(3)}"] = value
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.(layer_scale[12]\.lambda1)", key):
            out[f"blocks.{m.group(1)}.{HF_LAYER[m.group(2)]}"] = value
        elif key in ("layernorm.weight", "layernorm.bias"):
            out["norm." + key.split(".")[1]] = value
        else:
            out[key] = value  # pooler / classifier (ignored later) or an unknown key (named later)
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = np.concatenate([parts["query"], parts["key"], parts["value"]])
    return out
