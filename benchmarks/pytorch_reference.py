"""The PyTorch step a researcher would otherwise run, built from the same ssl_jax config.

timm backbones with lightly's heads and losses (the `[bench]` extra), one optimiser step
with the recipe's optimiser, per-tensor gradient clipping and EMA teacher update, on the
same batch shapes that `benchmarks.step_time` feeds ssl_jax's step:

| config.method.name | backbone | heads and loss (lightly) | optimiser |
|---|---|---|---|
| dino | timm VisionTransformer (`dynamic_img_size`: local crops interpolate the position embeddings) | DINOProjectionHead, DINOLoss; backbone once per crop resolution, head once, as `MultiCropWrapper` | AdamW, clip per tensor, EMA teacher |
| ibot | the same ViT in MaskedVisionTransformerTIMM (mask token on the student's masked patches) | one DINOProjectionHead on [CLS] and every global-crop patch token (`shared_head`), DINOLoss on [CLS], iBOT's patch term (`iBOTLoss`, transcribed: lightly's IBOTPatchLoss centres on masked tokens only) | AdamW, clip per tensor, EMA teacher |
| simclr | timm ResNet | SimCLRProjectionHead, NTXentLoss, both views through BN together | LARS (lightly) |
| byol | timm ResNet | BYOLProjectionHead + BYOLPredictionHead, NegativeCosineSimilarity (= 2 - 2cos up to constants), EMA target | LARS (lightly) |
| mae | timm VisionTransformer in MaskedVisionTransformerTIMM (encoder on the kept tokens) | MAEDecoderTIMM, random_token_mask, MSE on masked patches with norm-pix targets (lightly's MAE example) | AdamW |

Imported only by the benchmark, never by ssl_jax. Mixed precision follows
config.compute_dtype: bfloat16 runs the forward under `torch.autocast` (AMP), as the
references' `--use_fp16` does with float16.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
from timm.models import resnet as timm_resnet
from timm.models.vision_transformer import VisionTransformer

from ssl_jax.models.vit import VIT_SIZES

# lightly imports torchvision, which is part of the [bench] extra.
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import heads  # noqa: E402
from lightly.models import utils as lightly_utils  # noqa: E402
from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM  # noqa: E402
from lightly.models.utils import update_momentum  # noqa: E402
from lightly.utils.lars import LARS  # noqa: E402


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def views_to_torch(views: np.ndarray, device: torch.device) -> torch.Tensor:
    """[B, V, S, S, 3] channels-last views -> [V * B, 3, S, S], crop-major like DINO's data loader."""
    b, v, s, _, c = views.shape
    nchw = np.ascontiguousarray(views.transpose(1, 0, 4, 2, 3).reshape(v * b, c, s, s))
    return torch.from_numpy(nchw).to(device)


def timm_vit(model_cfg) -> VisionTransformer:
    """ssl_jax's ViT section as timm's VisionTransformer ([CLS] pooled, no classifier)."""
    if model_cfg.size == "custom":
        embed_dim, depth, num_heads = model_cfg.embed_dim, model_cfg.depth, model_cfg.num_heads
    else:
        embed_dim, depth, num_heads = VIT_SIZES[model_cfg.size]
    return VisionTransformer(img_size=model_cfg.img_size, patch_size=model_cfg.patch_size, embed_dim=embed_dim,
                             depth=depth, num_heads=num_heads, num_classes=0, global_pool="token",
                             drop_path_rate=model_cfg.drop_path_rate, dynamic_img_size=True)


def timm_resnet_backbone(model_cfg) -> nn.Module:
    """ssl_jax's ResNet section as timm's ResNet (pooled features, no classifier)."""
    if model_cfg.cifar_stem:
        raise ValueError("the PyTorch reference builds ImageNet-stem ResNets only; benchmark a config without "
                         "model.cifar_stem")
    return getattr(timm_resnet, f"resnet{model_cfg.depth}")(num_classes=0, zero_init_last=model_cfg.zero_init_residual)


def clip_per_tensor(parameters, max_norm: float) -> None:
    """DINO's `utils.clip_gradients`: each tensor's gradient scaled to norm <= max_norm."""
    for p in parameters:
        if p.grad is not None:
            norm = p.grad.norm(2)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def adamw_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """DINO's `get_params_groups`: no weight decay on biases and norms (1-D tensors)."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Reference:
    """One training step of the PyTorch reference: `step()` runs it on the stored batch and
    returns the loss (synchronised, so timing `step()` times the device work)."""

    def __init__(self, config, batch: dict):
        self.device = torch_device()
        self.config = config
        self.autocast_dtype = torch.bfloat16 if config.compute_dtype == "bfloat16" else None
        self.views = {name: views_to_torch(v, self.device) for name, v in batch["views"].items()}
        build = {"dino": self._build_dino, "ibot": self._build_ibot, "simclr": self._build_two_view,
                 "byol": self._build_two_view, "mae": self._build_mae}
        if config.method.name not in build:
            raise ValueError(f"no PyTorch reference for method {config.method.name!r}; have {sorted(build)}")
        build[config.method.name]()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    # --- DINO and iBOT ----------------------------------------------------------------------
    def _build_dino(self):
        self._build_self_distillation(masked=False)
        self.loss_fn = self._dino_loss()
        self.step = self._dino_step

    def _build_ibot(self):
        if not self.config.method.shared_head:
            raise ValueError("the PyTorch iBOT reference builds the recipe's shared head only (method.shared_head=True)")
        self._build_self_distillation(masked=True)
        self.loss_fn = self._dino_loss()
        self.center2 = torch.zeros(1, self.config.method.out_dim, device=self.device)
        self.masks = self._ibot_masks()
        self.step = self._ibot_step

    def _build_self_distillation(self, masked: bool):
        """Student and teacher {backbone, head}, the AdamW optimiser (DINO's parameter groups)."""
        cfg, m = self.config, self.config.method

        def network() -> nn.ModuleDict:
            backbone = timm_vit(cfg.model)
            head = heads.DINOProjectionHead(backbone.embed_dim, m.head_hidden_dim, m.head_bottleneck_dim, m.out_dim,
                                            norm_last_layer=m.norm_last_layer)
            if masked:  # iBOT: the same ViT with a mask token for the student's masked patches
                backbone = MaskedVisionTransformerTIMM(vit=backbone, pos_embed_initialization="learn")
            return nn.ModuleDict({"backbone": backbone, "head": head}).to(self.device)

        # A second network loaded with the student's weights (weight-normalised layers cannot be deep-copied).
        self.student, self.teacher = network(), network()
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(adamw_groups(self.student, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                           betas=(cfg.optim.b1, cfg.optim.b2), eps=cfg.optim.eps)

    def _dino_loss(self) -> DINOLoss:
        m = self.config.method
        return DINOLoss(m.out_dim, m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs,
                        m.student_temp, m.center_momentum).to(self.device)

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, DINO's per-tensor clipping, AdamW, then the EMA teacher update."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.clip_grad:
            clip_per_tensor(self.student.parameters(), self.config.optim.clip_grad)
        self.optimizer.step()
        with torch.no_grad():
            update_momentum(self.student, self.teacher, self.config.optim.teacher_momentum)

    def _dino_forward(self, network, groups: list[torch.Tensor]) -> torch.Tensor:
        """Backbone once per resolution, head once on all [CLS] tokens (DINO's MultiCropWrapper)."""
        cls = torch.cat([network["backbone"](group) for group in groups])
        return network["head"](cls)

    def _dino_step(self) -> float:
        num_global = self.config.augment.global_crops.number
        groups = [self.views["global"]] + ([self.views["local"]] if "local" in self.views else [])
        with self._autocast():
            with torch.no_grad():
                teacher_out = self._dino_forward(self.teacher, groups[:1]).chunk(num_global)
            student_out = self._dino_forward(self.student, groups)
            num_views = sum(g.shape[0] for g in groups) // teacher_out[0].shape[0]
            loss = self.loss_fn(list(teacher_out), list(student_out.chunk(num_views)), epoch=0)
        self._optimizer_step(loss)
        return self._sync(loss)

    def _ibot_masks(self) -> torch.Tensor:
        """The student's patch masks [G * B, 1 + N] (crop-major, [CLS] never masked), drawn once with
        ssl_jax's own iBOT mask sampler: the reference's data loader makes them, outside the step."""
        import jax  # noqa: PLC0415 - the benchmark's process has it; this module is torch otherwise
        from ssl_jax.methods.ibot import IBOT  # noqa: PLC0415

        views = self.views["global"]
        num_global = self.config.augment.global_crops.number
        batch = views.shape[0] // num_global
        mask = np.asarray(IBOT(self.config, 1000).sample_masks(jax.random.key(2), batch, num_global, np.int32(0)))
        mask = mask.transpose(1, 0, 2).reshape(num_global * batch, -1)  # [B, G, N] -> crop-major [G * B, N]
        mask = np.concatenate([np.zeros((mask.shape[0], 1), bool), mask], axis=1)
        return torch.from_numpy(mask).to(self.device)

    def _ibot_tokens(self, network, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Head outputs of every token of the global crops: [G * B, 1 + N, K] (iBOT's shared iBOTHead)."""
        tokens = network["backbone"].encode(images, mask=mask)
        return network["head"](tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])

    def _ibot_patch_loss(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """iBOTLoss's masked-patch term on [G * B, N, K] logits (every crop against itself): per crop the
        mean over its masked patches of CE(softmax((t - center2) / tau_t2), s / tau_s), then the mean
        over crops; center2 follows the mean over all teacher patch logits."""
        m = self.config.method
        targets = torch.softmax((teacher - self.center2) / m.warmup_teacher_patch_temp, dim=-1)
        per_patch = -(targets * torch.log_softmax(student / m.student_temp, dim=-1)).sum(dim=-1)
        weights = mask.float()
        per_crop = (per_patch * weights).sum(dim=-1) / weights.sum(dim=-1).clamp(min=1.0)
        with torch.no_grad():
            self.center2.mul_(m.center_momentum).add_(teacher.mean(dim=(0, 1)), alpha=1 - m.center_momentum)
        return per_crop.mean()

    def _ibot_step(self) -> float:
        cfg, m = self.config, self.config.method
        num_global = cfg.augment.global_crops.number
        global_views = self.views["global"]
        with self._autocast():
            with torch.no_grad():
                teacher_out = self._ibot_tokens(self.teacher, global_views, None)
            student_out = self._ibot_tokens(self.student, global_views, self.masks)
            student_cls = student_out[:, 0]
            if "local" in self.views:  # [CLS] only, no mask
                local_cls = self.student["backbone"].vit(self.views["local"])
                student_cls = torch.cat([student_cls, self.student["head"](local_cls)])
            num_views = student_cls.shape[0] // (global_views.shape[0] // num_global)
            cls_loss = self.loss_fn(list(teacher_out[:, 0].chunk(num_global)), list(student_cls.chunk(num_views)),
                                    epoch=0)
            patch_loss = self._ibot_patch_loss(student_out[:, 1:].float(), teacher_out[:, 1:].float(),
                                               self.masks[:, 1:])
            loss = m.lambda1 * cls_loss + m.lambda2 * patch_loss
        self._optimizer_step(loss)
        return self._sync(loss)

    # --- SimCLR / BYOL -----------------------------------------------------------------------
    def _build_two_view(self):
        cfg, m = self.config, self.config.method
        backbone = timm_resnet_backbone(cfg.model)
        width = backbone.num_features
        if m.name == "simclr":
            projector = heads.SimCLRProjectionHead(width, m.projector.hidden_dim, m.projector.out_dim,
                                                   num_layers=m.projector.num_layers)
            modules = {"backbone": backbone, "projector": projector}
            self.loss_fn = NTXentLoss(temperature=m.temperature)
        else:
            projector = heads.BYOLProjectionHead(width, m.projector.hidden_dim, m.projector.out_dim)
            predictor = heads.BYOLPredictionHead(m.projector.out_dim, m.predictor.hidden_dim, m.predictor.out_dim)
            modules = {"backbone": backbone, "projector": projector, "predictor": predictor}
            self.loss_fn = NegativeCosineSimilarity()
        self.student = nn.ModuleDict(modules).to(self.device)
        if m.name == "byol":
            self.teacher = copy.deepcopy(nn.ModuleDict({"backbone": backbone, "projector": projector})).to(
                self.device).requires_grad_(False)
        self.optimizer = LARS(self.student.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                              weight_decay=cfg.optim.weight_decay)
        self.step = self._two_view_step

    def _two_view_step(self) -> float:
        views = self.views["global"]
        with self._autocast():
            if self.config.method.name == "simclr":
                z = self.student["projector"](self.student["backbone"](views))  # both views through BN together
                z1, z2 = z.chunk(2)
                loss = self.loss_fn(z1, z2)
            else:
                v1, v2 = views.chunk(2)
                online = [self.student["projector"](self.student["backbone"](v)) for v in (v1, v2)]
                p1, p2 = (self.student["predictor"](z) for z in online)
                with torch.no_grad():
                    t1, t2 = (self.teacher["projector"](self.teacher["backbone"](v)) for v in (v1, v2))
                loss = 2 * (self.loss_fn(p1, t2) + self.loss_fn(p2, t1)) + 4  # 2 - 2 cos, summed over both pairs
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.config.method.name == "byol":
            with torch.no_grad():
                update_momentum(self.student["backbone"], self.teacher["backbone"], self.config.optim.teacher_momentum)
                update_momentum(self.student["projector"], self.teacher["projector"],
                                self.config.optim.teacher_momentum)
        return self._sync(loss)

    # --- MAE ----------------------------------------------------------------------------------
    def _build_mae(self):
        cfg, m = self.config, self.config.method
        vit = timm_vit(cfg.model)
        self.encoder = MaskedVisionTransformerTIMM(vit=vit)
        self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=cfg.model.patch_size,
                                      embed_dim=vit.embed_dim, decoder_embed_dim=m.decoder_embed_dim,
                                      decoder_depth=m.decoder_depth, decoder_num_heads=m.decoder_num_heads)
        self.student = nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder}).to(self.device)
        self.optimizer = torch.optim.AdamW(adamw_groups(self.student, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                           betas=(cfg.optim.b1, cfg.optim.b2), eps=cfg.optim.eps)
        self.step = self._mae_step

    def _mae_step(self) -> float:
        """lightly's MAE example: encoder on the kept tokens, decoder with mask tokens, loss on masked patches."""
        images = self.views["global"]
        batch_size, sequence_length = images.shape[0], self.encoder.sequence_length
        with self._autocast():
            idx_keep, idx_mask = lightly_utils.random_token_mask((batch_size, sequence_length),
                                                                 mask_ratio=self.config.method.mask_ratio,
                                                                 device=images.device)
            encoded = self.encoder.encode(images=images, idx_keep=idx_keep)
            tokens = lightly_utils.repeat_token(self.decoder.mask_token, (batch_size, sequence_length))
            tokens = lightly_utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded).type_as(tokens))
            prediction = self.decoder.predict(lightly_utils.get_at_index(self.decoder.decode(tokens), idx_mask))
            target = lightly_utils.get_at_index(lightly_utils.patchify(images, self.config.model.patch_size),
                                                idx_mask - 1)
            if self.config.method.norm_pix_loss:
                mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
                target = (target - mean) / (var + 1e-6) ** 0.5
            loss = nn.functional.mse_loss(prediction.float(), target.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return self._sync(loss)

    def _sync(self, loss: torch.Tensor) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    def peak_memory_bytes(self) -> int | None:
        """Peak allocated device memory on a GPU; None on the CPU (not tracked by torch)."""
        return torch.cuda.max_memory_allocated() if self.device.type == "cuda" else None
