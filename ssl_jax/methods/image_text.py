"""What CLIP, SigLIP, SLIP and LiT share: the two-tower forward and their evaluation.

    zimg = normalise(image_projection(backbone(view)))     [B, D]  (LiT: no projection, the locked tower's output)
    ztxt = normalise(text_tower(batch["text"]))            [B, D]  (`ssl_jax.models.text`)

The image tower is `config.model`'s backbone (`models/backbones.py`) and a bias-free linear projection
to `config.method.embed_dim`, initialised N(0, W^-1/2) as openai/CLIP `VisionTransformer.proj`. The
text tower is `config.text` (`models/text.build_text_tower`). The methods add their scalars
(CLIP's logit scale, SigLIP's t' and b) and their loss. Evaluation (kNN, probes) reads the backbone's
pooled features; zero-shot and retrieval read `embed_images` / `embed_texts` of `eval_variables(state)`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError
from ssl_jax.losses import l2_normalize
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.text import build_text_tower


def clip_projection_init(key, shape, dtype=jnp.float32):
    """openai/CLIP `proj` / `text_projection`: N(0, in_width^-1/2). shape [W, D]."""
    return jax.random.normal(key, shape, dtype) * shape[0] ** -0.5


def check_batch(batch: dict, name: str) -> None:
    if "text" not in batch:
        raise UserError(f"{name} needs captions: set config.dataset.name='image_text' (ssl_jax/data/image_text.py)")


class TwoTowers:
    """Image and text towers; `project_images=False` (LiT) uses the backbone's output as the image embedding."""

    def __init__(self, config, project_images: bool = True):
        self.backbone = build_backbone(config.model, **backbone_kwargs(config))
        dtype = compute_dtype(config)
        self.image_projection = (nn.Dense(config.method.embed_dim, use_bias=False, kernel_init=clip_projection_init,
                                          dtype=dtype) if project_images else None)
        self.text = build_text_tower(config.text, config.method.embed_dim, dtype)
        self.max_len = config.text.max_len

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        """{'backbone', 'image_projection' (when projecting), 'text'} params from images [B, S, S, 3]."""
        rngs = jax.random.split(rng, 3)
        params = {"backbone": self.backbone.init(rngs[0], images)["params"]}
        if self.image_projection is not None:
            features = self.backbone.apply({"params": params["backbone"]}, images)
            params["image_projection"] = self.image_projection.init(rngs[1], features)["params"]
        params["text"] = self.text.init(rngs[2], jnp.zeros((1, self.max_len), jnp.int32))["params"]
        return params

    def image_features(self, backbone_params, images: jax.Array, train: bool = False,
                       rng: jax.Array | None = None) -> jax.Array:
        """The backbone's pooled features [B, W] of images [B, S, S, 3]."""
        rngs = {"drop_path": rng} if train and rng is not None else None
        return self.backbone.apply({"params": backbone_params}, images, train=train, rngs=rngs)

    def embed_images(self, params: dict, images: jax.Array, train: bool = False, rng: jax.Array | None = None,
                     backbone_params=None) -> jax.Array:
        """Normalised image embeddings [B, D] float32 (`backbone_params`: a locked tower kept out of params)."""
        x = self.image_features(params["backbone"] if backbone_params is None else backbone_params, images, train, rng)
        if self.image_projection is not None:
            x = self.image_projection.apply({"params": params["image_projection"]}, x)
        return l2_normalize(x.astype(jnp.float32))

    def embed_texts(self, params: dict, ids: jax.Array) -> jax.Array:
        """Normalised text embeddings [B, D] float32 of token ids [B, L]."""
        return l2_normalize(self.text.apply({"params": params["text"]}, ids).astype(jnp.float32))


class TwoTowerEval:
    """`eval_variables` / `features` and the zero-shot/retrieval embeddings of a method with `self.towers`
    whose variables are its params (CLIP, SigLIP, SLIP; LiT overrides where its locked tower lives)."""

    def eval_variables(self, state):
        return state.params

    def features(self, variables, model_state, images: jax.Array) -> jax.Array:
        """The backbone's pooled features [B, W] (what kNN and the linear probe read)."""
        return self.towers.image_features(variables["backbone"], images).astype(jnp.float32)

    def embed_images(self, variables, images: jax.Array) -> jax.Array:
        return self.towers.embed_images(variables, images)

    def embed_texts(self, variables, ids: jax.Array) -> jax.Array:
        return self.towers.embed_texts(variables, ids)
