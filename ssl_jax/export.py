"""Export a backbone in timm's naming:
python -m ssl_jax.export --checkpoint=<workdir | WORKDIR/checkpoints/<step> | weights file> --out=model.safetensors

The evaluated backbone (`ssl_jax.load`: DINO's teacher, the online network otherwise) is
written as a `.safetensors` state dict (the inverse of `ssl_jax.convert`):
- a ViT under timm's `VisionTransformer` names, so `timm.create_model(<the matching vit>,
  num_classes=0)` loads it with `load_state_dict(..., strict=True)`. A model with registers is
  written in timm's `vit_*_reg4_dinov2` layout (`reg_token`, a position table without the
  [CLS] slot, whose [CLS] position is folded into `cls_token`). The metadata holds the ssl_jax
  ViT's arguments (`ssl_jax_vit`, JSON), so `ssl_jax.load(out)` needs no architecture name.
- a ResNet (SimCLR, BYOL, SimSiam, SwAV, ...) under timm's `resnet*` names, which are
  torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, BatchNorm's
  `running_mean` / `running_var`; no `num_batches_tracked`, which torch's BatchNorm fills in
  when a state dict lacks it), so `timm.create_model("resnet50", num_classes=0)` loads a
  ResNet-50 strictly. A CIFAR-stem ResNet (3x3 stride-1 `conv1`, no max-pool) keeps these names;
  timm's model then needs `conv1` replaced by that convolution and `maxpool` by `nn.Identity()`.
Both record the preprocessing the backbone was evaluated with (`ssl_jax_preprocess`: resize,
crop, mean, std), which `ssl_jax.load(out)` uses unless it is given `image_size`. The file is
written to a temporary name beside `--out` and renamed when complete: an interrupted export
leaves no file behind.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
from flax import traverse_util

from ssl_jax.errors import UserError

METADATA_KEY = "ssl_jax_vit"
PREPROCESS_KEY = "ssl_jax_preprocess"


def timm_state_dict(params: dict) -> dict[str, np.ndarray]:
    """Flax ViT backbone params -> timm's state dict (numpy, float32); `mask_token` is dropped
    (timm's ViT has none)."""
    out = {}
    for path, value in traverse_util.flatten_dict(params, sep="/").items():
        value = np.asarray(value, np.float32)
        parts = path.split("/")
        if path == "patch_embed/kernel":  # [(p, p, C), D] -> [D, C, p, p]
            patch = int(round((value.shape[0] // 3) ** 0.5))
            out["patch_embed.proj.weight"] = value.reshape(patch, patch, 3, -1).transpose(3, 2, 0, 1)
        elif path == "patch_embed/bias":
            out["patch_embed.proj.bias"] = value
        elif path in ("cls_token", "pos_embed"):
            out[path] = value
        elif path == "register_tokens":
            out["reg_token"] = value
        elif parts[0] == "norm":
            out[f"norm.{'weight' if parts[1] == 'scale' else 'bias'}"] = value
        elif parts[0].startswith("blocks_"):
            module = {"attn/qkv": "attn.qkv", "attn/proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}.get(
                "/".join(parts[1:-1]), "/".join(parts[1:-1]))
            leaf = {"scale": "weight", "kernel": "weight"}.get(parts[-1], parts[-1])
            out[f"blocks.{parts[0][len('blocks_'):]}.{module}.{leaf}"] = value.T if parts[-1] == "kernel" else value
        elif path != "mask_token":
            raise UserError(f"cannot export {path!r}: it is no part of a ViT in timm's naming")
    if "reg_token" in out:  # timm's no_embed_class layout: [CLS] position folded into cls_token
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


RESNET_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                 ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
RESNET_MODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def resnet_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """Flax ResNet backbone variables {"params", "batch_stats"} -> timm's (= torchvision's) state
    dict (numpy, float32): `layerS_i/convK` -> `layerS.i.convK`, `downsample_conv` / `_bn` ->
    `downsample.0` / `.1`, kernels [k, k, I, O] -> [O, I, k, k]."""
    out = {}
    for collection in ("params", "batch_stats"):
        for path, value in traverse_util.flatten_dict(variables[collection], sep="/").items():
            *modules, leaf = path.split("/")
            if (collection, leaf) not in RESNET_LEAVES:
                raise UserError(f"cannot export {collection} {path!r}: it is no part of a ResNet in timm's naming")
            module = ".".join(RESNET_MODULES.get(m, m.replace("_", ".")) for m in modules)
            value = np.asarray(value, np.float32)
            out[f"{module}.{RESNET_LEAVES[collection, leaf]}"] = value.transpose(3, 2, 0, 1) if leaf == "kernel" else value
    return out


def save_atomically(tensors: dict[str, np.ndarray], out: str, metadata: dict[str, str]) -> None:
    """safetensors file at `out`, written to a temporary file in the same directory and renamed."""
    from safetensors.numpy import save_file

    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".safetensors.tmp", dir=directory)
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException:
        os.remove(tmp)
        raise


def vit_tensors(checkpoint: str, params: dict, kwargs: dict) -> tuple[dict[str, np.ndarray], dict]:
    """(timm's tensors, the `vit(...)` arguments that rebuild them) of a ViT backbone."""
    params, kwargs = dict(params), dict(kwargs)
    if not kwargs.get("class_token", True) or kwargs.get("pos_embed") == "none":
        raise UserError(f"{checkpoint}: a ViT without [CLS] or without position embeddings has no timm layout here")
    if kwargs.get("pos_embed") == "sincos":  # the fixed table as a tensor, as MoCo v3's state dict holds it
        from ssl_jax.models.vit import sincos_pos_embed, vit_init

        grid = kwargs["img_size"] // kwargs["patch_size"]
        params["pos_embed"] = sincos_pos_embed((grid, grid), kwargs["embed_dim"],
                                               width_first=vit_init(kwargs["init"]).sincos_width_first)
        kwargs["pos_embed"] = "learned"
    return timm_state_dict(params), kwargs


def export(checkpoint: str, out: str, **load_kwargs) -> dict[str, np.ndarray]:
    """Writes `checkpoint`'s backbone (`ssl_jax.load(checkpoint, **load_kwargs)`) to `out`; returns the tensors."""
    from ssl_jax.api import load

    model = load(checkpoint, **load_kwargs)
    metadata = {"format": "pt", PREPROCESS_KEY: json.dumps(model.preprocess._asdict())}
    if model.vit_kwargs is None:
        tensors = resnet_state_dict(model.variables)
    else:
        tensors, kwargs = vit_tensors(checkpoint, model.params, model.vit_kwargs)
        metadata[METADATA_KEY] = json.dumps(kwargs)
    save_atomically(tensors, out, metadata)
    return tensors


def main(argv):
    del argv
    try:
        tensors = export(CHECKPOINT.value, OUT.value, arch=ARCH.value)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {OUT.value}: {len(tensors)} tensors in timm's naming")


if __name__ == "__main__":
    from absl import app, flags

    CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssl_jax workdir, checkpoint step, or weights file.")
    OUT = flags.DEFINE_string("out", None, "Output .safetensors file.")
    ARCH = flags.DEFINE_string("arch", None, "For an official weights file: its architecture (ssl_jax.api.ARCHS).")
    flags.mark_flags_as_required(["checkpoint", "out"])
    app.run(main)
