"""DINO: self-distillation with no labels (Caron et al., 2021).

    student sees all crops, teacher (EMA of the student) sees the global crops
    t = teacher_head(teacher_backbone(global crops))                    # [B, 2, K]
    s = student_head(student_backbone(global + local crops))            # [B, 2+L, K]
    q = softmax((t - center) / tau_t)            (no gradient)
    loss = mean over pairs (i != j) of  -sum_k q_i log softmax(s_j / tau_s)
    center <- m * center + (1 - m) * mean_batch(t)
    teacher <- lambda * teacher + (1 - lambda) * student   (done by the train step)

Reproduces facebookresearch/dino's `main_dino.py`; the hyper-parameters live in
`configs/dino_small.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import DINOHead
from ssl_jax.models.multicrop import apply_per_resolution
from ssl_jax.optim import per_epoch_linear_warmup


class DINO:
    """The DINO method. `views` in the batch: 'global' [B, 2, H, W, 3], 'local' [B, L, h, w, 3]."""

    ema_teacher = True
    state_accumulation = "mean"  # the center, an EMA of batch means: the micro-batches' mean is the batch's

    def __init__(self, config, steps_per_epoch: int):
        cfg = config.method
        if config.model.name != "vit":
            raise UserError(f"DINO here supports config.model.name='vit', got {config.model.name!r}")
        self.backbone = build_backbone(config.model, **backbone_kwargs(config))
        self.head = DINOHead(cfg.out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_nlayers,
                             cfg.norm_last_layer, compute_dtype(config))
        self.student_temp = cfg.student_temp
        self.center_momentum = cfg.center_momentum
        self.teacher_temp = per_epoch_linear_warmup(cfg.warmup_teacher_temp, cfg.teacher_temp,
                                                    cfg.warmup_teacher_temp_epochs, steps_per_epoch)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        backbone_rng, head_rng = jax.random.split(rng)
        image = batch["views"]["global"][:1, 0]
        backbone = self.backbone.init(backbone_rng, image)["params"]
        features = self.backbone.apply({"params": backbone}, image)
        head = self.head.init(head_rng, features)["params"]
        params = {"backbone": backbone, "head": head}
        # The teacher starts as an exact copy of the student (load_state_dict in the reference).
        teacher = jax.tree.map(jnp.copy, params)
        center = jnp.zeros((self.head.out_dim,), jnp.float32)
        return MethodVariables(params, teacher, {"center": center}, None)

    def _logits(self, params, view_groups, rng, train: bool) -> jax.Array:
        """Backbone once per resolution, then the head once on all [CLS] tokens: [B, V, K]."""

        def backbone(images, group_rng):
            return self.backbone.apply({"params": params["backbone"]}, images, train=train,
                                       rngs={"drop_path": group_rng} if train else None)

        cls = apply_per_resolution(backbone, view_groups, rng)
        return self.head.apply({"params": params["head"]}, cls)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        views = batch["views"]
        student_groups = [views["global"]] + ([views["local"]] if "local" in views else [])
        student_logits = self._logits(params, student_groups, rng, train=True)
        teacher_logits = jax.lax.stop_gradient(self._logits(teacher, [views["global"]], rng, train=False))

        center = method_state["center"]
        teacher_temp = self.teacher_temp(step)
        teacher_probs = self.targets(losses.dino_teacher_probs(teacher_logits, center, teacher_temp), batch)
        loss = losses.dino_cross_entropy(student_logits, teacher_probs, self.student_temp)
        new_center = losses.ema_center(center, teacher_logits, self.center_momentum)

        student_probs = jax.nn.softmax(student_logits.astype(jnp.float32) / self.student_temp, axis=-1)
        teacher_entropy = losses.mean_entropy(teacher_probs)
        metrics = {
            "teacher_temp": teacher_temp,
            "center_norm": jnp.linalg.norm(new_center),
            "teacher_entropy": teacher_entropy,
            "student_entropy": losses.mean_entropy(student_probs),
            # KL(teacher || uniform) = log K - H(teacher): ~0 when the teacher is uniform
            # (collapse by centering), log K when it is one-hot (collapse by sharpening).
            "teacher_kl_uniform": jnp.log(float(self.head.out_dim)) - teacher_entropy,
        }
        return loss, LossOutput(metrics, {"center": new_center}, model_state)

    def targets(self, teacher_probs: jax.Array, batch: dict) -> jax.Array:
        """What the student crops predict [B, V_t, K]: the teacher's distributions (Daino overrides)."""
        del batch
        return teacher_probs

    def teacher_targets(self, params):
        return params

    def eval_variables(self, state):
        """DINO reports kNN / linear results on the teacher backbone."""
        return state.teacher["backbone"]

    def features(self, backbone_params, model_state, images: jax.Array) -> jax.Array:
        """[CLS] features [B, D] of the frozen backbone."""
        del model_state
        return self.backbone.apply({"params": backbone_params}, images).astype(jnp.float32)
