"""Frozen teachers: a pretrained network of any architecture that a distillation method reads and
never trains (DeiT, attention transfer). No method class, only the pieces they share.

The teacher is `config.teacher` (a `model` section: ViT or ResNet, as `config.model`) followed by
the method's heads, a `Network` whose weights live in `TrainState.teacher` as
{"params": {module: ...}, "model_state": {module: batch_stats}} (several teachers, UNIC: {name: that},
`config.teacher` and `config.teacher_init_from` then map names to sections and weights): the step hands them to the loss
as a plain input (no gradient, no optimiser state) and, the method declaring `ema_teacher = False`,
never updates them; FSDP rules shard `teacher/params/...` like the student's parameters. The
weights come from `config.teacher_init_from` (an ssl_jax workdir or checkpoint step: its EMA
teacher where it has one, else its params; or an official checkpoint), loaded at the run's
fresh start by `ssl_jax.init_from.initialize_teacher`, which refuses a source that does not fill
every teacher array. The teacher runs in evaluation mode (BatchNorm running averages, no drop-path
unless the method shares the student's masks).
"""
from __future__ import annotations

import jax

from ssl_jax.errors import UserError
from ssl_jax.models.backbones import backbone_kwargs, build_backbone
from ssl_jax.models.network import Network


def teacher_network(config, method: str, heads: dict | None = None, drop_path_rate: float = 0.0,
                    name: str = "") -> Network:
    """The frozen teacher: config.teacher's backbone (config.teacher[name] of a method with several
    teachers; a ViT with `drop_path_rate`, which only a method that shares the student's drop-path
    masks sets), then `heads` {name: module}. One clear line when the run names no teacher weights."""
    weights = config.get("teacher_init_from")
    if "teacher" not in config or not (weights[name] if name and weights else weights):
        flag = f"teacher_init_from.{name}" if name else "teacher_init_from"
        raise UserError(f"{method} distils a frozen teacher: set config.teacher (its model section) and "
                        f"--config.{flag}=<ssl_jax workdir | checkpoint file>")
    model_cfg = (config.teacher[name] if name else config.teacher).copy_and_resolve_references()
    if model_cfg.name == "vit":
        model_cfg.drop_path_rate = drop_path_rate
    backbone = build_backbone(model_cfg, **backbone_kwargs(config))
    return Network({"backbone": backbone, **(heads or {})})


def init_teacher(network: Network, rng: jax.Array, images: jax.Array) -> dict:
    """Fresh teacher variables {"params", "model_state"} from images [1, H, W, 3]; the run replaces
    every array by config.teacher_init_from's before the first step."""
    params, stats = network.init(rng, images)
    return {"params": params, "model_state": stats}


def teacher_outputs(network: Network, teacher: dict, images: jax.Array, upto: str | None = None) -> jax.Array:
    """The frozen teacher on images [B, H, W, 3] in evaluation mode, through module `upto` (default
    all): [B, ...], float32, without gradient."""
    out, _ = network.apply(teacher["params"], teacher["model_state"], images, train=False, upto=upto)
    return jax.lax.stop_gradient(out.astype(jax.numpy.float32))
