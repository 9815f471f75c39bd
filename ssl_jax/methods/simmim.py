"""SimMIM: a simple framework for masked image modelling (Xie et al., CVPR 2022).

    mask  = simmim_masks(rng)              # 60 % of the 32 px cells, upsampled to the 16 px patch grid
    z     = encoder(image, mask)           # masked patch embeddings -> learned mask token, all tokens encoded
    x_rec = head(z)                        # one linear map per patch token to its p*p*3 pixels
    loss  = L1(x_rec, image) on masked pixels / #masked pixels / 3

Reproduces microsoft/SimMIM `models/simmim.py` (`VisionTransformerForSimMIM`, `SimMIM`) and
`data/data_simmim.py` (`MaskGenerator`); hyper-parameters in `configs/simmim_vit_base.py`.
The reference's head is a 1x1 convolution to p*p*3 channels followed by PixelShuffle(p):
the same as a Dense per token whose outputs are that patch's pixels (only the order of the
outputs differs, and they are learned). Targets are the normalised input pixels.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.mim import check_vit, single_view
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.vit import patchify, torch_conv_kernel_init


class SimMIM:
    """The SimMIM method. Batch: {'views': {'global': [B, 1, H, W, 3]}}; params {'backbone', 'head'}."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        check_vit(config, "SimMIM")
        if not config.model.get("mask_token"):
            raise UserError("SimMIM replaces masked patches by a learned mask token: set "
                            "config.model.mask_token='trunc_normal' (models/simmim.py's init)")
        cfg = config.method
        self.encoder = build_backbone(config.model, **backbone_kwargs(config))
        self.patch_size = config.model.patch_size
        self.img_size = config.model.img_size
        self.mask_patch_size = cfg.mask_patch_size
        self.mask_ratio = cfg.mask_ratio
        # 1x1 conv (torch's default init, which the reference keeps: kernel and bias U(+-1/sqrt(D))) = Dense per token.
        bound = self.encoder.embed_dim ** -0.5
        self.head = nn.Dense(self.patch_size**2 * 3, kernel_init=torch_conv_kernel_init, dtype=compute_dtype(config),
                             bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                                                -bound, bound))
        masks.simmim_masks(jax.random.key(0), 1, self.img_size, self.mask_patch_size, self.patch_size,
                           self.mask_ratio)  # checks the sizes now, not in the first step

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        enc_rng, head_rng = jax.random.split(rng)
        image = single_view(batch)[:1]
        backbone = self.encoder.init(enc_rng, image)["params"]
        tokens = self.encoder.apply({"params": backbone}, image, method="tokens")
        head = self.head.init(head_rng, tokens[:, 1:])["params"]
        return MethodVariables({"backbone": backbone, "head": head}, None, None, None)

    def reconstruct(self, params, images: jax.Array, mask: jax.Array, train: bool = False,
                    drop_path_rng: jax.Array | None = None) -> jax.Array:
        """Pixel predictions [B, N, p*p*3] of the encoder run with `mask` [B, N]."""
        variables = {"params": params["backbone"]}
        tokens = self.encoder.apply(variables, images, mask, method="embed")  # masked patches: the mask token
        tokens = self.encoder.apply(variables, tokens, train, method="encode",
                                    rngs={"drop_path": drop_path_rng} if train else None)  # [B, 1 + N, D]
        return self.head.apply({"params": params["head"]}, tokens[:, 1:])  # the [CLS] output is unused

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher, step
        images = single_view(batch)
        if images.shape[1] != self.img_size:
            raise UserError(f"SimMIM's masks are drawn for config.model.img_size={self.img_size}, "
                            f"but the view is {images.shape[1]} px; set augment.global_crops.size to match")
        mask_rng, drop_rng = jax.random.split(rng)
        mask = masks.simmim_masks(mask_rng, images.shape[0], self.img_size, self.mask_patch_size, self.patch_size,
                                  self.mask_ratio)
        pred = self.reconstruct(params, images, mask, train=True, drop_path_rng=drop_rng)
        loss = losses.masked_pixel_l1(pred, patchify(images, self.patch_size), mask)
        return loss, LossOutput({"mask_ratio": jnp.mean(mask.astype(jnp.float32))}, method_state, model_state)

    def teacher_targets(self, params):
        return None

    def eval_variables(self, state):
        return state.params["backbone"]

    def features(self, backbone_params, model_state, images: jax.Array) -> jax.Array:
        """The normed [CLS] token [B, D] of the encoder on the unmasked image (SimMIM's ViT
        classifies from [CLS]: USE_MEAN_POOLING False)."""
        del model_state
        return self.encoder.apply({"params": backbone_params}, images).astype(jnp.float32)
