"""Fine-tuning the whole ViT with a linear head (MAE's main_finetune.py recipe).

    x, targets = Mixup/CutMix(RandomErasing(images), smoothed one-hot labels)      (core/batch_augment.py)
    logits = Linear(fc_norm(mean of the last block's patch tokens)) with global_pool (MAE's default;
             the backbone's final norm is then unused, as MAE deletes it), else Linear(ViT(x)[CLS])
    loss = soft-target cross-entropy; everything trained

AdamW with layer-wise lr decay (`optim.lr_multipliers` with MAE's `util/lr_decay.py` ids: the
patch embedding, [CLS], registers and position embeddings are layer 0, block i is layer i+1, the
final norm, fc_norm and the head are layer depth+1; a parameter of layer l trains at
lr x decay^(depth+1-l)), weight decay on matrices except cls_token / pos_embed, stochastic depth,
label smoothing, warm-up + cosine. The images are the probes' crops (random resized crop + flip)
followed by RandAugment (`supervised_data.augmented_batches`, `protocol.finetune.randaugment`);
random erasing, mixup/CutMix and label smoothing run on the device (`ssl_jax.core.batch_augment`,
timm's semantics). Slower than the probes: every step is a forward and backward pass of the
whole network.
"""
from __future__ import annotations

from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssl_jax.core.batch_augment import soft_cross_entropy, supervised_batch
from ssl_jax.errors import UserError
from ssl_jax.models.backbones import backbone_kwargs, build_backbone
from ssl_jax.optim import LAYER0_PATTERNS, cosine_schedule, lr_multipliers
from ssl_jax.sharding import batch_sharding, replicated
from ssl_jax.tree_paths import path_parts

# MAE's get_layer_id_for_vit puts cls_token, pos_embed and patch_embed in layer 0; registers join them.
LAYER0 = LAYER0_PATTERNS + ("register_tokens",)
NO_DECAY = ("cls_token", "pos_embed", "mask_token", "register_tokens")  # MAE: model.no_weight_decay()


def decay_mask(params):
    """Weight decay on matrices only, and not on cls_token / pos_embed (MAE's param_groups_lrd)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: x.ndim > 1 and path_parts(p)[-1] not in NO_DECAY, params)


def build_finetune_optimizer(cfg, params, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW -> lr schedule -> layer-wise scale (multiplying the final update of a parameter
    is training it at a scaled lr, weight decay included, as MAE's per-group lr_scale)."""
    o = cfg.optim
    total = cfg.epochs * steps_per_epoch
    peak_lr = o.lr * cfg.batch_size / o.lr_reference_batch  # linear scaling rule, as MAE's blr
    # util/lr_sched.adjust_learning_rate every iteration: the warm-up reaches the peak as the cosine starts
    lr = cosine_schedule(peak_lr, o.min_lr, total, o.warmup_epochs * steps_per_epoch, warmup_style="fraction")
    scales = lr_multipliers(params, cfg.layer_decay, layer0=LAYER0)
    return optax.chain(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
                       optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params)),
                       optax.scale_by_learning_rate(lr),
                       optax.stateless(lambda updates, _: jax.tree.map(lambda u, s: u * s, updates, scales)))


class FineTuner:
    """The ViT (with drop-path) + a linear head (after a fresh `fc_norm` LayerNorm with global_pool),
    initialised from the frozen checkpoint's backbone."""

    def __init__(self, config, cfg, backbone_params, num_classes: int, seed: int = 0):
        if config.model.name != "vit":
            raise UserError("fine-tuning with layer-wise lr decay needs a ViT (config.model.name='vit'), "
                             f"got {config.model.name!r}")
        model_cfg = config.model.copy_and_resolve_references()
        model_cfg.drop_path_rate = cfg.drop_path
        if model_cfg.get("pos_embed") == "none":  # MP3: "add position embeddings ... and finetune" (Sec. 3)
            model_cfg.pos_embed = "learned"
        self.backbone = build_backbone(model_cfg, **backbone_kwargs(config))
        if "pos_embed" not in backbone_params and model_cfg.pos_embed == "learned":  # a fresh trunc_normal(.02) one
            size = model_cfg.img_size
            fresh = self.backbone.init(jax.random.key(seed + 2), jnp.zeros((1, size, size, 3)))["params"]
            backbone_params = {**backbone_params, "pos_embed": fresh["pos_embed"]}
        self.head = nn.Dense(num_classes, kernel_init=nn.initializers.normal(cfg.init_std))
        dim = self.backbone.embed_dim  # the pooled feature: [CLS], or the mean patch token (I-JEPA)
        head = self.head.init(jax.random.key(seed), jnp.zeros((1, dim)))["params"]
        self.params = {"backbone": backbone_params, "head": head}
        self.global_pool = cfg.global_pool
        # Tokens before the patches in the ViT's output: [CLS] and the register tokens.
        self.num_prefix = int(model_cfg.get("class_token", True)) + model_cfg.get("num_register_tokens", 0)
        if self.global_pool:  # MAE's fc_norm: LayerNorm(eps=1e-6), weight 1, bias 0
            self.fc_norm = nn.LayerNorm(1e-6)
            self.params["fc_norm"] = self.fc_norm.init(jax.random.key(seed), jnp.zeros((1, dim)))["params"]
        self.cfg = cfg
        self.num_classes = num_classes
        self.seed = seed

    def logits(self, params, images, train: bool = False, rng=None) -> jax.Array:
        """images [B, S, S, 3] -> logits [B, num_classes]; dropout before the head when training with
        `cfg.dropout` (Noisy Student's noise, self-training's student)."""
        dropout = self.cfg.dropout if train else 0.0
        if dropout:
            rng, dropout_rng = jax.random.split(rng)
        rngs = {"drop_path": rng} if train else None
        if self.global_pool:  # models_vit.py forward_features: x[:, 1:].mean(1), then fc_norm
            tokens = self.backbone.apply({"params": params["backbone"]}, images, train, method="block_outputs",
                                         rngs=rngs)[0][-1]
            pooled = self.fc_norm.apply({"params": params["fc_norm"]}, tokens[:, self.num_prefix:].mean(axis=1))
        else:
            pooled = self.backbone.apply({"params": params["backbone"]}, images, train=train, rngs=rngs)
        if dropout:
            pooled = nn.Dropout(dropout, deterministic=False).apply({}, pooled, rngs={"dropout": dropout_rng})
        return self.head.apply({"params": params["head"]}, pooled).astype(jnp.float32)

    def batch_augment(self, images, labels, rng) -> tuple[jax.Array, jax.Array]:
        """MAE's training-time batch (`batch_augment.supervised_batch`): random erasing, then
        Mixup/CutMix with label-smoothed targets [B, C]."""
        return supervised_batch(rng, images, labels, self.num_classes, self.cfg)

    def train(self, batches: Iterator[dict], steps_per_epoch: int, mesh) -> tuple[dict, list[float]]:
        """Trains cfg.epochs x steps_per_epoch steps on `batches` (global, sharded); returns
        (params, mean loss per epoch)."""
        tx = build_finetune_optimizer(self.cfg, self.params, steps_per_epoch)

        def step(params, opt_state, images, labels, rng):
            augment_rng, drop_rng = jax.random.split(rng)
            x, targets = self.batch_augment(images, labels, augment_rng)

            def loss_fn(p):
                return soft_cross_entropy(self.logits(p, x, True, drop_rng), targets)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        rep, data = replicated(mesh), batch_sharding(mesh)
        jitted = jax.jit(step, in_shardings=(rep, rep, data, data, rep), out_shardings=rep, donate_argnums=(0, 1))
        params, opt_state = self.params, tx.init(self.params)
        rng, losses = jax.random.key(self.seed + 1), []
        for _ in range(self.cfg.epochs):
            epoch_losses = []
            for _ in range(steps_per_epoch):
                batch = next(batches)
                rng, sub = jax.random.split(rng)
                params, opt_state, loss = jitted(params, opt_state, batch["image"], batch["label"], sub)
                epoch_losses.append(loss)
            losses.append(float(jnp.mean(jnp.stack(jax.device_get(epoch_losses)))))
        return params, losses
