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
the hyper-parameters live in `configs/ibot_small.py`. Composed from shared pieces: the
networks' init, forward and evaluation (teacher backbone [CLS]) of `methods/distill.py`,
DINO's teacher-temperature schedule (`methods/dino.py`), the heads `models.heads.IBOTHead`,
the masks `ssl_jax.masks.block_masks`, the losses `losses.dino_*` and
`losses.masked_patch_cross_entropy`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.errors import UserError
from ssl_jax.methods import distill
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.dino import dino_teacher_temp
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import IBOTHead
from ssl_jax.optim import per_epoch_linear_warmup


class IBOT(distill.TeacherBackboneEval):
    """iBOT. Batch views: 'global' [B, G, H, W, 3] (masked for the student), 'local' [B, L, h, w, 3]."""

    ema_teacher = True
    state_accumulation = "mean"  # both centers are EMAs of batch means: the micro-batches' mean is the batch's

    def __init__(self, config, steps_per_epoch: int):
        cfg = config.method
        distill.check_vit(config, "IBOT", mask_token=True)
        if cfg.shared_head and not cfg.shared_head_teacher:
            raise UserError("method.shared_head=True needs method.shared_head_teacher=True: a teacher "
                            "'last_layer2' would have no student counterpart to follow")
        self.backbone = build_backbone(config.model, **backbone_kwargs(config))
        size, patch = config.augment.global_crops.size, config.model.patch_size
        self.grid = (size // patch, size // patch)
        self.num_patches = self.grid[0] * self.grid[1]

        self.patch_out_dim = cfg.out_dim if cfg.shared_head or cfg.shared_head_teacher else cfg.patch_out_dim
        head = dict(out_dim=cfg.out_dim, patch_out_dim=self.patch_out_dim, hidden_dim=cfg.head_hidden_dim,
                    bottleneck_dim=cfg.head_bottleneck_dim, nlayers=cfg.head_nlayers,
                    norm_last_layer=cfg.norm_last_layer, dtype=compute_dtype(config))
        # The reference builds the teacher head with norm_last_layer=True, which only sets
        # requires_grad=False: its weight_g still follows the student's by EMA, so the teacher
        # uses g exactly when the student trains it.
        self.student_head = IBOTHead(shared=cfg.shared_head, **head)
        self.teacher_head = IBOTHead(shared=cfg.shared_head_teacher, **head)

        self.student_temp, self.center_momentum = cfg.student_temp, cfg.center_momentum
        self.loss_weights = {"cls": cfg.lambda1, "patch": cfg.lambda2}
        self.teacher_temp = dino_teacher_temp(cfg, steps_per_epoch)
        # iBOTLoss's teacher_temp2_schedule: held at the warm-up value until pred_start_epoch, then warmed up.
        patch_temp = per_epoch_linear_warmup(cfg.warmup_teacher_patch_temp, cfg.teacher_patch_temp,
                                             cfg.warmup_teacher_temp_epochs, steps_per_epoch)
        delay = cfg.pred_start_epoch * steps_per_epoch
        self.teacher_patch_temp = lambda step: patch_temp(jnp.maximum(step - delay, 0))

        self.pred_ratio = jnp.asarray(cfg.pred_ratio, jnp.float32)
        self.pred_ratio_var = jnp.asarray(cfg.pred_ratio_var, jnp.float32)
        if self.pred_ratio.shape != self.pred_ratio_var.shape or bool(jnp.any(self.pred_ratio_var > self.pred_ratio)):
            raise UserError(f"method.pred_ratio {tuple(cfg.pred_ratio)} and method.pred_ratio_var "
                            f"{tuple(cfg.pred_ratio_var)} need the same length and var <= ratio")
        self.pred_aspect_ratio = tuple(cfg.pred_aspect_ratio)
        self.pred_start_step = cfg.pred_start_epoch * steps_per_epoch

    def init_heads(self, rng: jax.Array, features: jax.Array) -> dict:
        """{'head': the student head's parameters} from backbone features [1, D]."""
        return {"head": self.student_head.init(rng, features, features[:, None])["params"]}

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params, teacher = distill.init_student_teacher(self.backbone, self.init_heads, rng,
                                                       batch["views"]["global"][:1, 0], self.teacher_targets)
        centers = {"center": jnp.zeros((self.student_head.out_dim,), jnp.float32),
                   "center2": jnp.zeros((self.patch_out_dim,), jnp.float32)}
        return MethodVariables(params, teacher, centers, None)

    def teacher_targets(self, params):
        """The student parameters the teacher follows: all, except a student-only `last_layer2`
        (shared_head=False with shared_head_teacher=True: EMA over the common names)."""
        if self.student_head.shared or not self.teacher_head.shared:
            return params
        return {**params, "head": {k: v for k, v in params["head"].items() if k != "last_layer2"}}

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
        ratio = jnp.where(step < self.pred_start_step, 0.0, ratio)
        mask = masks.block_masks(mask_key, ratio * self.num_patches, self.grid,
                                 min_block_area=float((min(self.grid) // 3) ** 2),
                                 aspect_ratio=self.pred_aspect_ratio)
        return mask.reshape(batch, crops, self.num_patches)

    def heads(self, head_params: dict, cls: jax.Array, patches: jax.Array, teacher: bool):
        """(cls logits [B, V, K], patch logits [B, G, N, K_p]) from backbone tokens."""
        module = self.teacher_head if teacher else self.student_head
        return module.apply({"params": head_params["head"]}, cls, patches)

    def forward(self, params, teacher, batch, rng, step) -> dict:
        """Masks, then the teacher and student networks (`distill.masked_crops_forward`, every
        patch through the heads): the arrays `objective` reads."""
        global_views = batch["views"]["global"]
        mask_rng, global_rng, local_rng = jax.random.split(rng, 3)
        mask = self.sample_masks(mask_rng, global_views.shape[0], global_views.shape[1], step)
        return distill.masked_crops_forward(self.backbone, self.heads, params, teacher, batch["views"], mask, None,
                                            global_rng, local_rng)

    def objective(self, out: dict, method_state, step):
        """`iBOTLoss`: (loss, new centers, metrics) from `forward`'s arrays. Pure."""
        temp, patch_temp = self.teacher_temp(step), self.teacher_patch_temp(step)
        probs = losses.dino_teacher_probs(out["teacher_logits"], method_state["center"], temp)
        patch_probs = losses.dino_teacher_probs(out["teacher_patch_logits"], method_state["center2"], patch_temp)
        terms = {"cls": (self.loss_weights["cls"],
                         losses.dino_cross_entropy(out["student_logits"], probs, self.student_temp)),
                 "patch": (self.loss_weights["patch"],
                           losses.masked_patch_cross_entropy(out["student_patch_logits"], patch_probs,
                                                             out["patch_weights"], self.student_temp))}
        loss, metrics = distill.weighted_terms(terms, out, probs, self.student_temp)
        centers = {"center": losses.ema_center(method_state["center"], out["teacher_logits"], self.center_momentum),
                   "center2": losses.ema_center(method_state["center2"], out["teacher_patch_logits"],
                                                self.center_momentum)}
        metrics.update(teacher_temp=temp, teacher_patch_temp=patch_temp, center_norm=jnp.linalg.norm(centers["center"]))
        return loss, centers, metrics

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        loss, centers, metrics = self.objective(self.forward(params, teacher, batch, rng, step), method_state, step)
        return loss, LossOutput(metrics, centers, model_state)
