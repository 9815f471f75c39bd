"""SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023).

    zimg, ztxt = two towers (`methods/image_text.py`)                 [B, D], normalised
    logits = exp(t') zimg ztxt^T + b                                   t' = log 10, b = -10 at init
    loss = -1/B sum_ij log sigmoid(z_ij logits_ij),  z_ij = +1 on the diagonal, -1 elsewhere

google-research/big_vision `trainers/proj/image_text/siglip.py` (`loss_fn`) and
`models/proj/image_text/two_towers.py` (`t`, `b`). With `method.chunked` the loss is the paper's
chunked form (`image_text_losses.siglip_loss_chunked`: text blocks passed round the devices with
ppermute, no device holds the global [B, B] logits); it equals the full form (tested).
Hyper-parameters in `configs/siglip_vit_b16.py`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssl_jax import sharding
from ssl_jax.image_text_losses import siglip_loss, siglip_loss_chunked
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.image_text import TwoTowerEval, TwoTowers, check_batch


class SigLIP(TwoTowerEval):
    """Batch: views 'global' [B, 1, S, S, 3] and 'text' [B, L] int32."""

    ema_teacher = False
    state_accumulation = "mean"  # no method state

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        self.towers = TwoTowers(config)
        self.temperature_init = config.method.temperature_init
        self.bias_init = config.method.bias_init
        self.mesh = sharding.make_mesh(config.parallel.fsdp) if config.method.chunked else None

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params = self.towers.init(rng, batch["views"]["global"][:, 0])
        params["t"] = jnp.asarray(math.log(self.temperature_init), jnp.float32)
        params["b"] = jnp.asarray(self.bias_init, jnp.float32)
        return MethodVariables(params, None, None, None)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        check_batch(batch, "SigLIP")
        zimg = self.towers.embed_images(params, batch["views"]["global"][:, 0], train=True, rng=rng)
        ztxt = self.towers.embed_texts(params, batch["text"])
        t = jnp.exp(params["t"])
        if self.mesh is None:
            loss = siglip_loss(zimg, ztxt, t, params["b"])
        else:
            loss = siglip_loss_chunked(zimg, ztxt, t, params["b"], self.mesh)
        return loss, LossOutput({"temperature": t, "bias": params["b"]}, method_state, model_state)

    def teacher_targets(self, params):
        return None
