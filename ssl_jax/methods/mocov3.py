"""MoCo v3 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers", 2021).

    q_v = predictor(projector(backbone(x_v)))            base encoder
    k_v = projector_m(backbone_m(x_v))                   momentum encoder (EMA), no gradient
    loss = ctr(q_1, k_2) + ctr(q_2, k_1),  ctr = CE(q k^T / tau, diagonal) * 2 tau
    momentum: 0.99 -> 1 (cosine; done by the train step)

The keys of the whole global batch are the negatives (the reference gathers them
from every GPU). The ViT's random patch projection is frozen (`optim.frozen_patterns`)
and its position embeddings are fixed sin-cos (`model.pos_embed`), as in the paper.
Hyper-parameters in `configs/mocov3_vit_small.py`.
"""
from __future__ import annotations

from ssl_jax import losses
from ssl_jax.methods.two_view import TwoViewMethod


class MoCoV3(TwoViewMethod):
    target = "ema"
    has_predictor = True

    def pair_loss(self, queries, keys):
        return losses.info_nce(queries, keys, self.config.temperature)
