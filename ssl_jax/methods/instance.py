"""Parametric instance discrimination for ViTs on small datasets (Cao, Yu and Wu, "Training Vision
Transformers with Only 2040 Images", ECCV 2022).

    every training image is its own class: target = batch["index"], its position in the train split
    for each crop group g (the global crops, then the local crops, as the reference's two batches):
        x, partner, lam = CutMix(crops of g)    one Beta(a, a) lambda per group, lam = max(lam, 1 - lam),
                                                partners a random permutation, lam corrected to the box
        logits = instances(backbone(x))         instances: a linear layer [D, N_images] (+ bias [N_images])
        L_g = lam CE(logits, target) + (1 - lam) CE(logits, target[partner])
    loss = sum_g L_g

then fine-tune the backbone with labels (`python -m ssl_jax.evaluate --eval=finetune`); the paper
pretrains at a lower resolution than it fine-tunes. The classifier grows with the dataset, so it is
the one parameter worth sharding: the configs add a `config.parallel.rules` entry that splits its
N_images axis over the `fsdp` mesh axis (`ssl_jax/sharding.py`), and its Adam moments with it.
`method.num_instances` must be the train split's size (the pipeline's "index" field counts from 0);
the `instances_out_of_range` metric counts indices beyond it (they would be clipped). Reference:
CupidJay/Training-Vision-Transformers-with-only-2040-images `main_deit_instance_discrimination.py`
(`train`) and `utils/mixup_utils.py` (`cutmix_data`, `rand_bbox`, `mixup_criterion`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.core.batch_augment import cutmix
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import MLP
from ssl_jax.models.network import Network

# The classifier's N_images axis over the fsdp devices (kernel [D, N], bias [N]); prepend to the rules.
INSTANCE_RULES = ((r"instances/mlp_0/kernel$", (None, "fsdp")), (r"instances/mlp_0/bias$", ("fsdp",)))


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
        self.cutmix_alpha = cfg.cutmix_alpha  # 0: no CutMix
        self.network = Network({"backbone": build_backbone(config.model, **backbone_kwargs(config))})
        # One Linear(D, N) with trunc_normal(.02) and zero bias: the reference's `head` (_init_weights).
        self.head = MLP((self.num_instances,), compute_dtype(config))

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        backbone_rng, head_rng = jax.random.split(rng)
        params, stats = self.network.init(backbone_rng, batch["views"]["global"][:, 0])
        features, _ = self.network.apply(params, stats, batch["views"]["global"][:1, 0], train=False)
        params["instances"] = self.head.init(head_rng, features)["params"]
        return MethodVariables(params, None, None, stats or None)

    def group_loss(self, params, model_state, crops: jax.Array, index: jax.Array, rng: jax.Array):
        """crops [B, V, S, S, 3] of one group, index [B] -> (loss, logits, targets, new BN stats)."""
        mix_rng, box_rng, perm_rng, drop_rng = jax.random.split(rng, 4)
        images = crops.reshape((-1,) + crops.shape[2:])  # image-major, as the targets
        targets = jnp.repeat(index, crops.shape[1])
        partner, lam = jnp.arange(images.shape[0]), jnp.asarray(1.0)
        if self.cutmix_alpha:
            lam = jax.random.beta(mix_rng, self.cutmix_alpha, self.cutmix_alpha)
            partner = jax.random.permutation(perm_rng, images.shape[0])
            images, lam = cutmix(box_rng, images, partner, jnp.maximum(lam, 1.0 - lam))
        features, new_stats = self.network.apply(params, model_state or {}, images, train=True, rng=drop_rng)
        logits = self.head.apply({"params": params["instances"]}, features)
        loss = (lam * losses.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
                + (1.0 - lam) * losses.cross_entropy(logits, targets[partner], label_smoothing=self.label_smoothing))
        return loss, logits, targets, new_stats

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher, step
        groups = [g for g in ("global", "local") if g in batch["views"] and batch["views"][g].shape[1]]
        total, hits = 0.0, []
        for group, group_rng in zip(groups, jax.random.split(rng, len(groups))):
            loss, logits, targets, model_state = self.group_loss(params, model_state, batch["views"][group],
                                                                 batch["index"], group_rng)
            total = total + loss
            hits.append(jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32)))
        metrics = {"instance_accuracy": hits[0],  # of the global crops (after CutMix, as the reference logs)
                   "instances_out_of_range": jnp.sum(batch["index"] >= self.num_instances).astype(jnp.float32)}
        return total, LossOutput(metrics, method_state, model_state or None)

    def teacher_targets(self, params):
        return None
