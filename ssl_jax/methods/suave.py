"""Suave: SwAV whose codes are the labels where they are known (Fini et al., CVPR 2023; the
shared description is in `methods/semisup.py`).

    z, s = SwAV's projections [B, V, D] and scores z C [B, V, K], K = number of classes
    q_a = one-hot(label)                                   for a labelled image (batch["label"] >= 0)
        = sinkhorn([queue_a C ; s_a], eps)[-B:]            for an unlabelled one, the Sinkhorn-Knopp
                                                           balancing over the unlabelled images only
    loss = SwAV's swapped prediction of q_a by every other crop

Built from SwAV's functions (`methods/swav.py`); the hyper-parameters live in
`configs/suave_resnet50.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods.base import MethodVariables, OnlineBackboneEval
from ssl_jax.methods.semisup import check_semi_supervised
from ssl_jax.methods.swav import assignment_codes, init_swav, swav_loss, swav_network, swav_settings


class Suave(OnlineBackboneEval):
    """Suave. Batch: SwAV's views plus 'label' [B] (-1 where unlabelled)."""

    ema_teacher = False
    state_accumulation = "sequential"  # the queue receives every micro-batch's embeddings (ssl_jax/core/accumulate.py)

    def __init__(self, config, steps_per_epoch: int):
        check_semi_supervised(config, config.method.num_prototypes, "method.num_prototypes")
        self.settings = swav_settings(config, steps_per_epoch)
        self.network = swav_network(config)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        return init_swav(self.network, self.settings, rng, batch)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher
        labels = batch["label"]

        def assign(scores, queue_scores, use_queue):
            codes = assignment_codes(scores, queue_scores, use_queue, self.settings.epsilon,
                                     self.settings.sinkhorn_iterations, batch_weights=labels < 0)
            return losses.labelled_targets(codes, labels)

        return swav_loss(self.network, self.settings, assign, params, method_state, model_state, batch["views"],
                         rng, step)

    def teacher_targets(self, params):
        return None

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """Scores [B, K] of images [B, H, W, 3] against the class prototypes: z C of the online
        network in eval mode (the loss's prediction before its temperature)."""
        z, _ = self.network.apply(state.params, state.model_state or {}, images, train=False)
        return losses.l2_normalize(z.astype(jnp.float32)) @ state.params["prototypes"]["kernel"].astype(jnp.float32)
