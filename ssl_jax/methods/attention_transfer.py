"""Attention transfer (Li, Tian, Chen, Pathak and Chen, "On the Surprising Effectiveness of Attention
Transfer for Vision Transformers", NeurIPS 2024): a randomly initialised ViT trained on labels with
only the attention patterns of a frozen pre-trained ViT (alexlioralexli/attention-transfer,
`models_dual_vit.py` DualVisionTransformer, `engine_finetune.py`, `main_finetune.py`).

    x, y  = Mixup/CutMix(RandomErasing(images), smoothed one-hot labels)    (core/batch_augment.py)
    A_t   = the frozen teacher's attention weights in its first n = depth + end_layer blocks [n, B, H, T, T]
    copy:     the student's block i < n mixes its values with A_t[i] instead of its own softmax(q k^T);
              loss = soft-target CE(head(fc_norm(mean patch token)), y)
    distill:  the student computes its own attention A_s;
              loss = CE(...) + atd_weight sum_{i < n} mean_{b, h, q} sum_k -A_t[i] log A_s[i]

The teacher (`config.teacher`, a ViT of the student's depth, heads and tokens) runs with the
student's drop-path masks (DualVisionTransformer.get_drop_path_mask draws them once for both;
here both draw from the same rng over the same module paths). Evaluation: `class_logits`
(`--eval=classifier`, with the teacher's attention in copy mode, as the reference's model);
kNN and the probes read the student backbone's [CLS] alone.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.core.batch_augment import soft_cross_entropy, supervised_batch
from ssl_jax.errors import UserError
from ssl_jax.methods import frozen_teacher
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import LinearHead
from ssl_jax.models.network import Network

MODES = ("copy", "distill")  # main_finetune.py --mode (the attention-map modes)


def attention_distillation_loss(student_attention: jax.Array, teacher_attention: jax.Array) -> jax.Array:
    """DualVisionTransformer.forward's 'distill' loss from attention weights [n, B, H, T, T]: per block
    the mean over (B, H, queries) of the cross-entropy -sum_k A_t log A_s, summed over the n blocks.
    log A_s is floored at float32's smallest normal (a weight that underflowed to 0)."""
    log_student = jnp.log(jnp.maximum(student_attention.astype(jnp.float32), jnp.finfo(jnp.float32).tiny))
    per_block = -jnp.sum(teacher_attention.astype(jnp.float32) * log_student, axis=-1)
    return jnp.sum(jnp.mean(per_block.reshape(per_block.shape[0], -1), axis=1))


class AttentionTransfer(OnlineBackboneEval):
    """`views`: 'global' [B, 1, S, S, 3]; `label` [B]. params: backbone, fc_norm, head; teacher: the
    frozen ViT (`frozen_teacher`)."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        cfg = self.cfg = config.method
        if cfg.mode not in MODES:
            raise UserError(f"unknown method.mode {cfg.mode!r}; choose one of {MODES}")
        if "label" not in tuple(config.dataset.get("fields", ())):
            raise UserError("attention transfer trains on labels: set config.dataset.fields = ('label',)")
        teacher_cfg = config.get("teacher") or {}
        shape = ("name", "depth", "num_heads", "size", "patch_size", "num_register_tokens", "class_token")
        if config.model.name != "vit" or any(config.model.get(k) != teacher_cfg.get(k) for k in shape):
            raise UserError(f"attention transfer needs a ViT student and teacher of the same {', '.join(shape[1:])}: "
                            "compare config.model and config.teacher")
        self.num_classes = config.dataset.num_classes
        backbone = build_backbone(config.model, **backbone_kwargs(config))
        self.network = Network({"backbone": backbone})
        self.backbone = backbone
        self.fc_norm = nn.LayerNorm(1e-6, dtype=compute_dtype(config))  # models_dual_vit.py: fc_norm, global_pool
        # main_finetune.py: trunc_normal_(model.student.head.weight, std=0.02), bias 0 (_init_weights)
        self.head = LinearHead(self.num_classes, compute_dtype(config), kernel_init="normal_0.02")
        self.teacher = frozen_teacher.teacher_network(config, "attention transfer",
                                                      drop_path_rate=config.model.drop_path_rate)
        self.num_blocks = backbone.depth + cfg.end_layer  # forward: teacher_act[:teacher_depth + end_layer]
        if not 0 < self.num_blocks <= backbone.depth:
            raise UserError(f"method.end_layer={cfg.end_layer} leaves {self.num_blocks} of {backbone.depth} blocks to "
                            f"transfer; use a value in [{1 - backbone.depth}, 0]")

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        backbone_rng, norm_rng, head_rng, teacher_rng = jax.random.split(rng, 4)
        images = batch["views"]["global"][:, 0]
        dim = self.backbone.embed_dim
        params = {"backbone": self.backbone.init(backbone_rng, images)["params"],
                  "fc_norm": self.fc_norm.init(norm_rng, jnp.zeros((1, dim)))["params"],
                  "head": self.head.init(head_rng, jnp.zeros((1, dim)))["params"]}
        return MethodVariables(params, frozen_teacher.init_teacher(self.teacher, teacher_rng, images), None, None)

    def teacher_attention(self, teacher, images: jax.Array, rng: jax.Array | None) -> jax.Array:
        """The frozen teacher's attention weights of its first n blocks [n, B, H, T, T], no gradient;
        with rng, under the drop-path masks the student draws from the same rng."""
        _, attention = self.teacher.modules["backbone"].apply(
            {"params": teacher["params"]["backbone"]}, images, rng is not None, method="block_outputs",
            rngs=None if rng is None else {"drop_path": rng})
        return jax.lax.stop_gradient(attention[:self.num_blocks])

    def student(self, params, images: jax.Array, teacher_attention: jax.Array | None, rng: jax.Array | None):
        """The student on images [B, S, S, 3] (with the given attention in its first blocks, copy
        mode) -> (logits [B, C], its attention weights [L, B, H, T, T])."""
        tokens, attention = self.backbone.apply(
            {"params": params["backbone"]}, images, rng is not None,
            () if teacher_attention is None else teacher_attention, method="block_outputs",
            rngs=None if rng is None else {"drop_path": rng})
        pooled = tokens[-1][:, self.backbone.num_prefix_tokens:].mean(axis=1)  # x[:, 1:].mean(dim=1)
        features = self.fc_norm.apply({"params": params["fc_norm"]}, pooled)
        return self.head.apply({"params": params["head"]}, features).astype(jnp.float32), attention

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del step
        augment_rng, drop_rng = jax.random.split(rng)
        images, targets = supervised_batch(augment_rng, batch["views"]["global"][:, 0], batch["label"],
                                           self.num_classes, self.cfg)
        given = self.teacher_attention(teacher, images, drop_rng)
        copy = self.cfg.mode == "copy"
        logits, attention = self.student(params, images, given if copy else None, drop_rng)
        loss = classification = soft_cross_entropy(logits, targets)
        metrics = {"classification_loss": classification}
        if not copy:
            metrics["attention_loss"] = attention_distillation_loss(attention[:self.num_blocks], given)
            loss = loss + self.cfg.atd_weight * metrics["attention_loss"]
        return loss, LossOutput(metrics, method_state, model_state)

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """The student's class logits [B, C] of images [B, S, S, 3] (copy: with the teacher's attention)."""
        given = self.teacher_attention(state.teacher, images, None) if self.cfg.mode == "copy" else None
        return self.student(state.params, images, given, None)[0]

    def teacher_targets(self, params):
        return None
