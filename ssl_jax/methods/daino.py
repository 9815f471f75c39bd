"""Daino: DINO whose teacher targets are the labels where they are known (Fini et al., CVPR 2023;
the shared description is in `methods/semisup.py`).

    s, t = DINO's student logits [B, 2+L, K] and teacher logits [B, 2, K], K = number of classes
    q = one-hot(label)                   for a labelled image (batch["label"] >= 0)
      = softmax((t - center) / tau_t)    for an unlabelled one (DINO's target)
    loss = DINO's cross-entropy over (teacher crop, other student crop) pairs against q
    center <- EMA of t over the whole batch, as DINO

Built from DINO's `DinoNetworks` (`methods/dino.py`); the hyper-parameters live in `configs/daino_small.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import distill
from ssl_jax.methods.base import MethodVariables
from ssl_jax.methods.dino import DinoNetworks
from ssl_jax.methods.semisup import check_semi_supervised


class Daino(distill.TeacherBackboneEval):
    """Daino. Batch: DINO's views plus 'label' [B] (-1 where unlabelled)."""

    ema_teacher = True
    state_accumulation = "mean"  # the center, an EMA of batch means: the micro-batches' mean is the batch's

    def __init__(self, config, steps_per_epoch: int):
        check_semi_supervised(config, config.method.out_dim, "method.out_dim")
        self.dino = DinoNetworks(config, steps_per_epoch, "Daino")
        self.backbone, self.head = self.dino.backbone, self.dino.head

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        return self.dino.init(rng, batch)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        def label_targets(teacher_probs):
            return losses.labelled_targets(teacher_probs, batch["label"])
        return self.dino.loss(params, teacher, method_state, model_state, batch, rng, step, targets=label_targets)

    def teacher_targets(self, params):
        return params

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """Logits [B, K] of images [B, H, W, 3] over the class prototypes: the teacher's backbone
        and head, the network DINO evaluates."""
        no_dropout = jax.random.key(0)  # eval mode: the rng is never drawn from
        return distill.multicrop_logits(self.backbone, self.head, state.teacher, [images[:, None]], no_dropout,
                                        train=False)[:, 0].astype(jnp.float32)
