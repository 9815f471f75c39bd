"""Rotation prediction (Gidaris et al., "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018) and self-supervised label augmentation (Lee et al., "Self-supervised Label
Augmentation via Input Transformations", ICML 2020).

    x_r = rot90(x, r), r = 0, 1, 2, 3        all four rotations of every image, made in the step
    logits = head(backbone(x_r))                                 [4B, 4] (RotNet) or [4B, 4C] (SLA)
    target = r                  (RotNet: 4-way rotation classification, no labels)
           = 4 y + r            (SLA, method.joint_labels: the joint (label, rotation) class)
    loss   = cross-entropy, mean over the 4B rotated images (x 4 with method.loss_scale = 4:
             SLA's `--with-large-loss` for ImageNet)
    SLA's aggregated inference: p(y | x) = softmax_y(1/4 sum_r logits(x_r)[4 y + r])

The rotated copies are image-major ([b0 r0, b0 r1, ..., b1 r0, ...]), as the references'
`torch.stack([...], 1).view(-1)`, which keeps the batch axis sharded on the mesh. SLA reads
`batch["label"]` (config.dataset.fields = ("label",)); examples whose label is -1 (outside
`dataset.labelled_fraction`) get zero weight.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import LinearHead
from ssl_jax.models.network import Network

NUM_ROTATIONS = 4


def rotate_four(images: jax.Array) -> jax.Array:
    """images [B, H, W, C] (square) -> [B, 4, H, W, C]: rotations by 0, 90, 180, 270 degrees
    counter-clockwise (`torch.rot90(x, k, (2, 3))` on NCHW)."""
    if images.shape[1] != images.shape[2]:
        raise UserError(f"rotation prediction needs square crops, got {images.shape[1]}x{images.shape[2]}")
    return jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)], axis=1)


def rotation_targets(batch_size: int, labels: jax.Array | None = None) -> jax.Array:
    """Targets [B, 4] of the rotated copies: r, or the joint class 4 y + r when labels [B] are given."""
    rotations = jnp.broadcast_to(jnp.arange(NUM_ROTATIONS), (batch_size, NUM_ROTATIONS))
    return rotations if labels is None else labels[:, None] * NUM_ROTATIONS + rotations


def aggregate_joint_logits(joint_logits: jax.Array) -> jax.Array:
    """SLA's aggregated inference: joint_logits [B, 4, 4C] of the four rotations of each image ->
    class logits [B, C] = mean over r of joint_logits[:, r, 4 y + r] (`preds[i::n, i::n] / n`)."""
    batch, rotations, joint = joint_logits.shape
    per_class = joint_logits.reshape(batch, rotations, joint // rotations, rotations)  # [B, r, y, r']
    return jnp.mean(jnp.diagonal(per_class, axis1=1, axis2=3), axis=-1)


class Rotation(OnlineBackboneEval):
    """RotNet (method.joint_labels False) or SLA (True, needs labels). `views`: 'global' [B, 1, S, S, 3]."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        cfg = config.method
        self.joint_labels = cfg.joint_labels
        if self.joint_labels and "label" not in tuple(config.dataset.get("fields", ())):
            raise UserError("method.joint_labels (SLA) needs the labels in the batch: set "
                            "config.dataset.fields = ('label',)")
        num_outputs = NUM_ROTATIONS * (config.dataset.num_classes if self.joint_labels else 1)
        self.network = Network({"backbone": build_backbone(config.model, **backbone_kwargs(config)),
                                "head": LinearHead(num_outputs, compute_dtype(config))})
        self.loss_scale = cfg.get("loss_scale", 1.0)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params, stats = self.network.init(rng, batch["views"]["global"][:, 0])
        return MethodVariables(params, None, None, stats or None)

    def rotated_logits(self, params, stats, images: jax.Array, *, train: bool, rng=None):
        """images [B, S, S, 3] -> logits [B, 4, num_outputs] of their four rotations, and the new stats."""
        rotated = rotate_four(images)
        batch = rotated.shape[0]
        logits, stats = self.network.apply(params, stats, rotated.reshape((batch * NUM_ROTATIONS,) + rotated.shape[2:]),
                                           train=train, rng=rng)
        return logits.reshape((batch, NUM_ROTATIONS, -1)), stats

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher, step
        images = batch["views"]["global"][:, 0]
        logits, new_stats = self.rotated_logits(params, model_state or {}, images, train=True, rng=rng)
        labels = batch["label"] if self.joint_labels else None
        targets = rotation_targets(images.shape[0], None if labels is None else jnp.maximum(labels, 0))
        weights = None if labels is None else jnp.broadcast_to((labels >= 0)[:, None], targets.shape)
        loss = self.loss_scale * losses.cross_entropy(logits, targets, weights)
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        metrics = {"pretext_accuracy": jnp.mean(correct) if weights is None
                   else jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0)}
        if self.joint_labels:
            aggregated = aggregate_joint_logits(jax.lax.stop_gradient(logits))
            hits = (jnp.argmax(aggregated, -1) == labels).astype(jnp.float32)
            metrics["aggregated_accuracy"] = jnp.sum(hits * (labels >= 0)) / jnp.maximum(jnp.sum(labels >= 0), 1)
        return loss, LossOutput(metrics, method_state, new_stats or None)

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """SLA's aggregated class logits [B, C] of images [B, S, S, 3] (eval-mode BatchNorm), from a
        TrainState. RotNet (no labels) has no class head."""
        if not self.joint_labels:
            raise UserError("--eval=classifier scores SLA's joint (label, rotation) head; this RotNet run "
                            "(method.joint_labels=False) has none: use knn or linear")
        logits, _ = self.rotated_logits(state.params, state.model_state or {}, images, train=False)
        return aggregate_joint_logits(logits)

    def teacher_targets(self, params):
        return None
