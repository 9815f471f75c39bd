"""DeiT (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021): a classifier trained on labels, with a distillation token that learns from
a frozen teacher's predictions (facebookresearch/deit `losses.py` DistillationLoss, `models.py`
DistilledVisionTransformer, `main.py`).

    x, y      = Mixup/CutMix(RandomErasing(images), smoothed one-hot labels)   (core/batch_augment.py)
    z         = ViT(x): [CLS] and the distillation token (register 0), after the final norm
    base      = soft-target CE(head(z_cls), y)
    teacher   = frozen classifier on the same x (config.teacher + a Linear head; frozen_teacher.py)
    hard:  distill = CE(head_dist(z_dist), argmax teacher)
    soft:  distill = KL(softmax(teacher / tau) || softmax(head_dist(z_dist) / tau)) * tau^2 / (B C)
    loss      = (1 - alpha) base + alpha distill          ('none': base alone, no token, no teacher)

At evaluation the prediction is the mean of the two heads' logits (DistilledVisionTransformer.forward
in eval mode; `class_logits`); kNN and the probes read the [CLS] feature. With distillation 'none'
the student is any backbone (a ViT or a ResNet) with one Linear head: DeiT's supervised baseline,
and the way to train a teacher for another DeiT run here (`config.teacher_init_from` = its workdir).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.core.batch_augment import soft_cross_entropy, supervised_batch
from ssl_jax.errors import UserError
from ssl_jax.methods import frozen_teacher
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import LinearHead
from ssl_jax.models.network import Network

DISTILLATION_TYPES = ("none", "soft", "hard")  # main.py --distillation-type


def deit_distillation_loss(dist_logits: jax.Array, teacher_logits: jax.Array, kind: str, tau: float) -> jax.Array:
    """losses.py DistillationLoss's distillation term of the distillation head's logits [B, C]
    against the teacher's [B, C]: 'soft' is KL(teacher || student) at temperature tau, summed and
    multiplied by tau^2 / (B C) (`outputs_kd.numel()`); 'hard' the cross-entropy with the teacher's argmax."""
    dist_logits = dist_logits.astype(jnp.float32)
    if kind == "hard":
        return losses.cross_entropy(dist_logits, jnp.argmax(teacher_logits, axis=-1))
    log_student = jax.nn.log_softmax(dist_logits / tau, axis=-1)
    log_teacher = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
    return jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student)) * tau**2 / dist_logits.size


class DeiT(OnlineBackboneEval):
    """`views`: 'global' [B, 1, S, S, 3]; `label` [B]. params: backbone, head (+ head_dist when
    distilling); teacher: the frozen classifier (`frozen_teacher`), None with 'none'."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        cfg = self.cfg = config.method
        if cfg.distillation_type not in DISTILLATION_TYPES:
            raise UserError(f"unknown method.distillation_type {cfg.distillation_type!r}; choose one of "
                            f"{DISTILLATION_TYPES}")
        if "label" not in tuple(config.dataset.get("fields", ())):
            raise UserError("DeiT trains on labels: set config.dataset.fields = ('label',)")
        self.distill = cfg.distillation_type != "none"
        if self.distill and (config.model.name != "vit" or config.model.get("num_register_tokens", 0) != 1):
            raise UserError("DeiT's distillation token is the ViT's one register token: set config.model.name='vit' "
                            "and config.model.num_register_tokens=1 (or method.distillation_type='none')")
        self.num_classes = config.dataset.num_classes
        dtype = compute_dtype(config)
        self.network = Network({"backbone": build_backbone(config.model, **backbone_kwargs(config)),
                                "head": LinearHead(self.num_classes, dtype, kernel_init="normal_0.02")})
        self.backbone = self.network.modules["backbone"]
        self.dist_head = LinearHead(self.num_classes, dtype, kernel_init="normal_0.02")
        self.teacher = (frozen_teacher.teacher_network(config, "DeiT", {"head": LinearHead(self.num_classes)})
                        if self.distill else None)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        student_rng, dist_rng, teacher_rng = jax.random.split(rng, 3)
        images = batch["views"]["global"][:, 0]
        params, stats = self.network.init(student_rng, images)
        if not self.distill:
            return MethodVariables(params, None, None, stats or None)
        params["head_dist"] = self.dist_head.init(dist_rng, jnp.zeros((1, self.backbone.embed_dim)))["params"]
        return MethodVariables(params, frozen_teacher.init_teacher(self.teacher, teacher_rng, images), None, None)

    def logits(self, params, images: jax.Array, train: bool, rng: jax.Array | None = None):
        """The distilled ViT on images [B, S, S, 3] -> (class logits [B, C], distillation logits [B, C])."""
        tokens = self.backbone.apply({"params": params["backbone"]}, images, train, method="tokens",
                                     rngs={"drop_path": rng} if train else None)
        return (self.network.modules["head"].apply({"params": params["head"]}, tokens[:, 0]).astype(jnp.float32),
                self.dist_head.apply({"params": params["head_dist"]}, tokens[:, 1]).astype(jnp.float32))

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del step
        augment_rng, drop_rng = jax.random.split(rng)
        images, targets = supervised_batch(augment_rng, batch["views"]["global"][:, 0], batch["label"],
                                           self.num_classes, self.cfg)
        if not self.distill:
            logits, new_stats = self.network.apply(params, model_state or {}, images, train=True, rng=drop_rng)
            base = soft_cross_entropy(logits.astype(jnp.float32), targets)
            return base, LossOutput({"base_loss": base}, method_state, new_stats or None)
        logits, dist_logits = self.logits(params, images, True, drop_rng)
        base = soft_cross_entropy(logits, targets)
        teacher_logits = frozen_teacher.teacher_outputs(self.teacher, teacher, images)
        distill = deit_distillation_loss(dist_logits, teacher_logits, self.cfg.distillation_type,
                                         self.cfg.distillation_tau)
        alpha = self.cfg.distillation_alpha
        agreement = jnp.mean((jnp.argmax(dist_logits, -1) == jnp.argmax(teacher_logits, -1)).astype(jnp.float32))
        metrics = {"base_loss": base, "distillation_loss": distill, "teacher_agreement": agreement}
        return (1.0 - alpha) * base + alpha * distill, LossOutput(metrics, method_state, model_state)

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """Class logits [B, C] of images [B, S, S, 3] from a TrainState: the head's, or with the
        distillation token the mean of both heads' (DistilledVisionTransformer in eval mode)."""
        if not self.distill:
            return self.network.apply(state.params, state.model_state or {}, images, train=False)[0]
        logits, dist_logits = self.logits(state.params, images, False)
        return (logits + dist_logits) / 2

    def teacher_targets(self, params):
        return None
