"""UNIC (Sariyildiz, Weinzaepfel, Lucas, Larlus and Kalantidis, "UNIC: Universal Classification Models
via Multi-teacher Distillation", ECCV 2024): one ViT distilled from several frozen teachers (naver/unic
`modeling/unic.py` UNIC, LP, AdaptMLP; `modeling/losses.py`; `modeling/teacher_dropping.py`;
`teachers/__init__.py` get_teacher_output; `utils.py` standard_normalize; `main_unic.py`).

    z_l      = the student's block l output ([CLS] and patch tokens, before the final norm), l = 1..L
    s_t      = sum_l MLP_{t,l}(z_l)      a ladder of projectors per teacher t, for [CLS] and for patches
    y_t      = (teacher t's normed [CLS] / patch tokens - mean_t) / (std_t + eps), with EMA statistics
    L_t[b]   = mean over {cls, patch} of 0.5 (1 - cos(s_t, y_t)) + 0.5 smooth-L1(s_t, y_t) (patches: token mean)
    c[t, b]  = 1 for the teacher with the largest L_t[b]; each other one kept with probability 1 - p
    loss     = sum_{t, b} c[t, b] L_t[b] / sum c                                   (teacher dropping)

The standardisation statistics (`method_state`) are the batch's mean and std (over the batch, and
the tokens for patches) folded into an EMA whose weight on the new batch follows a cosine from
1.0 to 0.001 over training; the teacher outputs are standardised by the statistics before this
step's update. Evaluation reads the student encoder's normed [CLS] (kNN, probes).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import optim
from ssl_jax.errors import UserError
from ssl_jax.methods import frozen_teacher
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone
from ssl_jax.models.heads import LINEAR_INITS
from ssl_jax.models.network import Network
from ssl_jax.models.vit import gelu

TOKEN_TYPES = ("cls", "patch")
EPS = 1e-6  # utils.py standard_normalize eps


class Ladder(nn.Module):
    """LP's heads for one teacher and token type: block l's output [L, ..., D] -> sum_l AdaptMLP_l
    -> [..., D_t]; AdaptMLP = Linear(D, hidden) -> GELU -> Linear(hidden, D_t) (the last block's
    hidden width `last_hidden_dim`), trunc_normal(.02) weights, zero biases."""

    out_dim: int
    hidden_dim: int
    last_hidden_dim: int

    @nn.compact
    def __call__(self, blocks: jax.Array) -> jax.Array:
        dense = lambda features, name: nn.Dense(features, kernel_init=LINEAR_INITS["normal_0.02"], name=name)  # noqa: E731
        total = 0.0
        for l in range(blocks.shape[0]):
            hidden = self.last_hidden_dim if l == blocks.shape[0] - 1 else self.hidden_dim
            total = total + dense(self.out_dim, f"fc2_{l}")(gelu(dense(hidden, f"fc1_{l}")(blocks[l])))
        return total


def standardize(x: jax.Array, stats: dict, momentum: jax.Array) -> tuple[jax.Array, dict]:
    """utils.py standard_normalize with EMA statistics: x [B, D] or [B, N, D] -> ((x - mean_ema) /
    (std_ema + eps), the statistics updated with the batch's mean and unbiased std (+ eps), taken
    over every axis but the last, at weight `momentum` on the batch)."""
    axes = tuple(range(x.ndim - 1))
    mean, std = jnp.mean(x, axes), jnp.std(x, axes, ddof=1) + EPS
    out = (x - stats["mean"]) / (stats["std"] + EPS)
    return out, {"mean": stats["mean"] * (1 - momentum) + mean * momentum,
                 "std": stats["std"] * (1 - momentum) + std * momentum}


def distillation_loss(student: jax.Array, target: jax.Array, lam_cos: float, lam_sl1: float) -> jax.Array:
    """losses.py loss_per_teacher for one token type: lam_cos (1 - cosine) + lam_sl1 smooth-L1 (beta 1,
    mean over features), [B, D] -> [B] or [B, N, D] -> [B] (mean over tokens)."""
    student, target = student.astype(jnp.float32), target.astype(jnp.float32)
    norms = jnp.maximum(jnp.linalg.norm(student, axis=-1) * jnp.linalg.norm(target, axis=-1), 1e-8)
    cosine = jnp.sum(student * target, axis=-1) / norms  # F.cosine_similarity, eps 1e-8
    diff = jnp.abs(student - target)
    smooth_l1 = jnp.mean(jnp.where(diff < 1.0, 0.5 * diff**2, diff - 0.5), axis=-1)
    loss = lam_cos * (1.0 - cosine) + lam_sl1 * smooth_l1
    return loss.reshape(loss.shape[0], -1).mean(axis=1)


def teacher_dropping(losses: jax.Array, drop_prob: float, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """teacher_dropping.py aggregate_losses: losses [T, B] -> (sum(c * losses) with c fixed, c [T, B]):
    per image the teacher with the largest loss is kept, every other one dropped with probability
    drop_prob, and c = kept / (number kept over all teachers and images)."""
    kept = (jnp.arange(losses.shape[0])[:, None] == jnp.argmax(losses, axis=0)[None]) | (
        jax.random.uniform(rng, losses.shape) >= drop_prob)
    coeffs = kept.astype(jnp.float32) / jnp.sum(kept)
    return jnp.sum(jax.lax.stop_gradient(coeffs) * losses), coeffs


class UNIC(OnlineBackboneEval):
    """`views`: 'global' [B, 1, S, S, 3]. params: backbone, ladder ({teacher: {cls, patch}});
    teacher: {name: frozen ViT}; method_state: {name: {cls, patch: {mean, std}}}."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        cfg = self.cfg = config.method
        if config.model.name != "vit" or "teacher" not in config:
            raise UserError("UNIC distils ViT teachers into a ViT: set config.model.name='vit' and config.teacher "
                            "= {name: a ViT model section}")
        self.names = sorted(config.teacher.keys())  # main_unic.py: args.teachers sorted
        self.teachers = {n: frozen_teacher.teacher_network(config, "UNIC", name=n) for n in self.names}
        if any(t.modules["backbone"].__class__.__name__ != "VisionTransformer" for t in self.teachers.values()):
            raise UserError("UNIC's teachers are ViTs (their [CLS] and patch tokens): set each config.teacher "
                            "section's name to 'vit'")
        self.backbone = build_backbone(config.model, **backbone_kwargs(config))
        self.network = Network({"backbone": self.backbone})
        self.ladders = {n: Ladder(self.teachers[n].modules["backbone"].embed_dim, cfg.hidden_dim, cfg.last_hidden_dim)
                        for n in self.names}
        # main_unic.py tnorm_ema_schedule: cosine_scheduler(--tnorm_ema_momentum_start 1.0, _end 0.001), per step
        self.momentum = optim.cosine_schedule(cfg.tnorm_momentum, cfg.tnorm_momentum_end,
                                              config.num_epochs * steps_per_epoch, 0)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        images = batch["views"]["global"][:, 0]
        backbone_rng, ladder_rng, teacher_rng = jax.random.split(rng, 3)
        params = {"backbone": self.backbone.init(backbone_rng, images)["params"], "ladder": {}}
        blocks = jnp.zeros((self.backbone.depth, 1, self.backbone.embed_dim))
        teachers, stats = {}, {}
        for i, name in enumerate(self.names):
            ladder_rngs = jax.random.split(jax.random.fold_in(ladder_rng, i))
            params["ladder"][name] = {t: self.ladders[name].init(r, blocks)["params"]
                                      for t, r in zip(TOKEN_TYPES, ladder_rngs)}
            teachers[name] = frozen_teacher.init_teacher(self.teachers[name], jax.random.fold_in(teacher_rng, i), images)
            dim = self.ladders[name].out_dim  # builder.py: mean 0, std 1
            stats[name] = {t: {"mean": jnp.zeros((dim,)), "std": jnp.ones((dim,))} for t in TOKEN_TYPES}
        return MethodVariables(params, teachers, stats, None)

    def student(self, params, images: jax.Array, rng: jax.Array | None) -> dict:
        """UNIC.forward: images [B, S, S, 3] -> {teacher: {'cls': [B, D_t], 'patch': [B, N, D_t]}}."""
        blocks, _ = self.backbone.apply({"params": params["backbone"]}, images, rng is not None,
                                        method="block_outputs", rngs=None if rng is None else {"drop_path": rng})
        tokens = {"cls": blocks[:, :, 0], "patch": blocks[:, :, self.backbone.num_prefix_tokens:]}
        return {n: {t: self.ladders[n].apply({"params": params["ladder"][n][t]}, tokens[t]) for t in TOKEN_TYPES}
                for n in self.names}

    def targets(self, teacher, method_state, images: jax.Array, momentum) -> tuple[dict, dict]:
        """get_teacher_output: each teacher's normed [CLS] [B, D_t] and patch tokens [B, N, D_t],
        standardised; and the updated statistics."""
        out, stats = {}, {}
        for n in self.names:
            backbone = self.teachers[n].modules["backbone"]
            tokens = backbone.apply({"params": teacher[n]["params"]["backbone"]}, images, method="tokens")
            tokens = jax.lax.stop_gradient(tokens.astype(jnp.float32))
            raw = {"cls": tokens[:, 0], "patch": tokens[:, backbone.num_prefix_tokens:]}
            out[n], stats[n] = {}, {}
            for t in TOKEN_TYPES:
                out[n][t], stats[n][t] = standardize(raw[t], method_state[n][t], momentum)
        return out, stats

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        drop_rng, path_rng = jax.random.split(rng)
        images = batch["views"]["global"][:, 0]
        momentum = self.momentum(step)
        targets, new_stats = self.targets(teacher, method_state, images, momentum)
        outputs = self.student(params, images, path_rng)
        cfg = self.cfg
        per_teacher = jnp.stack([jnp.mean(jnp.stack([
            distillation_loss(outputs[n][t], targets[n][t], cfg.lam_cos, cfg.lam_sl1) for t in TOKEN_TYPES]), axis=0)
            for n in self.names])  # [T, B]
        loss, coeffs = teacher_dropping(per_teacher, cfg.teacher_drop_prob, drop_rng)
        metrics = {"tnorm_momentum": momentum}
        for i, n in enumerate(self.names):
            metrics[f"loss_{n}"] = jnp.mean(per_teacher[i])
            metrics[f"coeff_{n}"] = jnp.sum(coeffs[i])
        return loss, LossOutput(metrics, new_stats, model_state)

    def teacher_targets(self, params):
        return None
