"""Semi-supervised learning with self-supervised clustering (Fini et al., "Semi-supervised Learning
Made Simple with Self-supervised Clustering", CVPR 2023): Suave (on SwAV) and Daino (on DINO).

    the clustering method's prototypes become class prototypes: K = number of classes
    targets = one-hot(label)            for a labelled image            (batch["label"] >= 0)
            = the method's own targets  for an unlabelled one (SwAV: Sinkhorn codes, balanced over
                                        the unlabelled images only; DINO: the centred, sharpened teacher)
    loss = the method's one cross-entropy of every crop's prediction against those targets

So the labelled images train the prototypes as a classifier and the unlabelled ones cluster around
them, with a single loss. Labels come from the pipeline (`config.dataset.fields = ("label",)`);
`config.dataset.labelled_fraction` (e.g. 0.1) keeps a fixed subset of the split labelled and
gives every other image the label -1, which is never read (`losses.labelled_targets`). The
paper draws labelled and unlabelled images into separate batches; here they share one batch,
in proportion to the labelled fraction.

The trained prototypes are a classifier: `class_logits` scores eval images against them
(`python -m ssl_jax.evaluate --eval=classifier`, the paper's top-1). `dataset.labelled_only=True`
trains the same network, crops and loss on the labelled images alone: the supervised-only
baseline on the same labels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods.dino import DINO
from ssl_jax.methods.swav import SwAV, assignment_codes


def check_semi_supervised(config, num_prototypes: int, field: str) -> None:
    """Labels in the batch, and one prototype per class."""
    if "label" not in tuple(config.dataset.get("fields", ())):
        raise UserError("semi-supervised clustering needs the labels in the batch: "
                         "set config.dataset.fields = ('label',)")
    if num_prototypes != config.dataset.num_classes:
        raise UserError(f"the prototypes are class prototypes: set config.{field}={config.dataset.num_classes} "
                         f"(config.dataset.num_classes), got {num_prototypes}")


class Suave(SwAV):
    """SwAV whose codes are the labels where they are known."""

    def __init__(self, config, steps_per_epoch: int):
        check_semi_supervised(config, config.method.num_prototypes, "method.num_prototypes")
        super().__init__(config, steps_per_epoch)

    def targets(self, scores, queue_scores, use_queue, batch):
        labels = batch["label"]
        codes = assignment_codes(scores, queue_scores, use_queue, self.epsilon, self.sinkhorn_iterations,
                                 batch_weights=labels < 0)
        return losses.labelled_targets(codes, labels)

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """Scores [B, K] of images [B, H, W, 3] against the class prototypes: z C of the online
        network in eval mode (the loss's prediction before its temperature)."""
        z, _ = self.network.apply(state.params, state.model_state or {}, images, train=False)
        return losses.l2_normalize(z.astype(jnp.float32)) @ state.params["prototypes"]["kernel"].astype(jnp.float32)


class Daino(DINO):
    """DINO whose teacher targets are the labels where they are known."""

    def __init__(self, config, steps_per_epoch: int):
        check_semi_supervised(config, config.method.out_dim, "method.out_dim")
        super().__init__(config, steps_per_epoch)

    def targets(self, teacher_probs, batch):
        return losses.labelled_targets(teacher_probs, batch["label"])

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """Logits [B, K] of images [B, H, W, 3] over the class prototypes: the teacher's backbone
        and head, the network DINO evaluates."""
        no_dropout = jax.random.key(0)  # eval mode: the rng is never drawn from
        return self._logits(state.teacher, [images[:, None]], no_dropout, train=False)[:, 0].astype(jnp.float32)
