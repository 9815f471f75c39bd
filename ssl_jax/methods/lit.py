"""LiT (Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", 2022).

    zimg = normalise(locked_backbone(view))          [B, W]  pretrained (config.init_from), no gradient, no head
    ztxt = normalise(text_tower(caption))            [B, W]  trained, its head maps to the image width
    loss = clip_loss(zimg, ztxt, exp(t')),  t' = log 10 at init, learned, not clipped

google-research/big_vision `configs/proj/image_text/lit_coco.py` (`schedule` ('img/.*', None): the image
tower frozen; `img_head=False`: no image head; `temperature_init = 10.0`) and
`trainers/proj/image_text/contrastive.py` (the bidirectional softmax loss). The locked tower lives in the
TrainState's `teacher` slot, a plain input of the loss: it gets no gradient and no optimiser state, and
no EMA updates it (`ema_teacher = False`). `config.init_from` loads it (a source's teacher when it has
one, e.g. DINO's, else its backbone: `ssl_jax/init_from.py`); `config.init_from_required` makes a tower
that did not load an error. Hyper-parameters in `configs/lit_vit_b16.py`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssl_jax.errors import UserError
from ssl_jax.image_text_losses import clip_loss
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.image_text import TwoTowerEval, TwoTowers, check_batch


class LiT(TwoTowerEval):
    """Batch: views 'global' [B, 1, S, S, 3] and 'text' [B, L]. params {'text', 't'}, teacher {'backbone'}."""

    ema_teacher = False  # the teacher slot holds the locked tower, never updated
    state_accumulation = "mean"  # no method state

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        if not config.init_from and not config.method.allow_random_tower:
            raise UserError("LiT locks a pretrained image tower: set --config.init_from to its weights (an ssl_jax "
                            "workdir or an official checkpoint of config.model's backbone)")
        self.towers = TwoTowers(config, project_images=False)
        self.temperature_init = config.method.temperature_init

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params = self.towers.init(rng, batch["views"]["global"][:, 0])
        width = jax.eval_shape(self.towers.image_features, params["backbone"], batch["views"]["global"][:, 0]).shape[-1]
        if width != self.towers.text.out_dim:
            raise UserError(f"LiT has no image head: config.method.embed_dim={self.towers.text.out_dim} must be the "
                            f"image tower's width {width}")
        locked = {"backbone": params.pop("backbone")}
        params["t"] = jnp.asarray(math.log(self.temperature_init), jnp.float32)
        return MethodVariables(params, locked, None, None)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        check_batch(batch, "LiT")
        # The locked tower runs in inference mode (no drop-path), as big_vision's frozen 'img/' params.
        zimg = self.towers.embed_images(params, batch["views"]["global"][:, 0], backbone_params=teacher["backbone"])
        ztxt = self.towers.embed_texts(params, batch["text"])
        t = jnp.exp(params["t"])
        return clip_loss(zimg, ztxt, t), LossOutput({"temperature": t}, method_state, model_state)

    def teacher_targets(self, params):
        return None

    def eval_variables(self, state):
        return {**state.params, "backbone": state.teacher["backbone"]}
