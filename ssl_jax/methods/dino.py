"""DINO: self-distillation with no labels (Caron et al., 2021).

    student sees all crops, teacher (EMA of the student) sees the global crops
    t = teacher_head(teacher_backbone(global crops))                    # [B, 2, K]
    s = student_head(student_backbone(global + local crops))            # [B, 2+L, K]
    q = softmax((t - center) / tau_t)            (no gradient)
    loss = mean over pairs (i != j) of  -sum_k q_i log softmax(s_j / tau_s)
    center <- m * center + (1 - m) * mean_batch(t)
    teacher <- lambda * teacher + (1 - lambda) * student   (done by the train step)

Reproduces facebookresearch/dino's `main_dino.py`; the hyper-parameters live in
`configs/dino_small.py`. `DinoNetworks` is shared with Daino (`methods/daino.py`);
the init, multi-crop forward and evaluation with iBOT and DINOv2 (`methods/distill.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import distill
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import DINOHead
from ssl_jax.optim import per_epoch_linear_warmup


def build_dino_head(config) -> DINOHead:
    """DINO's projection head from config.method (out_dim K prototypes)."""
    cfg = config.method
    return DINOHead(cfg.out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_nlayers,
                    cfg.norm_last_layer, compute_dtype(config))


def dino_teacher_temp(cfg, steps_per_epoch: int):
    """`main_dino.py`'s teacher_temp_schedule: linear warm-up over whole epochs, then constant."""
    return per_epoch_linear_warmup(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs,
                                   steps_per_epoch)


def init_dino(backbone, head: DINOHead, rng: jax.Array, batch: dict) -> MethodVariables:
    """params {'backbone', 'head'}, the teacher (a copy of all of them) and the center [K] = 0."""
    params, teacher = distill.init_student_teacher(
        backbone, lambda rng, features: {"head": head.init(rng, features)["params"]}, rng,
        batch["views"]["global"][:1, 0])
    return MethodVariables(params, teacher, {"center": jnp.zeros((head.out_dim,), jnp.float32)}, None)


def student_teacher_logits(backbone, head, params, teacher, views: dict, rng: jax.Array):
    """Student logits [B, G+L, K] on every crop (global first), teacher logits [B, G, K] on the
    global crops (eval mode, no gradient)."""
    student_groups = [views["global"]] + ([views["local"]] if "local" in views else [])
    student = distill.multicrop_logits(backbone, head, params, student_groups, rng, train=True)
    teacher = distill.multicrop_logits(backbone, head, teacher, [views["global"]], rng, train=False)
    return student, jax.lax.stop_gradient(teacher)


def dino_objective(student_logits, teacher_logits, teacher_probs, center, student_temp: float,
                   center_momentum: float):
    """(loss, new center, metrics): the cross-entropy of every (teacher crop, other student crop)
    pair against teacher_probs [B, G, K], and the center's EMA over the teacher logits [B, G, K]."""
    loss = losses.dino_cross_entropy(student_logits, teacher_probs, student_temp)
    new_center = losses.ema_center(center, teacher_logits, center_momentum)
    metrics = {"center_norm": jnp.linalg.norm(new_center),
               **distill.distillation_metrics(student_logits, teacher_probs, student_temp)}
    return loss, new_center, metrics


class DinoNetworks:
    """DINO's backbone, head and temperatures from a config, and its loss with the teacher's
    targets as a parameter: what DINO and Daino (labels as targets where known) both run."""

    def __init__(self, config, steps_per_epoch: int, method_name: str):
        distill.check_vit(config, method_name)
        self.backbone = build_backbone(config.model, **backbone_kwargs(config))
        self.head = build_dino_head(config)
        self.student_temp = config.method.student_temp
        self.center_momentum = config.method.center_momentum
        self.teacher_temp = dino_teacher_temp(config.method, steps_per_epoch)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        return init_dino(self.backbone, self.head, rng, batch)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step, targets=lambda probs: probs):
        """DINO's loss; `targets` maps the teacher's probabilities [B, G, K] to the targets."""
        student_logits, teacher_logits = student_teacher_logits(self.backbone, self.head, params, teacher,
                                                                batch["views"], rng)
        teacher_temp = self.teacher_temp(step)
        teacher_probs = targets(losses.dino_teacher_probs(teacher_logits, method_state["center"], teacher_temp))
        loss, center, metrics = dino_objective(student_logits, teacher_logits, teacher_probs, method_state["center"],
                                               self.student_temp, self.center_momentum)
        return loss, LossOutput({"teacher_temp": teacher_temp, **metrics}, {"center": center}, model_state)


class DINO(distill.TeacherBackboneEval):
    """The DINO method. `views` in the batch: 'global' [B, 2, H, W, 3], 'local' [B, L, h, w, 3]."""

    ema_teacher = True
    state_accumulation = "mean"  # the center, an EMA of batch means: the micro-batches' mean is the batch's

    def __init__(self, config, steps_per_epoch: int):
        self.dino = DinoNetworks(config, steps_per_epoch, "DINO")
        self.backbone, self.head = self.dino.backbone, self.dino.head

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        return self.dino.init(rng, batch)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        return self.dino.loss(params, teacher, method_state, model_state, batch, rng, step)

    def teacher_targets(self, params):
        return params
