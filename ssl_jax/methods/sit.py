"""SiT: Self-supervised vIsion Transformer (Atito, Awais and Kittler, 2021): corrupted-image
reconstruction, rotation prediction and contrastive learning, trained jointly, each task with
its own output of one ViT.

    for each of the two views v of an image (global crops):
        x~ = corrupt(x_v)        a random `corrupt_ratio` of its patches replaced by the same patches
                                 of another image of the batch ("drag and drop")
        k  ~ U{0, 1, 2, 3};  x~_k = rot90(x~, k),  target_k = rot90(x_v, k)
        [c, r, patches] = ViT(x~_k)   c: [CLS], the contrastive token; r: a register, the rotation token
        L_rec = L1(linear(patches), patchify(target_k))              the clean image, every pixel
        L_rot = CE(linear(r), k)
        z_v = MLP(c)
    L_con = NT-Xent(z_1, z_2) + NT-Xent(z_2, z_1)  (negatives from the global batch)
    loss = w_rec L_rec + w_rot mean_v L_rot + w_con L_con

The rotation token is the ViT's register token kept in its output (`keep_registers`), so it
attends and is attended like [CLS] but has no position embedding; evaluation uses [CLS], the
contrastive token. Shared pieces: `rotation.rotate_four`, `losses.nt_xent`,
`losses.masked_pixel_l1` (over all patches), `vit.patchify`, `heads.LinearHead` / `heads.MLP`.
The paper weights the three losses by learned uncertainties; the weights here are fixed config
values (`method.weights`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.methods.rotation import NUM_ROTATIONS, rotate_four
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import MLP, LinearHead
from ssl_jax.models.network import Network
from ssl_jax.models.vit import patchify


def drag_and_drop(rng: jax.Array, images: jax.Array, patch: int, ratio: float) -> jax.Array:
    """images [B, S, S, C] -> the same with a random `ratio` of each image's patches (patch x patch
    cells) replaced by the same cells of the next image in the batch (a rolled batch)."""
    batch, size = images.shape[0], images.shape[1]
    grid = size // patch
    replaced = jax.random.uniform(rng, (batch, grid, grid)) < ratio
    pixels = jnp.repeat(jnp.repeat(replaced, patch, axis=1), patch, axis=2)[..., None]
    return jnp.where(pixels, jnp.roll(images, 1, axis=0), images)


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
        self.heads = {"reconstruction": LinearHead(self.patch * self.patch * 3, dtype),
                      "rotation": LinearHead(NUM_ROTATIONS, dtype),
                      "contrastive": MLP(tuple(cfg.contrastive_dims), dtype)}
        self.corrupt_ratio = cfg.corrupt_ratio
        self.temperature = cfg.temperature
        self.weights = dict(cfg.weights)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        backbone_rng, *head_rngs = jax.random.split(rng, 1 + len(self.heads))
        params, _ = self.network.init(backbone_rng, batch["views"]["global"][:, 0])
        dim = self.network.modules["backbone"].embed_dim
        for (name, head), head_rng in zip(self.heads.items(), head_rngs):
            params[name] = head.init(head_rng, jnp.zeros((1, dim)))["params"]
        return MethodVariables(params, None, None, None)

    def forward(self, params, images: jax.Array, rng: jax.Array | None):
        """images [B, S, S, 3] -> (contrastive embedding [B, D_c], rotation logits [B, 4], pixels [B, N, p*p*3])."""
        train = rng is not None
        tokens = self.network.modules["backbone"].apply(
            {"params": params["backbone"]}, images, train=train, return_tokens=True, keep_registers=True,
            rngs={"drop_path": rng} if train else None)  # [B, 2 + N, D]: [CLS], rotation token, patches
        apply = lambda name, x: self.heads[name].apply({"params": params[name]}, x)  # noqa: E731
        return (apply("contrastive", tokens[:, 0]), apply("rotation", tokens[:, 1]),
                apply("reconstruction", tokens[:, 2:]))

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

            corrupted = pick(drag_and_drop(corrupt_rng, clean, self.patch, self.corrupt_ratio))
            z, rotation_logits, pixels = self.forward(params, corrupted, drop_rng)
            target = patchify(pick(clean), self.patch)
            reconstruction_losses.append(losses.masked_pixel_l1(pixels, target, jnp.ones(target.shape[:2], bool)))
            rotation_losses.append(losses.cross_entropy(rotation_logits, k))
            hits.append(jnp.mean((jnp.argmax(rotation_logits, -1) == k).astype(jnp.float32)))
            embeddings.append(z)
        terms = {"reconstruction": jnp.mean(jnp.stack(reconstruction_losses)),
                 "rotation": jnp.mean(jnp.stack(rotation_losses)),
                 "contrastive": losses.nt_xent(embeddings[0], embeddings[1], self.temperature)
                 + losses.nt_xent(embeddings[1], embeddings[0], self.temperature)}
        loss = sum(self.weights[name] * value for name, value in terms.items())
        metrics = {f"{name}_loss": value for name, value in terms.items()}
        metrics["rotation_accuracy"] = jnp.mean(jnp.stack(hits))
        return loss, LossOutput(metrics, method_state, model_state)

    def teacher_targets(self, params):
        return None
