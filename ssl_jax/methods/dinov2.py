"""DINOv2 (Oquab et al., 2024): iBOT with untied heads, Sinkhorn-Knopp centering and KoLeo.

    m = block masks on half of the global crops (ratios spread over [0.1, 0.5])   # [B, G, N]
    teacher: t_cls = dino_head(cls), t_patch = ibot_head(masked patches)   (unmasked input)
    student: the same on the masked global crops, dino_head on the local crops' [CLS]
    targets: Sinkhorn-Knopp over the global batch (3 iterations), or DINO's softmax centering
    loss = w_dino * DINO(s_cls, t_cls) + w_ibot * iBOT(s_patch, t_patch on masked patches)
           (DINO: the sum over crop pairs / (G (G - 1) + max(G L, 1)), `cls_loss`)
         + w_koleo * sum over global crops of KoLeo(student backbone [CLS])

Reproduces facebookresearch/dinov2's `dinov2/train/ssl_meta_arch.py` (`forward_backward`),
`dinov2/loss/` and `dinov2/data/collate.py`'s mask sampling; the hyper-parameters live in
`configs/dinov2_small.py`. It is `methods.ibot.IBOT` with these hooks replaced:
  * masks: exactly int(G B * mask_sample_probability) crops masked, ratio of the i-th in
    [r_i, r_(i+1)] of linspace(0.1, 0.5), shuffled (`collate_data_and_cast`);
  * heads: DINOHead `dino_head` for [CLS], a separate `ibot_head` for patches (or the same
    one, `separate_head=False`), run only on the masked patches of each crop (gathered to a
    static P = int(N * max ratio) per crop, as the reference's `mask_indices_list`);
  * targets: one teacher temperature for both, warmed up per iteration; centering
    'sinkhorn_knopp' (`losses.sinkhorn_knopp`, masked patches only) or 'centering' (the
    patch center is the mean over masked patches, `iBOTPatchLoss.update_center`);
  * KoLeo (`losses.koleo`) on each global crop's student backbone [CLS], per group of
    `koleo_group_size` samples (the reference computes it per GPU).
The ViT options (LayerScale, registers, uniform drop-path) and layer-wise lr decay are
config switches of `models/vit.py` and `optim.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.errors import UserError
from ssl_jax.methods.ibot import IBOT
from ssl_jax.models.heads import DINOHead
from ssl_jax.optim import cosine_schedule

CENTERINGS = ("centering", "sinkhorn_knopp")


class DINOv2(IBOT):
    """DINOv2. Batch views: 'global' [B, 2, H, W, 3], 'local' [B, L, h, w, 3]."""

    def _build(self, cfg, steps_per_epoch: int, dtype) -> None:
        if cfg.centering not in CENTERINGS:
            raise UserError(f"unknown method.centering {cfg.centering!r}; choose one of {CENTERINGS}")
        self.centering = cfg.centering
        self.dino_head = self.head  # DINO's head, built by DINO.__init__ from the same fields
        self.ibot_head = (DINOHead(cfg.ibot_out_dim, cfg.ibot_head_hidden_dim, cfg.ibot_head_bottleneck_dim,
                                   cfg.head_nlayers, cfg.norm_last_layer, dtype) if cfg.separate_head else None)
        # train.py's teacher_temp_schedule: linear warm-up per iteration, then constant.
        warmup = cfg.warmup_teacher_temp_epochs * steps_per_epoch
        self.teacher_temp = cosine_schedule(cfg.teacher_temp, cfg.teacher_temp, warmup, warmup,
                                            warmup_start=cfg.warmup_teacher_temp)
        self.loss_weights = {"cls": cfg.dino_loss_weight, "patch": cfg.ibot_loss_weight}
        self.koleo_weight = cfg.koleo_loss_weight
        self.koleo_group_size = cfg.koleo_group_size
        low, high = cfg.mask_ratio_min_max
        if not 0.0 <= low <= high < 1.0 or not 0.0 < cfg.mask_sample_probability <= 1.0:
            raise UserError(f"method.mask_ratio_min_max {tuple(cfg.mask_ratio_min_max)} must satisfy "
                             f"0 <= min <= max < 1 and method.mask_sample_probability "
                             f"({cfg.mask_sample_probability}) must be in (0, 1]")
        self.mask_ratio_min_max = (low, high)
        self.mask_sample_probability = cfg.mask_sample_probability
        # Static number of patch tokens per crop through the iBOT head: no crop masks more.
        self.max_masked = max(int(self.num_patches * high), 1)

    def init_heads(self, rng: jax.Array, features: jax.Array) -> dict:
        dino_rng, ibot_rng = jax.random.split(rng)
        params = {"dino_head": self.dino_head.init(dino_rng, features)["params"]}
        if self.ibot_head is not None:
            params["ibot_head"] = self.ibot_head.init(ibot_rng, features)["params"]
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
        return order, jnp.take_along_axis(mask, order, axis=-1)

    def heads(self, head_params: dict, cls: jax.Array, patches: jax.Array, teacher: bool):
        del teacher  # the teacher's heads are the student's (EMA copies)
        cls_logits = self.dino_head.apply({"params": head_params["dino_head"]}, cls)
        if self.ibot_head is None:
            return cls_logits, self.dino_head.apply({"params": head_params["dino_head"]}, patches)
        return cls_logits, self.ibot_head.apply({"params": head_params["ibot_head"]}, patches)

    def teacher_probs(self, cls_logits, patch_logits, weights, method_state, step):
        """Sinkhorn-Knopp over all global crops' [CLS] and over all masked patches of the global
        batch (the centers in method_state then stay unused), or softmax centering (patch
        center: mean over masked patches)."""
        temp = self.teacher_temp(step)
        if self.centering == "sinkhorn_knopp":
            probs = losses.sinkhorn_knopp(cls_logits.reshape(-1, cls_logits.shape[-1]), temp)
            patch_probs = losses.sinkhorn_knopp(patch_logits.reshape(-1, patch_logits.shape[-1]), temp,
                                                weights=weights.reshape(-1))
            return (probs.reshape(cls_logits.shape), patch_probs.reshape(patch_logits.shape), method_state,
                    {"teacher_temp": temp})
        probs = losses.dino_teacher_probs(cls_logits, method_state["center"], temp)
        patch_probs = losses.dino_teacher_probs(patch_logits, method_state["center2"], temp)
        state = {"center": losses.ema_center(method_state["center"], cls_logits, self.center_momentum),
                 "center2": losses.ema_center(method_state["center2"], patch_logits, self.center_momentum,
                                              weights=weights)}
        return probs, patch_probs, state, {"teacher_temp": temp, "center_norm": jnp.linalg.norm(state["center"])}

    def cls_loss(self, student_logits: jax.Array, teacher_probs: jax.Array) -> jax.Array:
        """`forward_backward`'s DINO terms: the sum over the G (G - 1) + G L (teacher crop, other
        student crop) pairs of the batch-mean cross-entropy, divided by n_global_crops_loss_terms
        + n_local_crops_loss_terms = G (G - 1) + max(G L, 1). The pair mean when L > 0; with no
        local crops the 2 pairs are divided by 3."""
        crops = teacher_probs.shape[1]
        pairs = crops * (student_logits.shape[1] - 1)
        divisor = crops * (crops - 1) + max(crops * (student_logits.shape[1] - crops), 1)
        return super().cls_loss(student_logits, teacher_probs) * (pairs / divisor)

    def extra_losses(self, student_global_cls: jax.Array) -> dict:
        """KoLeo summed over the global crops (each over groups of the batch), koleo_loss_weight."""
        batch, crops, dim = student_global_cls.shape
        group = min(self.koleo_group_size or batch, batch)  # a batch below the group size is one group
        if batch % group:
            raise UserError(f"the batch ({batch}) must be a multiple of method.koleo_group_size ({group}); "
                             "0 computes KoLeo over the whole batch")
        per_crop = student_global_cls.transpose(1, 0, 2).reshape(crops, batch // group, group, dim)
        return {"koleo": (self.koleo_weight, crops * losses.koleo(per_crop))}  # equal groups: sum of means
