"""DINOv2 (Oquab et al., 2024): masked self-distillation with untied heads, Sinkhorn-Knopp
centering and KoLeo.

    m = block masks on half of the global crops (ratios spread over [0.1, 0.5])   # [B, G, N]
    teacher: t_cls = dino_head(cls), t_patch = ibot_head(masked patches)   (unmasked input)
    student: the same on the masked global crops, dino_head on the local crops' [CLS]
    targets: Sinkhorn-Knopp over the global batch (3 iterations), or DINO's softmax centering
    loss = w_dino * DINO(s_cls, t_cls) + w_ibot * iBOT(s_patch, t_patch on masked patches)
           (DINO: the sum over crop pairs / (G (G - 1) + max(G L, 1)))
         + w_koleo * sum over global crops of KoLeo(student backbone [CLS])

Reproduces facebookresearch/dinov2's `dinov2/train/ssl_meta_arch.py` (`forward_backward`),
`dinov2/loss/` and `dinov2/data/collate.py`'s mask sampling; the hyper-parameters live in
`configs/dinov2_small.py`. Composed from the pieces it shares with iBOT and DINO
(`methods/distill.py`: init, masked-crop forward, evaluation on the teacher backbone [CLS]),
`models.heads.DINOHead`, `masks.block_masks` and `losses` (`sinkhorn_knopp`, `dino_*`,
`masked_patch_cross_entropy`, `koleo`). Only the masked patches reach the heads, gathered to
a static P = int(N * max ratio) per crop, as the reference's `mask_indices_list`. The ViT
options (LayerScale, registers, uniform drop-path) and layer-wise lr decay are config switches
of `models/vit.py` and `optim.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.errors import UserError
from ssl_jax.methods import distill
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.dino import build_dino_head
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import DINOHead
from ssl_jax.optim import cosine_schedule

CENTERINGS = ("centering", "sinkhorn_knopp")


class DINOv2(distill.TeacherBackboneEval):
    """DINOv2. Batch views: 'global' [B, 2, H, W, 3], 'local' [B, L, h, w, 3]."""

    ema_teacher = True
    state_accumulation = "mean"  # the centers are EMAs of batch means: the micro-batches' mean is the batch's

    def __init__(self, config, steps_per_epoch: int):
        cfg = config.method
        distill.check_vit(config, "DINOv2", mask_token=True)
        if cfg.centering not in CENTERINGS:
            raise UserError(f"unknown method.centering {cfg.centering!r}; choose one of {CENTERINGS}")
        low, high = cfg.mask_ratio_min_max
        if not 0.0 <= low <= high < 1.0 or not 0.0 < cfg.mask_sample_probability <= 1.0:
            raise UserError(f"method.mask_ratio_min_max {tuple(cfg.mask_ratio_min_max)} must satisfy "
                            f"0 <= min <= max < 1 and method.mask_sample_probability "
                            f"({cfg.mask_sample_probability}) must be in (0, 1]")
        self.backbone = build_backbone(config.model, **backbone_kwargs(config))
        size, patch = config.augment.global_crops.size, config.model.patch_size
        self.grid = (size // patch, size // patch)
        self.num_patches = self.grid[0] * self.grid[1]
        self.mask_ratio_min_max = (low, high)
        self.mask_sample_probability = cfg.mask_sample_probability
        # Static number of patch tokens per crop through the iBOT head: no crop masks more.
        self.max_masked = max(int(self.num_patches * high), 1)

        self.dino_head = build_dino_head(config)
        # ibot.separate_head=False: the patches go through dino_head too.
        self.ibot_head = (DINOHead(cfg.ibot_out_dim, cfg.ibot_head_hidden_dim, cfg.ibot_head_bottleneck_dim,
                                   cfg.head_nlayers, cfg.norm_last_layer, compute_dtype(config))
                          if cfg.separate_head else None)

        self.centering = cfg.centering
        self.student_temp, self.center_momentum = cfg.student_temp, cfg.center_momentum
        # train.py's teacher_temp_schedule: linear warm-up per iteration, then constant.
        warmup = cfg.warmup_teacher_temp_epochs * steps_per_epoch
        self.teacher_temp = cosine_schedule(cfg.teacher_temp, cfg.teacher_temp, warmup, warmup,
                                            warmup_start=cfg.warmup_teacher_temp)
        self.loss_weights = {"cls": cfg.dino_loss_weight, "patch": cfg.ibot_loss_weight,
                             "koleo": cfg.koleo_loss_weight}
        self.koleo_group_size = cfg.koleo_group_size

    def init_heads(self, rng: jax.Array, features: jax.Array) -> dict:
        """{'dino_head'[, 'ibot_head']} parameters from backbone features [1, D]."""
        dino_rng, ibot_rng = jax.random.split(rng)
        params = {"dino_head": self.dino_head.init(dino_rng, features)["params"]}
        if self.ibot_head is not None:
            params["ibot_head"] = self.ibot_head.init(ibot_rng, features)["params"]
        return params

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params, teacher = distill.init_student_teacher(self.backbone, self.init_heads, rng,
                                                       batch["views"]["global"][:1, 0])
        patch_head = self.dino_head if self.ibot_head is None else self.ibot_head
        centers = {"center": jnp.zeros((self.dino_head.out_dim,), jnp.float32),
                   "center2": jnp.zeros((patch_head.out_dim,), jnp.float32)}
        return MethodVariables(params, teacher, centers, None)

    def teacher_targets(self, params):
        return params

    def sample_masks(self, rng: jax.Array, batch: int, crops: int, step: jax.Array) -> jax.Array:
        """`collate_data_and_cast` + `MaskingGenerator`: [B, G, N] bool over the global batch.

        n = int(G B * mask_sample_probability) crops get masks, the i-th masking
        int(N * U(r_i, r_(i+1))) patches with r = linspace(min, max, n + 1); the others none;
        then the crops are shuffled. Blocks of 4 to N / 2 patches, aspect ratio in (0.3, 1/0.3).
        """
        del step
        total = batch * crops
        num_masked_crops = int(total * self.mask_sample_probability)
        ratio_key, order_key, mask_key = jax.random.split(rng, 3)
        edges = jnp.linspace(*self.mask_ratio_min_max, num_masked_crops + 1)
        ratios = jax.random.uniform(ratio_key, (num_masked_crops,), minval=edges[:-1], maxval=edges[1:])
        counts = jnp.concatenate([jnp.floor(ratios * self.num_patches), jnp.zeros((total - num_masked_crops,))])
        counts = jax.random.permutation(order_key, counts)
        mask = masks.block_masks(mask_key, counts, self.grid, min_block_area=4.0,
                                 max_block_area=0.5 * self.num_patches)
        return mask.reshape(batch, crops, self.num_patches)

    def patch_positions(self, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The masked patches of each crop first (stable order), P = max_masked of them:
        indices [B, G, P] and which of them are masked [B, G, P]."""
        order = jnp.argsort(~mask, axis=-1, stable=True)[..., :self.max_masked]
        return order, distill.select_patches(mask, order)

    def heads(self, head_params: dict, cls: jax.Array, patches: jax.Array, teacher: bool):
        """(dino_head(cls) [B, V, K], ibot_head(patches) [B, G, P, K_p]); the teacher's heads are
        EMA copies of the student's."""
        del teacher
        cls_logits = self.dino_head.apply({"params": head_params["dino_head"]}, cls)
        if self.ibot_head is None:
            return cls_logits, self.dino_head.apply({"params": head_params["dino_head"]}, patches)
        return cls_logits, self.ibot_head.apply({"params": head_params["ibot_head"]}, patches)

    def forward(self, params, teacher, batch, rng, step) -> dict:
        """Masks, then the teacher and student networks (`distill.masked_crops_forward`, only the
        masked patches through the heads): the arrays `objective` reads."""
        global_views = batch["views"]["global"]
        mask_rng, global_rng, local_rng = jax.random.split(rng, 3)
        mask = self.sample_masks(mask_rng, global_views.shape[0], global_views.shape[1], step)
        indices, _ = self.patch_positions(mask)
        return distill.masked_crops_forward(self.backbone, self.heads, params, teacher, batch["views"], mask,
                                            indices, global_rng, local_rng)

    def teacher_probs(self, cls_logits, patch_logits, weights, method_state, temp):
        """Targets [B, G, K], [B, G, P, K_p] and the new centers. Sinkhorn-Knopp over all global
        crops' [CLS] and over all masked patches of the global batch (the centers then stay
        unused), or softmax centering (patch center: mean over masked patches)."""
        if self.centering == "sinkhorn_knopp":
            probs = losses.sinkhorn_knopp(cls_logits.reshape(-1, cls_logits.shape[-1]), temp)
            patch_probs = losses.sinkhorn_knopp(patch_logits.reshape(-1, patch_logits.shape[-1]), temp,
                                                weights=weights.reshape(-1))
            return probs.reshape(cls_logits.shape), patch_probs.reshape(patch_logits.shape), method_state
        probs = losses.dino_teacher_probs(cls_logits, method_state["center"], temp)
        patch_probs = losses.dino_teacher_probs(patch_logits, method_state["center2"], temp)
        centers = {"center": losses.ema_center(method_state["center"], cls_logits, self.center_momentum),
                   "center2": losses.ema_center(method_state["center2"], patch_logits, self.center_momentum,
                                                weights=weights)}
        return probs, patch_probs, centers

    def koleo(self, student_global_cls: jax.Array) -> jax.Array:
        """KoLeo of the student backbone's [CLS] [B, G, D], summed over the global crops, each the
        mean over groups of koleo_group_size images (the reference computes it per GPU)."""
        batch, crops, dim = student_global_cls.shape
        group = min(self.koleo_group_size or batch, batch)  # a batch below the group size is one group
        if batch % group:
            raise UserError(f"the batch ({batch}) must be a multiple of method.koleo_group_size ({group}); "
                            "0 computes KoLeo over the whole batch")
        per_crop = student_global_cls.transpose(1, 0, 2).reshape(crops, batch // group, group, dim)
        return crops * losses.koleo(per_crop)  # equal groups: the sum of the per-crop means

    def objective(self, out: dict, method_state, step):
        """`forward_backward`'s loss: (loss, new centers, metrics) from `forward`'s arrays. Pure.

        The DINO term sums the cross-entropy over the G (G - 1) + G L (teacher crop, other student
        crop) pairs and divides by n_global_crops_loss_terms + n_local_crops_loss_terms =
        G (G - 1) + max(G L, 1): the pair mean when L > 0; with no local crops 2 pairs / 3.
        """
        temp = self.teacher_temp(step)
        probs, patch_probs, centers = self.teacher_probs(out["teacher_logits"], out["teacher_patch_logits"],
                                                         out["patch_weights"], method_state, temp)
        crops, views = probs.shape[1], out["student_logits"].shape[1]
        pairs_per_term = crops * (views - 1) / (crops * (crops - 1) + max(crops * (views - crops), 1))
        terms = {"cls": losses.dino_cross_entropy(out["student_logits"], probs, self.student_temp) * pairs_per_term,
                 "patch": losses.masked_patch_cross_entropy(out["student_patch_logits"], patch_probs,
                                                            out["patch_weights"], self.student_temp),
                 "koleo": self.koleo(out["student_global_cls"])}
        weighted = {name: (self.loss_weights[name], value) for name, value in terms.items()}
        loss, metrics = distill.weighted_terms(weighted, out, probs, self.student_temp)
        metrics["teacher_temp"] = temp
        if self.centering == "centering":
            metrics["center_norm"] = jnp.linalg.norm(centers["center"])
        return loss, centers, metrics

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        loss, centers, metrics = self.objective(self.forward(params, teacher, batch, rng, step), method_state, step)
        return loss, LossOutput(metrics, centers, model_state)
