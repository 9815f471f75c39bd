"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", 2020).

    h_v = backbone(x_v); z_v = projector(h_v)        both views in one batch of 2B
    loss = nt_xent(z_1, z_2) + nt_xent(z_2, z_1)      negatives: the other 2B - 2 of the global batch

The sum of the two directions is the reference code's (`add_contrastive_loss`:
loss_a + loss_b), twice the mean over 2B anchors of the paper's Algorithm 1.
Hyper-parameters in `configs/simclr_resnet50.py`.
"""
from __future__ import annotations

from ssl_jax import losses
from ssl_jax.methods.two_view import TwoViewMethod


class SimCLR(TwoViewMethod):
    target = "online"
    has_predictor = False
    joint_views = True

    def pair_loss(self, queries, keys):
        return losses.nt_xent(queries, keys, self.config.temperature)
