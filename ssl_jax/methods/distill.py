"""Self-distillation pieces that DINO, Daino, iBOT and DINOv2 share: functions and one evaluation
mixin, no method class. Each method file composes them in the order of its paper's algorithm.

Shapes: B images, G global crops, L local crops, V = G + L crops, N patches of a global crop,
P patch tokens per crop that reach the heads (iBOT: all N; DINOv2: the masked ones), D the
backbone width, K (K_p) the [CLS] (patch) head outputs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.models.multicrop import apply_per_resolution


def check_vit(config, method: str, mask_token: bool = False) -> None:
    """A ViT backbone, with a learned mask token when the student's patches are masked."""
    if config.model.name != "vit":
        raise UserError(f"{method} here supports config.model.name='vit', got {config.model.name!r}")
    if mask_token and not config.model.get("mask_token"):
        raise UserError(f"{method} masks student patches with a learned token: set "
                        "config.model.mask_token='zeros' (the references' init)")


class TeacherBackboneEval:
    """`eval_variables` / `features` of a method whose EMA teacher's ViT `self.backbone` is the one
    evaluated: the references report kNN and linear results on the teacher."""

    def eval_variables(self, state):
        return state.teacher["backbone"]

    def features(self, backbone_params, model_state, images: jax.Array) -> jax.Array:
        """[CLS] features [B, D] of the frozen backbone."""
        del model_state
        return self.backbone.apply({"params": backbone_params}, images).astype(jnp.float32)


def init_student_teacher(backbone, init_heads: Callable, rng: jax.Array, images: jax.Array,
                         teacher_targets: Callable = lambda params: params):
    """(params, teacher) from images [1, H, W, 3]: params = {'backbone', **init_heads(rng, features
    [1, D])}; the teacher starts as an exact copy of the sub-tree it tracks (load_state_dict in
    the references)."""
    backbone_rng, head_rng = jax.random.split(rng)
    backbone_params = backbone.init(backbone_rng, images)["params"]
    features = backbone.apply({"params": backbone_params}, images)
    params = {"backbone": backbone_params, **init_heads(head_rng, features)}
    return params, jax.tree.map(jnp.copy, teacher_targets(params))


def multicrop_logits(backbone, head, params, view_groups: Sequence[jax.Array], rng: jax.Array,
                     train: bool) -> jax.Array:
    """DINO's `MultiCropWrapper`: the backbone once per crop resolution, then `params['head']` once
    on all [CLS] tokens. view_groups: [B, V_g, H_g, W_g, 3] arrays -> logits [B, sum_g V_g, K]."""

    def cls(images, group_rng):
        return backbone.apply({"params": params["backbone"]}, images, train=train,
                              rngs={"drop_path": group_rng} if train else None)

    return head.apply({"params": params["head"]}, apply_per_resolution(cls, view_groups, rng))


def crop_tokens(backbone, backbone_params, images: jax.Array, mask: jax.Array | None, rng: jax.Array | None,
                train: bool) -> tuple[jax.Array, jax.Array]:
    """Crops [B, V, H, W, 3] (patches swapped for the mask token where mask [B, V, N] is True) ->
    ([CLS] [B, V, D], patch tokens [B, V, N, D]), both after the final norm (registers dropped)."""
    batch, views = images.shape[:2]
    flat_mask = None if mask is None else mask.reshape(batch * views, -1)
    variables = {"params": backbone_params}
    tokens = backbone.apply(variables, images.reshape((batch * views,) + images.shape[2:]), flat_mask, method="embed")
    tokens = backbone.apply(variables, tokens, train, method="encode", rngs={"drop_path": rng} if train else None)
    tokens = tokens.reshape((batch, views) + tokens.shape[1:])
    return tokens[:, :, 0], tokens[:, :, backbone.num_prefix_tokens:]


def select_patches(x: jax.Array, indices: jax.Array | None) -> jax.Array:
    """The patch entries [B, G, P, ...] at indices [B, G, P] of x [B, G, N, ...]; all N when None."""
    if indices is None:
        return x
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 3)), axis=2)


def masked_crops_forward(backbone, heads: Callable, params, teacher, views: dict, mask: jax.Array,
                         indices: jax.Array | None, global_rng: jax.Array, local_rng: jax.Array) -> dict:
    """iBOT's and DINOv2's networks: the teacher on the unmasked global crops, the student on the
    masked global crops and ([CLS] only) on the local crops; `heads(params, cls, patches, teacher)
    -> (cls logits, patch logits)` on the [CLS] tokens and the patch tokens at `indices`.

    mask [B, G, N] (True = masked), indices [B, G, P] or None (all N). Returns student_logits
    [B, G+L, K] (global crops first), student_patch_logits [B, G, P, K_p], teacher_logits [B, G, K],
    teacher_patch_logits [B, G, P, K_p] (no gradient), patch_weights [B, G, P] (which of the P
    are masked), student_global_cls [B, G, D] (backbone output) and mask.
    """
    t_cls, t_patches = crop_tokens(backbone, teacher["backbone"], views["global"], None, None, train=False)
    t_logits, t_patch_logits = jax.lax.stop_gradient(heads(teacher, t_cls, select_patches(t_patches, indices), True))

    s_cls, s_patches = crop_tokens(backbone, params["backbone"], views["global"], mask, global_rng, train=True)
    all_cls = s_cls
    if "local" in views:
        def local_cls(images, group_rng):
            return backbone.apply({"params": params["backbone"]}, images, train=True, rngs={"drop_path": group_rng})
        all_cls = jnp.concatenate([s_cls, apply_per_resolution(local_cls, [views["local"]], local_rng)], axis=1)
    s_logits, s_patch_logits = heads(params, all_cls, select_patches(s_patches, indices), False)
    return {"student_logits": s_logits, "student_patch_logits": s_patch_logits, "teacher_logits": t_logits,
            "teacher_patch_logits": t_patch_logits, "patch_weights": select_patches(mask, indices),
            "student_global_cls": s_cls, "mask": mask}


def distillation_metrics(student_logits: jax.Array, teacher_probs: jax.Array, student_temp: float) -> dict:
    """Collapse monitors from student logits [B, V, K] and teacher targets [B, G, K]: the mean
    entropies and KL(teacher || uniform) = log K - H(teacher), ~0 when the teacher is uniform
    (collapse by centering) and log K when it is one-hot (collapse by sharpening)."""
    teacher_entropy = losses.mean_entropy(teacher_probs)
    student_probs = jax.nn.softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    return {"teacher_entropy": teacher_entropy, "student_entropy": losses.mean_entropy(student_probs),
            "teacher_kl_uniform": jnp.log(float(teacher_probs.shape[-1])) - teacher_entropy}


def weighted_terms(terms: dict, out: dict, teacher_probs: jax.Array, student_temp: float):
    """(sum of weight * value over terms {name: (weight, value)}, metrics): every term unweighted
    as '<name>_loss', the masked fraction of `out['mask']` and `distillation_metrics`."""
    loss = sum(weight * value for weight, value in terms.values())
    metrics = {f"{name}_loss": value for name, (_, value) in terms.items()}
    metrics["masked_fraction"] = jnp.mean(out["mask"].astype(jnp.float32))
    metrics.update(distillation_metrics(out["student_logits"], teacher_probs, student_temp))
    return loss, metrics
