"""SLIP (Mu et al., "SLIP: Self-supervision meets Language-Image Pre-training", 2022).

    zimg, ztxt = two towers on view 0 and the caption                  (`methods/image_text.py`)
    h1, h2 = ssl_mlp(backbone(view 1)), ssl_mlp(backbone(view 2))       [B, 256], 3-layer MLP with BatchNorm
    loss = clip_loss(zimg, ztxt, scale) + ssl_scale * (nt_xent(h1, h2) + nt_xent(h2, h1)) / 2

facebookresearch/SLIP `losses.py` (`SLIPLoss`: `self.ssl_scale * ssl_loss + clip_loss`; `CLIPLoss`;
`SIMCLRLoss`, temperature 0.1), `models.py` (`SLIP`, `_build_mlp`: Linear-BN-ReLU-Linear-BN-ReLU-Linear,
`logit_scale` = log(1 / 0.07)) and `main.py` (`logit_scale.data.clamp_(0, 4.6052)`: clipped at 100, here
where it is used, as CLIP's `clipped_scale`). Hyper-parameters in `configs/slip_vit_b16.py`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.image_text_losses import clip_loss
from ssl_jax.methods.base import LossOutput, MethodVariables
from ssl_jax.methods.clip import clipped_scale
from ssl_jax.methods.image_text import TwoTowerEval, TwoTowers, check_batch
from ssl_jax.models.backbones import compute_dtype
from ssl_jax.models.heads import ProjectionMLP


class SLIP(TwoTowerEval):
    """Batch: views 'global' [B, 3, S, S, 3] (0: the CLIP view, 1 and 2: the SimCLR views), 'text' [B, L]."""

    ema_teacher = False
    state_accumulation = "mean"  # only BatchNorm statistics (model_state), always averaged

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        cfg = config.method
        self.towers = TwoTowers(config)
        self.ssl_mlp = ProjectionMLP(cfg.ssl_mlp.hidden_dim, cfg.ssl_mlp.out_dim, cfg.ssl_mlp.num_layers,
                                     last_bias=cfg.ssl_mlp.last_bias, init_scheme=cfg.ssl_mlp.init,
                                     dtype=compute_dtype(config))
        self.logit_scale_init, self.max_logit_scale = cfg.logit_scale_init, cfg.max_logit_scale
        self.ssl_scale, self.ssl_temperature = cfg.ssl_scale, cfg.ssl_temperature

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        tower_rng, mlp_rng = jax.random.split(rng)
        images = batch["views"]["global"][:, 0]
        params = self.towers.init(tower_rng, images)
        params["logit_scale"] = jnp.asarray(math.log(self.logit_scale_init), jnp.float32)
        variables = self.ssl_mlp.init(mlp_rng, self.towers.image_features(params["backbone"], images))
        params["ssl_mlp"] = variables["params"]
        return MethodVariables(params, None, None, {"ssl_mlp": variables["batch_stats"]})

    def _ssl_embedding(self, params, stats, features):
        out, updated = self.ssl_mlp.apply({"params": params["ssl_mlp"], "batch_stats": stats}, features, train=True,
                                          mutable=["batch_stats"])
        return out, updated["batch_stats"]

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        check_batch(batch, "SLIP")
        views = batch["views"]["global"]
        b = views.shape[0]
        # One backbone call on the three views [3B, S, S, 3] (a ViT has no batch statistics).
        features = self.towers.image_features(params["backbone"], jnp.swapaxes(views[:, :3], 0, 1).reshape(
            (3 * b,) + views.shape[2:]), train=True, rng=rng)
        zimg = losses.l2_normalize(self.towers.image_projection.apply(
            {"params": params["image_projection"]}, features[:b]).astype(jnp.float32))
        ztxt = self.towers.embed_texts(params, batch["text"])
        scale = clipped_scale(params["logit_scale"], self.max_logit_scale)
        clip = clip_loss(zimg, ztxt, scale)
        # SLIP's image_mlp runs on each view separately (SyncBatchNorm statistics per view).
        h1, stats = self._ssl_embedding(params, model_state["ssl_mlp"], features[b:2 * b])
        h2, stats = self._ssl_embedding(params, stats, features[2 * b:])
        ssl = (losses.nt_xent(h1, h2, self.ssl_temperature) + losses.nt_xent(h2, h1, self.ssl_temperature)) / 2
        metrics = {"clip_loss": clip, "ssl_loss": ssl, "logit_scale": scale}
        return clip + self.ssl_scale * ssl, LossOutput(metrics, method_state, {"ssl_mlp": stats})

    def teacher_targets(self, params):
        return None
