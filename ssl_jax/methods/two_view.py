"""The structure SimCLR, BYOL, MoCo v3 and SimSiam share: two views, a symmetrised pair loss.

    online: q_v = predictor(projector(backbone(x_v)))     (no predictor: SimCLR)
    target: k_v = projector_t(backbone_t(x_v))  with an EMA teacher (BYOL, MoCo v3)
            k_v = stop_gradient(z_v)            the online projection (SimSiam)
            k_v = z_v                           gradients through both (SimCLR)
    loss  = weight * (pair_loss(q_1, k_2) + pair_loss(q_2, k_1))

`TwoViewMethod` is a shared piece, not a method: it is not registered in `METHODS` and has
no pair loss of its own. Each of the four method files subclasses it once (never a method
from another method) and names only its pair loss, its target, whether it has a predictor,
its weight and (SimCLR) `joint_views`: the four papers differ in exactly these, so the
whole algorithm is the one `loss` below. Its config gives the backbone (`model`), the `method.projector` /
`method.predictor` MLPs and the temperature where there is one. BatchNorm statistics (ResNet
backbones, the MLPs) are over the global batch and kept in the TrainState's
`model_state`; the EMA teacher normalises with its own batch statistics (train
mode, like the references' momentum encoders) and keeps no running averages,
since only the online backbone is evaluated.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import projection_mlp
from ssl_jax.models.network import Network

TARGETS = ("ema", "stop_gradient", "online")


class TwoViewMethod(OnlineBackboneEval):
    """The shared two-view algorithm (not a registered method). Batch: {'views': {'global':
    [B, 2, H, W, 3]}} (two augmented views per image)."""

    target: str  # one of TARGETS
    has_predictor: bool
    loss_weight: float = 1.0
    # SimCLR runs both views through the network as one batch of 2B, so BatchNorm
    # statistics are over both views; the others run each view on its own.
    joint_views: bool = False
    state_accumulation = "mean"  # no method_state

    def __init_subclass__(cls, **kwargs):
        """A method's `ema_teacher` is its target: the step keeps an EMA teacher exactly for 'ema'."""
        super().__init_subclass__(**kwargs)
        cls.ema_teacher = cls.target == "ema"

    def __init__(self, config, steps_per_epoch: int):
        del steps_per_epoch
        if self.target not in TARGETS:
            raise ValueError(f"{type(self).__name__}.target must be one of {TARGETS}, got {self.target!r}")
        dtype = compute_dtype(config)
        modules = {"backbone": build_backbone(config.model, **backbone_kwargs(config)),
                   "projector": projection_mlp(config.method.projector, dtype)}
        if self.has_predictor:
            modules["predictor"] = projection_mlp(config.method.predictor, dtype)
        self.network = Network(modules)
        self.config = config.method

    def pair_loss(self, queries: jax.Array, keys: jax.Array) -> jax.Array:
        """One direction of the loss: queries of view a [B, D] against keys of view b [B, D]."""
        raise NotImplementedError

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        params, stats = self.network.init(rng, batch["views"]["global"][:, 0])
        teacher = jax.tree.map(jnp.copy, self.teacher_targets(params)) if self.ema_teacher else None
        return MethodVariables(params, teacher, None, stats or None)

    def teacher_targets(self, params):
        """The EMA teacher tracks the backbone and the projector (not the predictor)."""
        return {"backbone": params["backbone"], "projector": params["projector"]}

    def _online(self, params, stats, views: jax.Array, rng: jax.Array):
        """views [B, 2, H, W, 3] -> (queries [q_1, q_2], projections [z_1, z_2], new stats)."""
        if self.joint_views:
            batch = views.shape[0]
            out, stats = self.network.apply(params, stats, views.reshape((2 * batch,) + views.shape[2:]),
                                            train=True, rng=rng)
            out = out.reshape((batch, 2) + out.shape[1:])
            return [out[:, 0], out[:, 1]], [out[:, 0], out[:, 1]], stats
        queries, projections = [], []
        for view, view_rng in zip((views[:, 0], views[:, 1]), jax.random.split(rng)):
            z, stats = self.network.apply(params, stats, view, train=True, rng=view_rng, upto="projector")
            projections.append(z)
            if self.has_predictor:
                q, stats = self.network.apply(params, stats, z, train=True, start="predictor")
            else:
                q = z
            queries.append(q)
        return queries, projections, stats

    def _keys(self, teacher, stats, views: jax.Array, projections: list, rng: jax.Array) -> list:
        if self.target == "online":
            return projections
        if self.target == "stop_gradient":
            return [jax.lax.stop_gradient(z) for z in projections]
        keys = []
        for view, view_rng in zip((views[:, 0], views[:, 1]), jax.random.split(rng)):
            # Train-mode BatchNorm: the teacher's running averages would be discarded, so the
            # online ones are passed only to fill the collection.
            k, _ = self.network.apply(teacher, stats, view, train=True, rng=view_rng, upto="projector")
            keys.append(jax.lax.stop_gradient(k))
        return keys

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del step
        views = batch["views"]["global"]
        online_rng, target_rng = jax.random.split(rng)
        stats = model_state or {}
        queries, projections, new_stats = self._online(params, stats, views, online_rng)
        keys = self._keys(teacher, stats, views, projections, target_rng)
        loss = self.loss_weight * (self.pair_loss(queries[0], keys[1]) + self.pair_loss(queries[1], keys[0]))
        metrics = {
            # mean cos(q_v, k_other view): rises towards 1 as the views agree.
            "positive_cosine": 0.5 * jnp.mean(losses.cosine_similarity(queries[0], keys[1])
                                               + losses.cosine_similarity(queries[1], keys[0])),
            # ~1 while projections are spread over the sphere, 0 at collapse (SimSiam, Fig. 2).
            "projection_std": losses.normalized_std(projections[0]),
        }
        return loss, LossOutput(metrics, method_state, new_stats or None)
