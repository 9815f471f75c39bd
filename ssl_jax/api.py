"""Features out of any checkpoint, as `ssl_jax.load`:

    model = ssl_jax.load("runs/dino")                      # a workdir (latest step) or WORKDIR/checkpoints/<step>
    model = ssl_jax.load("dino_deitsmall16_pretrain.pth", arch="vit_small")   # an official file
    model = ssl_jax.load("exported.safetensors")           # `python -m ssl_jax.export`'s output
    cls = model.embed(images)                              # [B, D] normed [CLS]
    patches = model.embed(["a.jpg", "b.png"], output="patch")   # [B, N, D] normed patch tokens

`images`: uint8 [B, H, W, 3] / [H, W, 3] (0..255), float (0..1) arrays, a list of such arrays
of any sizes, or a list of image file paths. Each image goes through the model's evaluation
preprocessing: the shorter side resized to `resize` (bicubic, antialiased: PIL's / torchvision's
`Resize`), the centre `crop` x `crop`, normalised by the mean / std. A run uses its config's
(`eval.resize`, `eval.crop`, `augment.mean` / `std`: DINO's eval_knn.py at ImageNet size, the
image as it is for CIFAR-10); a file written by `ssl_jax.export` the preprocessing it records;
an official file ImageNet's Resize(256) + CenterCrop(224) (`image_size` changes the crop, the
resize keeping 256/224 of it, and overrides what an exported file records). Outputs: "cls" (the
normed [CLS], what kNN evaluates), "pooled" (mean of the normed patch tokens; a ResNet's
pooled features), "patch" ([B, N, D], ViT only). Batches of `batch_size` run jitted.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import UserError
from ssl_jax.export import METADATA_KEY, PREPROCESS_KEY

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Head counts of the official ViTs, which their weights do not determine (convert/pytorch.py).
ARCHS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_large": 16, "vit_huge": 16, "vit_giant": 24,
         "mocov3_vit_small": 12}
OUTPUTS = ("cls", "pooled", "patch")


class Preprocess(NamedTuple):
    resize: int
    crop: int
    mean: tuple
    std: tuple


class Model:
    """A frozen backbone and its preprocessing. `params` are the backbone's parameters,
    `variables` everything `module.apply` takes (with BatchNorm statistics for a ResNet),
    `vit_kwargs` the `ssl_jax.models.vit.vit` arguments (None for a ResNet)."""

    def __init__(self, module, variables: dict, preprocess: Preprocess, arch: str, vit_kwargs: dict | None):
        self.module, self.variables, self.preprocess = module, variables, preprocess
        self.arch, self.vit_kwargs = arch, vit_kwargs
        self._fns = {}

    @property
    def params(self) -> dict:
        return self.variables["params"]

    def prepare(self, images) -> np.ndarray:
        """images (module docstring) -> [B, crop, crop, 3] float32, normalised."""
        resize, crop, mean, std = self.preprocess
        if isinstance(images, np.ndarray) and images.ndim == 4:  # one batch: resized in one call
            out = resize_and_crop(to_float(images), resize, crop)
        else:
            out = np.stack([resize_and_crop(read_image(image), resize, crop) for image in as_list(images)])
        return ((out - np.float32(mean)) / np.float32(std)).astype(np.float32)

    def embed(self, images, output: str = "cls", batch_size: int = 64) -> np.ndarray:
        """Features of `images`: "cls" [B, D], "pooled" [B, D] or "patch" [B, N, D] (module docstring).
        Preprocessed and run `batch_size` images at a time."""
        if output not in OUTPUTS:
            raise UserError(f"output={output!r}; choose one of {', '.join(OUTPUTS)}")
        if output not in self._fns:
            self._fns[output] = jax.jit(self._features_fn(output))
        images = images if isinstance(images, np.ndarray) and images.ndim == 4 else as_list(images)
        parts = [np.asarray(self._fns[output](self.variables, self.prepare(images[i:i + batch_size])))
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts)

    def blocks(self, images) -> tuple[np.ndarray, np.ndarray]:
        """A ViT's every block on `images` (preprocessed here, one batch): tokens [L, B, T, D]
        (before the final norm) and attention [L, B, H, T, T] (`VisionTransformer.block_outputs`),
        what `ssl_jax.analysis.pictures.analyse_outputs` reads."""
        if self.vit_kwargs is None:
            raise UserError(f"blocks() needs a ViT; this model is a {self.arch}")
        if "blocks" not in self._fns:
            self._fns["blocks"] = jax.jit(lambda v, x: self.module.apply(v, x, method="block_outputs"))
        return jax.device_get(self._fns["blocks"](self.variables, self.prepare(images)))

    def _features_fn(self, output: str):
        if self.vit_kwargs is None:
            if output == "patch":
                raise UserError(f"output='patch' needs a ViT; this model is a {self.arch}")
            return lambda v, x: self.module.apply(v, x, train=False).astype(jnp.float32)
        if output == "cls" and not self.module.class_token:
            raise UserError("this ViT has no [CLS] token (I-JEPA); use output='pooled' or 'patch'")

        def features(variables, x):
            tokens = self.module.apply(variables, x, method="tokens").astype(jnp.float32)
            patches = tokens[:, self.module.num_prefix_tokens:]
            return {"cls": tokens[:, 0], "pooled": patches.mean(axis=1), "patch": patches}[output]

        return features


def as_list(images) -> list:
    """One image (a path or an [H, W, 3] array) or a sequence of them, as a list."""
    if isinstance(images, (str, os.PathLike)) or isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return list(images)


def to_float(image: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint8 is divided by 255, floats are taken as they are."""
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


def read_image(image) -> np.ndarray:
    """A path or an array -> float32 [H, W, 3] in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"an image must be [H, W, 3] (RGB, channels last); got shape {image.shape}")
    return to_float(image)


def resize_and_crop(images: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """[..., H, W, 3]: shorter side to `resize` (bicubic, antialiased), then the centre crop x crop
    (torchvision's Resize(resize) + CenterCrop(crop); no resize when the shorter side is `resize`)."""
    height, width = images.shape[-3:-1]
    if min(height, width) != resize:
        scale = resize / min(height, width)
        height, width = max(resize, round(height * scale)), max(resize, round(width * scale))
        shape = images.shape[:-3] + (height, width, 3)
        images = np.asarray(jax.image.resize(images, shape, "bicubic", antialias=True))
    if min(height, width) < crop:
        raise UserError(f"crop {crop} is larger than the resized image {height}x{width}")
    top, left = (height - crop) // 2, (width - crop) // 2
    return images[..., top:top + crop, left:left + crop, :]


def vit_kwargs_of(module) -> dict:
    """`vit(...)` arguments that rebuild this VisionTransformer's function (no drop-path)."""
    return {"size": "custom", "embed_dim": module.embed_dim, "depth": module.depth, "num_heads": module.num_heads,
            "patch_size": module.patch_size, "img_size": module.img_size, "pos_embed": module.pos_embed,
            "class_token": module.class_token, "layerscale_init": module.layerscale_init,
            "num_register_tokens": module.num_register_tokens, "init": module.init_scheme}


def load_run(path: str) -> Model:
    """A Model of an ssl_jax workdir or checkpoint step: the method's evaluated backbone."""
    from ssl_jax.init_from import restore_run
    from ssl_jax.models.backbones import backbone_kwargs, build_backbone

    frozen = restore_run(path)
    config = frozen.config
    module = build_backbone(config.model, with_drop_path=False, **backbone_kwargs(config))
    variables = {"params": frozen.run.method.eval_variables(frozen.state)}
    if (frozen.state.model_state or {}).get("backbone"):
        variables["batch_stats"] = frozen.state.model_state["backbone"]
    preprocess = Preprocess(config.eval.resize, config.eval.crop, tuple(config.augment.mean),
                            tuple(config.augment.std))
    is_vit = config.model.name == "vit"
    return Model(module, variables, preprocess, f"{config.model.name} of {path}",
                 vit_kwargs_of(module) if is_vit else None)


def load_weights(path: str, arch: str | None, image_size: int | None) -> Model:
    """A Model of an official (or exported) weights file (`ssl_jax.convert`)."""
    from ssl_jax.convert.pytorch import convert_state_dict, load_state_dict, model_kwargs, unflatten
    from ssl_jax.models.resnet import RESNET_DEPTHS, resnet
    from ssl_jax.models.vit import vit

    converted = convert_state_dict(load_state_dict(path))
    backbone = lambda flat: unflatten({k[len("backbone/"):]: v for k, v in flat.items()  # noqa: E731
                                       if k.startswith("backbone/") and k != "backbone/mask_token"})
    params = backbone(converted.params)
    metadata = exported_metadata(path)
    if image_size is None and PREPROCESS_KEY in metadata:
        saved = metadata[PREPROCESS_KEY]
        preprocess = Preprocess(saved["resize"], saved["crop"], tuple(saved["mean"]), tuple(saved["std"]))
    else:
        image_size = image_size or 224
        preprocess = Preprocess(round(image_size * 256 / 224), image_size, IMAGENET_MEAN, IMAGENET_STD)
    if "patch_embed" in params:
        kwargs = metadata.get(METADATA_KEY)
        if kwargs is None:
            if arch not in ARCHS:
                raise UserError(f"{path}: pass arch= (one of {', '.join(ARCHS)}): a ViT's head count is not in "
                                f"its weights")
            kwargs = model_kwargs(params, ARCHS[arch])
        return Model(vit(**kwargs), {"params": params}, preprocess, arch or "vit", kwargs)
    if "layer1_0" not in params:
        raise UserError(f"{path} holds neither a ViT nor a ResNet backbone")
    stages = tuple(1 + max(int(k.split("_")[1]) for k in params if k.startswith(f"layer{s}_")) for s in range(1, 5))
    bottleneck = "conv3" in params["layer1_0"]
    depth = next((d for d, spec in RESNET_DEPTHS.items() if spec == (stages, bottleneck)), None)
    if depth is None:
        raise UserError(f"{path}: a ResNet with stages {stages} is none of ResNet-{sorted(RESNET_DEPTHS)}")
    stem, _, _, width = params["conv1"]["kernel"].shape  # [k, k, 3, width]: 7 (ImageNet) or 3 (CIFAR stem)
    return Model(resnet(depth, width=width, cifar_stem=stem == 3),
                 {"params": params, "batch_stats": backbone(converted.model_state)}, preprocess, f"resnet{depth}", None)


def exported_metadata(path: str) -> dict:
    """The JSON entries `ssl_jax.export` stored in a .safetensors file's metadata (the ViT's
    arguments, the preprocessing); {} for other files."""
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        metadata = f.metadata() or {}
    return {key: json.loads(metadata[key]) for key in (METADATA_KEY, PREPROCESS_KEY) if key in metadata}


def load(path, arch: str | None = None, image_size: int | None = None) -> Model:
    """A frozen backbone from an ssl_jax workdir / checkpoint step, or a weights file (.pth needs
    torch, .safetensors does not); `arch` names an official ViT's architecture (ARCHS), and
    `image_size` the crop of a weights file's preprocessing (default: the one an exported file
    records, else 224)."""
    from ssl_jax.init_from import CHECKPOINT_SUFFIXES, workdir_and_step

    path = os.fspath(path)
    if workdir_and_step(path):
        return load_run(path)
    if os.path.isfile(path) and path.endswith(CHECKPOINT_SUFFIXES):
        return load_weights(path, arch, image_size)
    raise UserError(f"{path!r} is neither an ssl_jax workdir (with config.json), a checkpoint step "
                    f"(WORKDIR/checkpoints/<step>) nor a {' / '.join(CHECKPOINT_SUFFIXES)} file")
