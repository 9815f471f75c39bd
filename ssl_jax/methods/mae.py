"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022).

    keep, mask, restore = random_masks(rng, B, N, 0.75)      # per image: K = N/4 visible patches
    latent = encoder(image, keep)                             # [CLS] + the K visible tokens only
    pred   = decoder(latent, restore)                         # mask tokens, unshuffle, 8 blocks -> pixels [B, N, p*p*3]
    target = per-patch normalised pixels (norm_pix_loss)
    loss   = mean over masked patches of mean_pixels (pred - target)^2

Reproduces facebookresearch/mae `models_mae.py` (`forward_encoder`, `forward_decoder`,
`forward_loss`); hyper-parameters in `configs/mae_base.py`. The encoder is the repo's ViT
with fixed sin-cos position embeddings run on the gathered visible tokens (`mim.encode_kept`), so
its cost is ~(1 - mask_ratio) of a full pass. No teacher, no method state.

The encoder (`model.init = "mae"`) and the decoder follow `initialize_weights`: xavier-uniform
Linears and patch projection, sin-cos channels ordered (column, row) as `get_2d_sincos_pos_embed`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.mim import check_vit, encode_kept, single_view
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.mim_heads import MAEDecoder
from ssl_jax.models.vit import patchify


class MAE:
    """The MAE method. Batch: {'views': {'global': [B, 1, H, W, 3]}}; params {'backbone', 'decoder'}."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        check_vit(config, "MAE")
        cfg = config.method
        self.encoder = build_backbone(config.model, **backbone_kwargs(config))
        self.patch_size = config.model.patch_size
        grid = config.model.img_size // self.patch_size
        self.num_patches = grid * grid
        self.decoder = MAEDecoder((grid, grid), self.patch_size**2 * 3, cfg.decoder_embed_dim, cfg.decoder_depth,
                                  cfg.decoder_num_heads, dtype=compute_dtype(config),
                                  remat=bool(config.get("remat", False)))
        self.mask_ratio = cfg.mask_ratio
        masks.num_kept(self.num_patches, self.mask_ratio)  # checks the ratio now, not in the first step
        self.norm_pix_loss = cfg.norm_pix_loss
        # Benchmark switch (README, MAE step time): run the encoder on all N tokens and hand the
        # decoder the same K visible ones, to measure what encoding only the visible tokens saves.
        self.encode_all_tokens = cfg.get("encode_all_tokens", False)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        enc_rng, dec_rng = jax.random.split(rng)
        image = single_view(batch)[:1]
        backbone = self.encoder.init(enc_rng, image)["params"]
        m = masks.random_masks(jax.random.key(0), 1, self.num_patches, self.mask_ratio)
        latent = encode_kept(self.encoder, backbone, image, m.keep)
        decoder = self.decoder.init(dec_rng, latent, m.restore)["params"]
        return MethodVariables({"backbone": backbone, "decoder": decoder}, None, None, None)

    def reconstruct(self, params, images: jax.Array, rng: jax.Array, train: bool = False,
                    drop_path_rng: jax.Array | None = None) -> tuple[jax.Array, masks.RandomMasks]:
        """Pixel predictions [B, N, p*p*3] (in the normalised-target space with norm_pix_loss)
        and the masks drawn from `rng` (also for visualising reconstructions)."""
        m = masks.random_masks(rng, images.shape[0], self.num_patches, self.mask_ratio)
        drop_rng = drop_path_rng if train else None
        if self.encode_all_tokens:
            order = jnp.argsort(m.restore, axis=1)  # the shuffle: visible patches first
            tokens = encode_kept(self.encoder, params["backbone"], images, order, rng=drop_rng)
            latent = tokens[:, :1 + m.keep.shape[1]]
        else:
            latent = encode_kept(self.encoder, params["backbone"], images, m.keep, rng=drop_rng)  # [B, 1 + K, D]
        return self.decoder.apply({"params": params["decoder"]}, latent, m.restore), m

    def targets(self, images: jax.Array) -> jax.Array:
        """The regression targets [B, N, p*p*3]: patches of the (normalised) input image,
        each normalised by its own mean and std with norm_pix_loss."""
        patches = patchify(images, self.patch_size)
        return losses.normalized_patch_targets(patches) if self.norm_pix_loss else patches

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher, step
        images = single_view(batch)
        mask_rng, drop_rng = jax.random.split(rng)
        pred, m = self.reconstruct(params, images, mask_rng, train=True, drop_path_rng=drop_rng)
        loss = losses.masked_patch_mse(pred, self.targets(images), m.mask)
        return loss, LossOutput({"mask_ratio": jnp.mean(m.mask.astype(jnp.float32))}, method_state, model_state)

    def teacher_targets(self, params):
        return None

    def eval_variables(self, state):
        return state.params["backbone"]

    def features(self, backbone_params, model_state, images: jax.Array) -> jax.Array:
        """The normed [CLS] token [B, D] of the encoder on the whole unmasked image: what MAE's
        linear probe reads (`main_linprobe.py`, global_pool=False)."""
        del model_state
        return self.encoder.apply({"params": backbone_params}, images).astype(jnp.float32)
