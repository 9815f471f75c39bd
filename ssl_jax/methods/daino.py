"""Daino: DINO whose teacher targets are the labels where they are known (Fini et al., CVPR 2023;
the shared description is in `methods/semisup.py`).

    s, t = DINO's student logits [B, 2+L, K] and teacher logits [B, 2, K], K = number of classes
    q = one-hot(label)                   for a labelled image (batch["label"] >= 0)
      = softmax((t - center) / tau_t)    for an unlabelled one (DINO's target)
    loss = DINO's cross-entropy over (teacher crop, other student crop) pairs against q
    center <- EMA of t over the whole batch, as DINO

Built from DINO's functions (`methods/dino.py`); the hyper-parameters live in `configs/daino_small.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import distill
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.dino import (build_dino_head, dino_objective, dino_teacher_temp, init_dino,
                                  student_teacher_logits)
from ssl_jax.methods.semisup import check_semi_supervised
from ssl_jax.models.backbones import backbone_kwargs, build_backbone


class Daino(distill.TeacherBackboneEval):
    """Daino. Batch: DINO's views plus 'label' [B] (-1 where unlabelled)."""

    ema_teacher = True
    state_accumulation = "mean"  # the center, an EMA of batch means: the micro-batches' mean is the batch's

    def __init__(self, config, steps_per_epoch: int):
        check_semi_supervised(config, config.method.out_dim, "method.out_dim")
        distill.check_vit(config, "Daino")
        self.backbone = build_backbone(config.model, **backbone_kwargs(config))
        self.head = build_dino_head(config)
        self.student_temp = config.method.student_temp
        self.center_momentum = config.method.center_momentum
        self.teacher_temp = dino_teacher_temp(config.method, steps_per_epoch)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        return init_dino(self.backbone, self.head, rng, batch)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        student_logits, teacher_logits = student_teacher_logits(self.backbone, self.head, params, teacher,
                                                                batch["views"], rng)
        teacher_temp = self.teacher_temp(step)
        targets = losses.labelled_targets(
            losses.dino_teacher_probs(teacher_logits, method_state["center"], teacher_temp), batch["label"])
        loss, center, metrics = dino_objective(student_logits, teacher_logits, targets, method_state["center"],
                                               self.student_temp, self.center_momentum)
        return loss, LossOutput({"teacher_temp": teacher_temp, **metrics}, {"center": center}, model_state)

    def teacher_targets(self, params):
        return params

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """Logits [B, K] of images [B, H, W, 3] over the class prototypes: the teacher's backbone
        and head, the network DINO evaluates."""
        no_dropout = jax.random.key(0)  # eval mode: the rng is never drawn from
        return distill.multicrop_logits(self.backbone, self.head, state.teacher, [images[:, None]], no_dropout,
                                        train=False)[:, 0].astype(jnp.float32)
