"""SiT: Self-supervised vIsion Transformer (Atito, Awais and Kittler, 2021): corrupted-image
reconstruction, rotation prediction and contrastive learning, trained jointly, each task with
its own output of one ViT. Reference: Sara-Ahmed/SiT (`engine.py` train_SSL, `losses.py`,
`vision_transformer_SiT.py`, `datasets/datasets_utils.py`).

    for each of the two views v of an image (global crops, each with its own rotation):
        k  ~ U{0, 1, 2, 3};  x_k = rot90(x_v, k)
        x~ = distort(x_k)        engine.py's distortImages: a grey and a blurred rectangle, noise blocks,
                                 then blocks of another (random) image of the batch, at the same place
        [c, r, patches] = ViT(x~)    c: [CLS], the contrastive token; r: a register, the rotation token
        L_rec = L1(ConvTranspose(patches), x_k)          the clean image, every pixel
        L_rot = CE(Linear(r), k)
        z_v = Linear(c)                                  D -> 512
    L_con = (NT-Xent(z_1, z_2) + NT-Xent(z_2, z_1)) / 2    the reference's ContrastiveLoss over 2B anchors
    loss = sum_t a_t exp(-s_t) L_t + s_t / 2    s_t learned (init 1), a = 1 (rotation, contrastive), 0.5 (L1)

The loss weights are the reference's learned uncertainties (`LearnedLoss.calculate_weighted_loss`),
parameters `task_weights/<task>` [1] trained with the rest (1-D: no weight decay, as timm's
optimiser groups). The rotation token is the ViT's one register token, read from its output
after [CLS], so it attends and is attended like [CLS] but has no position embedding (the
reference adds a learned one to its learned token: the same sum of two learned vectors);
evaluation uses [CLS], the contrastive token. Shared pieces: `rotation.rotate_four`,
`losses.nt_xent`, `losses.masked_pixel_l1` (over all patches), `vit.patchify`, `heads.MLP`.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.methods.rotation import NUM_ROTATIONS, rotate_four
from ssl_jax.methods.sit_distort import distort
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import MLP
from ssl_jax.models.network import Network
from ssl_jax.models.vit import patchify


class PatchPixels(nn.Module):
    """ConvTranspose2d(D, C, kernel p, stride p) on the patch tokens: tokens [B, N, D] -> pixels
    [B, N, p*p*C] in `vit.patchify` order; one bias per channel; torch's default init
    (kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), fan_in = C p^2 for a transposed conv's weight)."""

    patch: int
    channels: int = 3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        bound = (self.channels * self.patch**2) ** -0.5
        init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
        pixels = nn.Dense(self.patch**2 * self.channels, use_bias=False, kernel_init=init, dtype=self.dtype,
                          name="proj")(tokens)
        bias = self.param("bias", init, (self.channels,))
        return pixels + jnp.tile(bias, self.patch**2).astype(pixels.dtype)


class SiT(OnlineBackboneEval):
    """`views`: 'global' [B, 2, S, S, 3]."""

    ema_teacher = False
    state_accumulation = "mean"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        model = config.model
        if model.name != "vit" or not model.get("class_token", True) or model.get("num_register_tokens", 0) != 1:
            raise UserError("SiT needs a ViT with its [CLS] (contrastive) token and one register (rotation) token: "
                            "config.model.name='vit', class_token=True, num_register_tokens=1")
        if config.augment.global_crops.number != 2:
            raise UserError("SiT contrasts two views: config.augment.global_crops.number=2")
        cfg = config.method
        dtype = compute_dtype(config)
        self.patch = model.patch_size
        self.network = Network({"backbone": build_backbone(model, **backbone_kwargs(config))})
        # Linear heads with trunc_normal(.02) init and zero bias (`_init_vit_weights`); the pixels come
        # from ConvTranspose2d(D, 3, p, stride=p) with torch's default init (`convTrans`).
        self.heads = {"reconstruction": PatchPixels(self.patch, 3, dtype),
                      "rotation": MLP((NUM_ROTATIONS,), dtype),
                      "contrastive": MLP((cfg.contrastive_dim,), dtype)}
        self.corruption = dict(cfg.corruption)
        self.temperature = cfg.temperature
        self.loss_scales = dict(cfg.loss_scales)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        backbone_rng, *head_rngs = jax.random.split(rng, 1 + len(self.heads))
        params, _ = self.network.init(backbone_rng, batch["views"]["global"][:, 0])
        dim = self.network.modules["backbone"].embed_dim
        for (name, head), head_rng in zip(self.heads.items(), head_rngs):
            params[name] = head.init(head_rng, jnp.zeros((1, dim)))["params"]
        params["task_weights"] = {name: jnp.ones((1,), jnp.float32) for name in self.loss_scales}  # s_t = 1.0
        return MethodVariables(params, None, None, None)

    def forward(self, params, images: jax.Array, rng: jax.Array | None):
        """images [B, S, S, 3] -> (contrastive embedding [B, D_c], rotation logits [B, 4], pixels [B, N, p*p*3])."""
        train = rng is not None
        tokens = self.network.modules["backbone"].apply(
            {"params": params["backbone"]}, images, train, method="tokens",
            rngs={"drop_path": rng} if train else None)  # [B, 2 + N, D]: [CLS], rotation token, patches
        apply = lambda name, x: self.heads[name].apply({"params": params[name]}, x)  # noqa: E731
        return (apply("contrastive", tokens[:, 0]), apply("rotation", tokens[:, 1]),
                apply("reconstruction", tokens[:, 2:]))

    def contrastive_loss(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
        """SiT's ContrastiveLoss: NT-Xent at `method.temperature` averaged over all 2B anchors. z: [B, D_c]."""
        return 0.5 * (losses.nt_xent(z1, z2, self.temperature) + losses.nt_xent(z2, z1, self.temperature))

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher, step
        views = batch["views"]["global"]
        embeddings, rotation_losses, reconstruction_losses, hits = [], [], [], []
        for v, view_rng in enumerate(jax.random.split(rng, 2)):
            corrupt_rng, rotation_rng, drop_rng = jax.random.split(view_rng, 3)
            clean = views[:, v]
            k = jax.random.randint(rotation_rng, (clean.shape[0],), 0, NUM_ROTATIONS)

            def pick(x, k=k):  # x rotated by k[b] quarter turns, image by image
                return jnp.take_along_axis(rotate_four(x), k[:, None, None, None, None], axis=1)[:, 0]

            rotated = pick(clean)  # the reference rotates in the dataset, before augmenting and corrupting
            partner = jax.random.randint(jax.random.fold_in(corrupt_rng, 1), (rotated.shape[0],), 0, rotated.shape[0])
            corrupted = jax.vmap(functools.partial(distort, **self.corruption))(
                jax.random.split(corrupt_rng, rotated.shape[0]), rotated, rotated[partner],
                partner != jnp.arange(rotated.shape[0]))
            z, rotation_logits, pixels = self.forward(params, corrupted, drop_rng)
            target = patchify(rotated, self.patch)
            reconstruction_losses.append(losses.masked_pixel_l1(pixels, target, jnp.ones(target.shape[:2], bool)))
            rotation_losses.append(losses.cross_entropy(rotation_logits, k))
            hits.append(jnp.mean((jnp.argmax(rotation_logits, -1) == k).astype(jnp.float32)))
            embeddings.append(z)
        terms = {"reconstruction": jnp.mean(jnp.stack(reconstruction_losses)),
                 "rotation": jnp.mean(jnp.stack(rotation_losses)),
                 "contrastive": self.contrastive_loss(embeddings[0], embeddings[1])}
        s = {name: params["task_weights"][name][0] for name in terms}
        loss = sum(self.loss_scales[name] * jnp.exp(-s[name]) * value + 0.5 * s[name] for name, value in terms.items())
        metrics = {f"{name}_loss": value for name, value in terms.items()}
        metrics.update({f"{name}_weight": value for name, value in s.items()})
        metrics["rotation_accuracy"] = jnp.mean(jnp.stack(hits))
        return loss, LossOutput(metrics, method_state, model_state)

    def teacher_targets(self, params):
        return None
