"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", 2021).

    z_v = projector(backbone(x_v)); p_v = predictor(z_v)
    loss = D(p_1, sg z_2) / 2 + D(p_2, sg z_1) / 2,   D(p, z) = -cos(p, z)

No momentum encoder: the stop-gradient alone prevents collapse. The predictor
keeps a fixed learning rate (`optim.fixed_lr_patterns`). Hyper-parameters in
`configs/simsiam_resnet50.py`.
"""
from __future__ import annotations

from ssl_jax import losses
from ssl_jax.methods.two_view import TwoViewMethod


class SimSiam(TwoViewMethod):
    target = "stop_gradient"
    has_predictor = True
    loss_weight = 0.5

    def pair_loss(self, queries, keys):
        return losses.negative_cosine(queries, keys)
