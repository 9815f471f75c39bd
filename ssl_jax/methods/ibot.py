"""iBOT: image BERT pre-training with an online tokenizer (Zhou et al., 2022).

DINO on the [CLS] token plus masked-patch self-distillation:

    m = block masks of the global crops                                  # [B, G, N] bool
    teacher: t_cls, t_patch = heads(teacher_backbone(global crops))      # unmasked
    student: s_cls, s_patch = heads(student_backbone(global crops, m))   # masked patches -> mask token
             s_cls_local    = heads(student_backbone(local crops))       # [CLS] only, no mask
    loss = lambda1 * DINO(s_cls, softmax((t_cls - c) / tau_t))           # pairs of different crops
         + lambda2 * mean over crops of  mean over masked patches n of
                     CE(softmax((t_patch_n - c2) / tau_t2), s_patch_n)   # the same crop
    c  <- EMA of the teacher's [CLS] logits,  c2 <- EMA of its patch logits (all patches)

Reproduces bytedance/ibot's `main_ibot.py` (`iBOTLoss`, `iBOTHead`, `ImageFolderMask`);
the hyper-parameters live in `configs/ibot_small.py`. Built from DINO's pieces: the
backbone, teacher-temperature schedule, `losses.dino_*`, the EMA center and the evaluation
(teacher backbone [CLS]) are DINO's (`IBOT` subclasses `DINO`); the heads are
`models.heads.IBOTHead`, the masks `ssl_jax.masks.block_masks`, the patch loss
`losses.masked_patch_cross_entropy`. DINOv2 (`methods/dinov2.py`) subclasses this class
and overrides the hooks below (masks, heads, which patches, teacher targets, [CLS] term
weighting, extra terms).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.dino import DINO
from ssl_jax.models.backbones import compute_dtype
from ssl_jax.models.heads import IBOTHead
from ssl_jax.models.multicrop import apply_per_resolution
from ssl_jax.optim import per_epoch_linear_warmup


class IBOT(DINO):
    """iBOT. Batch views: 'global' [B, G, H, W, 3] (masked for the student), 'local' [B, L, h, w, 3]."""

    def __init__(self, config, steps_per_epoch: int):
        super().__init__(config, steps_per_epoch)  # backbone, temperatures, center momentum
        if not config.model.get("mask_token"):
            raise UserError(f"{type(self).__name__} masks student patches with a learned token: set "
                             "config.model.mask_token='zeros' (the references' init)")
        size, patch = config.augment.global_crops.size, config.model.patch_size
        self.grid = (size // patch, size // patch)
        self.num_patches = self.grid[0] * self.grid[1]
        self.steps_per_epoch = steps_per_epoch
        self._build(config.method, steps_per_epoch, compute_dtype(config))

    # ------------------------------------------------------------------ hooks (DINOv2 overrides)

    def _build(self, cfg, steps_per_epoch: int, dtype) -> None:
        """iBOT's heads, patch temperature, loss weights and mask distribution (DINO's own
        `self.head` stays unused: iBOT's heads take the patch tokens too)."""
        if cfg.shared_head and not cfg.shared_head_teacher:
            raise UserError("method.shared_head=True needs method.shared_head_teacher=True: a teacher "
                             "'last_layer2' would have no student counterpart to follow")
        patch_out_dim = cfg.out_dim if cfg.shared_head or cfg.shared_head_teacher else cfg.patch_out_dim
        head = dict(out_dim=cfg.out_dim, patch_out_dim=patch_out_dim, hidden_dim=cfg.head_hidden_dim,
                    bottleneck_dim=cfg.head_bottleneck_dim, nlayers=cfg.head_nlayers,
                    norm_last_layer=cfg.norm_last_layer, dtype=dtype)
        # The reference builds the teacher head with norm_last_layer=True, which only sets
        # requires_grad=False: its weight_g still follows the student's by EMA, so the teacher
        # uses g exactly when the student trains it.
        self.student_head = IBOTHead(shared=cfg.shared_head, **head)
        self.teacher_head = IBOTHead(shared=cfg.shared_head_teacher, **head)
        # iBOTLoss's teacher_temp2_schedule: held at the warm-up value until pred_start_epoch, then warmed up.
        patch_temp = per_epoch_linear_warmup(cfg.warmup_teacher_patch_temp, cfg.teacher_patch_temp,
                                             cfg.warmup_teacher_temp_epochs, steps_per_epoch)
        delay = cfg.pred_start_epoch * steps_per_epoch
        self.teacher_patch_temp = lambda step: patch_temp(jnp.maximum(step - delay, 0))
        self.loss_weights = {"cls": cfg.lambda1, "patch": cfg.lambda2}
        self.pred_ratio = jnp.asarray(cfg.pred_ratio, jnp.float32)
        self.pred_ratio_var = jnp.asarray(cfg.pred_ratio_var, jnp.float32)
        if self.pred_ratio.shape != self.pred_ratio_var.shape or bool(jnp.any(self.pred_ratio_var > self.pred_ratio)):
            raise UserError(f"method.pred_ratio {tuple(cfg.pred_ratio)} and method.pred_ratio_var "
                             f"{tuple(cfg.pred_ratio_var)} need the same length and var <= ratio")
        self.pred_aspect_ratio = tuple(cfg.pred_aspect_ratio)
        self.pred_start_epoch = cfg.pred_start_epoch

    def init_heads(self, rng: jax.Array, features: jax.Array) -> dict:
        """Head parameters (the params' entries besides 'backbone') from backbone features [1, D]."""
        return {"head": self.student_head.init(rng, features, features[:, None])["params"]}

    def sample_masks(self, rng: jax.Array, batch: int, crops: int, step: jax.Array) -> jax.Array:
        """`ImageFolderMask` (pred_shape='block'): [B, G, N] bool, True = masked.

        Per crop, a ratio is picked uniformly among `pred_ratio` (the ViT-S/16 recipe's
        (0, 0.3): half the crops stay unmasked) and drawn uniform in ratio +- its
        `pred_ratio_var`; BEiT block masks then cover ratio * N patches with blocks of at
        least (min(h, w) // 3)^2 patches. No masking before `pred_start_epoch`.
        """
        choice_key, ratio_key, mask_key = jax.random.split(rng, 3)
        choice = jax.random.randint(choice_key, (batch * crops,), 0, self.pred_ratio.shape[0])
        offset = jax.random.uniform(ratio_key, (batch * crops,), minval=-1.0, maxval=1.0)
        ratio = self.pred_ratio[choice] + self.pred_ratio_var[choice] * offset
        ratio = jnp.where(step // self.steps_per_epoch < self.pred_start_epoch, 0.0, ratio)
        mask = masks.block_masks(mask_key, ratio * self.num_patches, self.grid,
                                 min_block_area=float((min(self.grid) // 3) ** 2),
                                 aspect_ratio=self.pred_aspect_ratio)
        return mask.reshape(batch, crops, self.num_patches)

    def patch_positions(self, mask: jax.Array) -> tuple[jax.Array | None, jax.Array]:
        """Which patch tokens go through the heads: (indices [B, G, P] or None for all N,
        their loss weights [B, G, P] bool). iBOT: every patch, the masked ones weighted."""
        return None, mask

    def heads(self, head_params: dict, cls: jax.Array, patches: jax.Array, teacher: bool):
        """(cls logits [B, V, K], patch logits [B, G, P, K_p]) from backbone tokens."""
        module = self.teacher_head if teacher else self.student_head
        return module.apply({"params": head_params["head"]}, cls, patches)

    def teacher_probs(self, cls_logits, patch_logits, weights, method_state, step):
        """Centred, sharpened teacher targets [B, G, K], [B, G, P, K_p], the new method state
        and metrics. iBOT: DINO's centering with `center`, and `center2` over all patches."""
        temp, patch_temp = self.teacher_temp(step), self.teacher_patch_temp(step)
        probs = losses.dino_teacher_probs(cls_logits, method_state["center"], temp)
        patch_probs = losses.dino_teacher_probs(patch_logits, method_state["center2"], patch_temp)
        state = {"center": losses.ema_center(method_state["center"], cls_logits, self.center_momentum),
                 "center2": losses.ema_center(method_state["center2"], patch_logits, self.center_momentum)}
        return probs, patch_probs, state, {"teacher_temp": temp, "teacher_patch_temp": patch_temp,
                                           "center_norm": jnp.linalg.norm(state["center"])}

    def cls_loss(self, student_logits: jax.Array, teacher_probs: jax.Array) -> jax.Array:
        """The [CLS] term from student logits [B, V, K] (global crops first) and teacher targets
        [B, G, K]. iBOT: DINO's mean over the (teacher crop, other student crop) pairs."""
        return losses.dino_cross_entropy(student_logits, teacher_probs, self.student_temp)

    def extra_losses(self, student_global_cls: jax.Array) -> dict:
        """{name: (weight, value)}: extra terms on the student backbone's global [CLS] [B, G, D]
        (DINOv2: KoLeo); iBOT has none."""
        del student_global_cls
        return {}

    # ------------------------------------------------------------------ shared by iBOT and DINOv2

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        backbone_rng, head_rng = jax.random.split(rng)
        image = batch["views"]["global"][:1, 0]
        backbone = self.backbone.init(backbone_rng, image)["params"]
        features = self.backbone.apply({"params": backbone}, image)
        params = {"backbone": backbone, **self.init_heads(head_rng, features)}
        # The teacher starts as a copy of the student (load_state_dict in the references).
        teacher = jax.tree.map(jnp.copy, self.teacher_targets(params))
        abstract = jax.eval_shape(lambda: self.heads(teacher, features[:, None], features[:, None, None], True))
        state = {"center": jnp.zeros(abstract[0].shape[-1:], jnp.float32),
                 "center2": jnp.zeros(abstract[1].shape[-1:], jnp.float32)}
        return MethodVariables(params, teacher, state, None)

    def teacher_targets(self, params):
        """The student parameters the teacher follows: all, except a student-only `last_layer2`
        (iBOT's shared_head=False with shared_head_teacher=True: EMA over the common names)."""
        head = params.get("head")
        if head is None or "last_layer2" not in head or not self.teacher_head.shared:
            return params
        return {**params, "head": {k: v for k, v in head.items() if k != "last_layer2"}}

    def _tokens(self, backbone_params, images, mask, rng, train: bool):
        """Backbone on crops [B, V, H, W, 3] (patches masked where mask [B, V, N] is True):
        ([CLS] [B, V, D], patch tokens [B, V, N, D]), both after the final norm."""
        batch, views = images.shape[:2]
        flat_mask = None if mask is None else mask.reshape(batch * views, -1)
        tokens = self.backbone.apply({"params": backbone_params}, images.reshape((batch * views,) + images.shape[2:]),
                                     train=train, rngs={"drop_path": rng} if train else None, mask=flat_mask,
                                     return_tokens=True)
        tokens = tokens.reshape((batch, views) + tokens.shape[1:])
        return tokens[:, :, 0], tokens[:, :, 1:]

    def forward(self, params, teacher, batch, rng, step) -> dict:
        """Masks, then the teacher and student networks: the arrays `objective` needs.

        student_logits [B, G+L, K] (global crops first), student_patch_logits [B, G, P, K_p],
        teacher_logits [B, G, K], teacher_patch_logits [B, G, P, K_p] (no gradient),
        patch_weights [B, G, P] (which of the P patches are masked), student_global_cls
        [B, G, D] (backbone output), mask [B, G, N].
        """
        views = batch["views"]
        global_views = views["global"]
        batch_size, num_global = global_views.shape[:2]
        mask_rng, global_rng, local_rng = jax.random.split(rng, 3)
        mask = self.sample_masks(mask_rng, batch_size, num_global, step)
        indices, weights = self.patch_positions(mask)

        def select(patches):  # [B, G, N, D] -> the patches that go through the heads
            return patches if indices is None else jnp.take_along_axis(patches, indices[..., None], axis=2)

        t_cls, t_patches = self._tokens(teacher["backbone"], global_views, None, None, train=False)
        t_logits, t_patch_logits = jax.lax.stop_gradient(self.heads(teacher, t_cls, select(t_patches), True))

        s_cls, s_patches = self._tokens(params["backbone"], global_views, mask, global_rng, train=True)
        all_cls = s_cls
        if "local" in views:
            def local_cls(images, group_rng):
                return self.backbone.apply({"params": params["backbone"]}, images, train=True,
                                           rngs={"drop_path": group_rng})
            all_cls = jnp.concatenate([s_cls, apply_per_resolution(local_cls, [views["local"]], local_rng)], axis=1)
        s_logits, s_patch_logits = self.heads(params, all_cls, select(s_patches), False)
        return {"student_logits": s_logits, "student_patch_logits": s_patch_logits, "teacher_logits": t_logits,
                "teacher_patch_logits": t_patch_logits, "patch_weights": weights, "student_global_cls": s_cls,
                "mask": mask}

    def objective(self, out: dict, method_state, step):
        """The loss from `forward`'s arrays: (loss, new method state, metrics). Pure."""
        probs, patch_probs, new_state, metrics = self.teacher_probs(
            out["teacher_logits"], out["teacher_patch_logits"], out["patch_weights"], method_state, step)
        terms = {"cls": (self.loss_weights["cls"], self.cls_loss(out["student_logits"], probs)),
                 "patch": (self.loss_weights["patch"],
                           losses.masked_patch_cross_entropy(out["student_patch_logits"], patch_probs,
                                                             out["patch_weights"], self.student_temp)),
                 **self.extra_losses(out["student_global_cls"])}
        loss = sum(weight * value for weight, value in terms.values())

        teacher_entropy = losses.mean_entropy(probs)
        student_probs = jax.nn.softmax(out["student_logits"].astype(jnp.float32) / self.student_temp)
        metrics.update({f"{name}_loss": value for name, (_, value) in terms.items()})  # unweighted
        metrics.update({
            "masked_fraction": jnp.mean(out["mask"].astype(jnp.float32)),
            "teacher_entropy": teacher_entropy,
            "student_entropy": losses.mean_entropy(student_probs),
            # KL(teacher || uniform) = log K - H(teacher), as DINO (the collapse monitor reads it).
            "teacher_kl_uniform": jnp.log(float(probs.shape[-1])) - teacher_entropy,
        })
        return loss, new_state, metrics

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        loss, new_state, metrics = self.objective(self.forward(params, teacher, batch, rng, step), method_state, step)
        return loss, LossOutput(metrics, new_state, model_state)
