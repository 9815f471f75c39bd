"""BYOL (Grill et al., "Bootstrap Your Own Latent", 2020).

    q_v = predictor(projector(backbone(x_v)))            online network
    z'_v = projector_t(backbone_t(x_v))                  target = EMA of the online backbone + projector
    loss = (2 - 2 cos(q_1, sg z'_2)) + (2 - 2 cos(q_2, sg z'_1))   each a batch mean
    target <- tau target + (1 - tau) online, tau: 0.996 -> 1 (cosine; done by the train step)

Hyper-parameters in `configs/byol_resnet50.py`.
"""
from __future__ import annotations

from ssl_jax import losses
from ssl_jax.methods.two_view import TwoViewMethod


class BYOL(TwoViewMethod):
    target = "ema"
    has_predictor = True

    def pair_loss(self, queries, keys):
        return losses.normalized_mse(queries, keys)
