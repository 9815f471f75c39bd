"""I-JEPA: joint-embedding predictive architecture (Assran et al., CVPR 2023).

    ctx, targets = multiblock_masks(rng)                    # 1 context block minus 4 target blocks
    h = LayerNorm(target_encoder(image))[targets]           # EMA encoder on the whole image, no gradient
    z = encoder(image, ctx)                                 # context tokens only
    p = predictor(z, ctx positions, target positions)       # narrow ViT, one pass per target block
    loss = smooth_l1(p, h)
    target_encoder <- m target_encoder + (1 - m) encoder   (the train step; m linear 0.996 -> 1)

Reproduces facebookresearch/ijepa `src/train.py` (forward_target, forward_context, loss_fn),
`src/models/vision_transformer.py` (no [CLS] token, fixed sin-cos position embeddings) and
`src/masks/multiblock.py` (`ssl_jax.masks.multiblock_masks`). Hyper-parameters in
`configs/ijepa_small.py`. The per-image context sizes are padded to a static length and the
padding is masked out of attention (ssl_jax/masks.py), where the reference truncates every
context to the batch's smallest.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.mim import check_vit, encode_kept, single_view
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.mim_heads import JEPAPredictor


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """`F.layer_norm(h, (h.size(-1),))`: over the last axis, no affine parameters, in float32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


class IJEPA:
    """The I-JEPA method. Batch: {'views': {'global': [B, 1, H, W, 3]}};
    params {'backbone' (context encoder), 'predictor'}; teacher {'backbone'} (target encoder)."""

    ema_teacher = True
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        check_vit(config, "I-JEPA")
        if config.model.get("class_token", True):
            raise UserError("I-JEPA's ViT has no [CLS] token: set config.model.class_token=False")
        cfg = config.method
        kwargs = backbone_kwargs(config)
        self.encoder = build_backbone(config.model, **kwargs)
        self.target_encoder = build_backbone(config.model, with_drop_path=False, **kwargs)
        side = config.model.img_size // config.model.patch_size
        self.grid = (side, side)
        self.predictor = JEPAPredictor(self.grid, self.encoder.embed_dim, cfg.predictor_embed_dim, cfg.predictor_depth,
                                       cfg.predictor_num_heads or self.encoder.num_heads,
                                       dtype=compute_dtype(config), remat=kwargs["remat"])
        self.mask_kwargs = dict(context_scale=tuple(cfg.context_scale), target_scale=tuple(cfg.target_scale),
                                target_aspect_ratio=tuple(cfg.target_aspect_ratio), num_targets=cfg.num_targets,
                                min_keep=cfg.min_keep)

    def _masks(self, rng: jax.Array, batch: int) -> masks.MultiBlockMasks:
        return masks.multiblock_masks(rng, batch, self.grid, **self.mask_kwargs)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        enc_rng, pred_rng = jax.random.split(rng)
        image = single_view(batch)[:1]
        backbone = self.encoder.init(enc_rng, image)["params"]
        m = self._masks(jax.random.key(0), 1)
        z = encode_kept(self.encoder, backbone, image, m.context, m.context_valid)
        predictor = self.predictor.init(pred_rng, z, m.context, m.context_valid, m.targets, m.targets_valid)["params"]
        params = {"backbone": backbone, "predictor": predictor}
        # The target encoder starts as a copy of the context encoder (copy.deepcopy in train.py).
        return MethodVariables(params, jax.tree.map(jnp.copy, self.teacher_targets(params)), None, None)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del step
        images = single_view(batch)
        mask_rng, drop_rng = jax.random.split(rng)
        m = self._masks(mask_rng, images.shape[0])
        h = self.target_encoder.apply({"params": teacher["backbone"]}, images, method="tokens")  # [B, N, D]
        h = jax.lax.stop_gradient(layer_norm(h))
        targets = jnp.take_along_axis(h[:, None], m.targets[..., None], axis=2)  # [B, M, Kt, D]
        z = encode_kept(self.encoder, params["backbone"], images, m.context, m.context_valid, drop_rng)  # [B, Kc, D]
        pred = self.predictor.apply({"params": params["predictor"]}, z, m.context, m.context_valid, m.targets,
                                    m.targets_valid)
        loss = losses.masked_smooth_l1(pred, targets, m.targets_valid)
        metrics = {"context_size": jnp.mean(jnp.sum(m.context_valid, axis=1).astype(jnp.float32)),
                   "target_size": jnp.mean(jnp.sum(m.targets_valid, axis=2).astype(jnp.float32))}
        return loss, LossOutput(metrics, method_state, model_state)

    def teacher_targets(self, params):
        return {"backbone": params["backbone"]}

    def eval_variables(self, state):
        """The target (EMA) encoder, which the I-JEPA paper evaluates."""
        return state.teacher["backbone"]

    def features(self, backbone_params, model_state, images: jax.Array) -> jax.Array:
        """The average-pooled normed output tokens [B, D] of the encoder on the whole image
        (there is no [CLS] token)."""
        del model_state
        return self.encoder.apply({"params": backbone_params}, images).astype(jnp.float32)
