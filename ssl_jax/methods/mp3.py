"""MP3: masked patch position prediction (Zhai et al., "Position Prediction as an Effective Pretraining
Strategy", ICML 2022).

    tokens = ViT(patches)         no position embeddings anywhere (pos_embed='none', no [CLS]): a token
                                  knows its content only, so its position is something to infer
    context = a random (1 - mask_ratio) of the patches of each image
    in every block all N tokens are queries, only the context tokens are keys/values
    logits = head(tokens)                                      [B, N, N]: token n -> which of N positions
    loss = cross-entropy(logits[b, n], n), mean over every token of every image

Then fine-tune the backbone (`python -m ssl_jax.evaluate --eval=finetune`). The context mask is
MAE's per-sample random mask (`masks.random_masks`, static count), handed to the ViT as its
`kv_mask` (keys and values); the classifier is one linear layer on the normed tokens, as in the
lucidrains/vit-pytorch port (LayerNorm + Linear). Without position embeddings the encoder is
permutation-equivariant: permuting the input patches permutes the output tokens, so a token's
position can only come from its content and its context (tested).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses, masks
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import LinearHead
from ssl_jax.models.network import Network


class MP3(OnlineBackboneEval):
    """MP3 pretraining. `views`: 'global' [B, 1, S, S, 3]."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        model = config.model
        if (model.name != "vit" or model.get("pos_embed") != "none" or model.get("class_token", True)
                or model.get("num_register_tokens", 0)):
            raise UserError("MP3 predicts positions, so its ViT must have none to leak: set config.model.name='vit', "
                            "config.model.pos_embed='none', class_token=False and num_register_tokens=0")
        size = config.augment.global_crops.size
        if config.augment.global_crops.number != 1 or config.augment.local_crops.number:
            raise UserError("MP3 takes one view per image: config.augment.global_crops.number=1, local_crops.number=0")
        self.num_patches = (size // model.patch_size) ** 2
        self.network = Network({"backbone": build_backbone(model, **backbone_kwargs(config)),
                                "head": LinearHead(self.num_patches, compute_dtype(config))})
        self.mask_ratio = config.method.mask_ratio

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params, _ = self.network.init(rng, batch["views"]["global"][:, 0])
        return MethodVariables(params, None, None, None)

    def position_logits(self, params, images: jax.Array, context: jax.Array | None, rng=None) -> jax.Array:
        """images [B, S, S, 3], context [B, N] bool (None: every token is a key) -> logits [B, N, N]."""
        backbone, head = self.network.modules["backbone"], self.network.modules["head"]
        train = rng is not None
        tokens = backbone.apply({"params": params["backbone"]}, images, method="embed")  # [B, N, D], no positions
        tokens = backbone.apply({"params": params["backbone"]}, tokens, train, context, method="encode",
                                rngs={"drop_path": rng} if train else None)  # context: the keys and values
        return head.apply({"params": params["head"]}, tokens)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher, step
        images = batch["views"]["global"][:, 0]
        mask_rng, drop_rng = jax.random.split(rng)
        context = ~masks.random_masks(mask_rng, images.shape[0], self.num_patches, self.mask_ratio).mask
        logits = self.position_logits(params, images, context, drop_rng)
        if logits.shape[1] != self.num_patches:
            raise UserError(f"MP3 was built for {self.num_patches} patches per image, got {logits.shape[1]}: "
                            f"train on config.augment.global_crops.size crops")
        positions = jnp.broadcast_to(jnp.arange(self.num_patches), logits.shape[:2])
        loss = losses.cross_entropy(logits, positions)
        metrics = {"position_accuracy": jnp.mean((jnp.argmax(logits, -1) == positions).astype(jnp.float32)),
                   "context_fraction": jnp.mean(context.astype(jnp.float32))}
        return loss, LossOutput(metrics, method_state, model_state)

    def teacher_targets(self, params):
        return None
