"""Parametric instance discrimination for ViTs on small datasets (Cao, Yu and Wu, "Training Vision
Transformers with Only 2040 Images", ECCV 2022).

    every training image is its own class: target = batch["index"], its position in the train split
    logits = instances(backbone(crop))      instances: a linear layer [D, N_images] (+ bias [N_images])
    loss = cross-entropy with label smoothing, mean over the crops (every crop of an image has its target)

then fine-tune the backbone with labels (`python -m ssl_jax.evaluate --eval=finetune`); the paper
pretrains at a lower resolution than it fine-tunes. The classifier grows with the dataset, so it is
the one parameter worth sharding: the configs add a `config.parallel.rules` entry that splits its
N_images axis over the `fsdp` mesh axis (`ssl_jax/partition.py`), and its Adam moments with it.
`method.num_instances` must be the train split's size (the pipeline's "index" field counts from 0);
the `instances_out_of_range` metric counts indices beyond it (they would be clipped).
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

# The classifier's N_images axis over the fsdp devices (kernel [D, N], bias [N]); prepend to the rules.
INSTANCE_RULES = ((r"instances/linear/kernel$", (None, "fsdp")), (r"instances/linear/bias$", ("fsdp",)))


class InstanceDiscrimination(OnlineBackboneEval):
    """`views`: 'global' [B, V, S, S, 3]; `index` [B] (config.dataset.fields must include 'index')."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        if "index" not in tuple(config.dataset.get("fields", ())):
            raise UserError("instance discrimination needs each image's index: set config.dataset.fields = ('index',)")
        cfg = config.method
        self.num_instances = cfg.num_instances
        self.label_smoothing = cfg.label_smoothing
        self.network = Network({"backbone": build_backbone(config.model, **backbone_kwargs(config)),
                                "instances": LinearHead(self.num_instances, compute_dtype(config))})

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params, stats = self.network.init(rng, batch["views"]["global"][:, 0])
        return MethodVariables(params, None, None, stats or None)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher, step
        views = batch["views"]["global"]
        num_views = views.shape[1]
        logits, new_stats = self.network.apply(params, model_state or {}, views.reshape((-1,) + views.shape[2:]),
                                               train=True, rng=rng)
        targets = jnp.repeat(batch["index"], num_views)  # image-major, as the reshape above
        loss = losses.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        metrics = {"instance_accuracy": jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32)),
                   "instances_out_of_range": jnp.sum(batch["index"] >= self.num_instances).astype(jnp.float32)}
        return loss, LossOutput(metrics, method_state, new_stats or None)

    def teacher_targets(self, params):
        return None
