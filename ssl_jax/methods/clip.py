"""CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021).

    zimg, ztxt = two towers (`methods/image_text.py`)                 [B, D], normalised
    logits = exp(min(s, log max_logit_scale)) * zimg ztxt^T           [B, B], s initialised to log(1 / 0.07)
    loss = (CE(logits, i) + CE(logits^T, i)) / 2                        negatives: the whole global batch

openai/CLIP `clip/model.py` (`CLIP.logit_scale`, `forward`) and the paper (Figure 3; Section 2.5: "the
temperature ... clipped to prevent scaling the logits by more than 100"). Hyper-parameters in
`configs/clip_vit_b32.py`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssl_jax.image_text_losses import clip_loss
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.image_text import TwoTowerEval, TwoTowers, check_batch


def clipped_scale(log_scale: jax.Array, max_scale: float) -> jax.Array:
    """exp(log_scale) capped at max_scale: the paper's clipping, applied where the scale is used (the pure step
    has no post-update hook to clamp the parameter as open_clip's `logit_scale.clamp_(0, log(100))` does)."""
    return jnp.exp(jnp.minimum(log_scale, math.log(max_scale)))


class CLIP(TwoTowerEval):
    """Batch: views 'global' [B, 1, S, S, 3] and 'text' [B, L] int32 (one caption per image)."""

    ema_teacher = False
    state_accumulation = "mean"  # no method state

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        self.towers = TwoTowers(config)
        self.logit_scale_init = config.method.logit_scale_init
        self.max_logit_scale = config.method.max_logit_scale

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params = self.towers.init(rng, batch["views"]["global"][:, 0])
        params["logit_scale"] = jnp.asarray(math.log(self.logit_scale_init), jnp.float32)
        return MethodVariables(params, None, None, None)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        check_batch(batch, "CLIP")
        zimg = self.towers.embed_images(params, batch["views"]["global"][:, 0], train=True, rng=rng)
        ztxt = self.towers.embed_texts(params, batch["text"])
        scale = clipped_scale(params["logit_scale"], self.max_logit_scale)
        return clip_loss(zimg, ztxt, scale), LossOutput({"logit_scale": scale}, method_state, model_state)

    def teacher_targets(self, params):
        return None
