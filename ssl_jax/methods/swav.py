"""SwAV: unsupervised learning of visual features by contrasting cluster assignments (Caron et al., 2020).

    z_v = normalize(projector(backbone(x_v)))     every crop v, backbone once per crop size  # [B, V, D]
    s_v = z_v C                                   C: prototypes [D, K] with unit columns      # [B, V, K]
    for a in crops_for_assign (the two global crops):
        q_a = sinkhorn([queue_a C ; s_a], eps)[-B:]    codes over the global batch, no gradient
    loss = mean over (a, v != a) of  -sum_k q_a log softmax(s_v / tau)      (swapped prediction)
    queue_a <- [z_a ; queue_a[:-B]]      from epoch `epoch_queue_starts`, used once it is full

Reproduces facebookresearch/swav's `main_swav.py` (`train`, `distributed_sinkhorn`); the
hyper-parameters live in `configs/swav_resnet50.py`. The pieces are shared:
`losses.sinkhorn_knopp` (DINOv2's, the same algorithm; `weights` leaves the queue out until it
is full), `losses.dino_cross_entropy` (the mean over (code view, predicting view) pairs with
the same view skipped is exactly SwAV's `subloss / (V - 1)` averaged over crops_for_assign,
once the assigned crops come first), the multi-crop forward and the `ProjectionMLP`.

Prototype normalisation: the reference normalises the prototype weights in place before each
forward pass. Here they are normalised at init and after every optimiser update
(`optim.normalize_patterns`, `optim.normalize_columns_after_update`), so the loss, LARS and
the weight decay see unit-norm prototypes exactly as in the reference, and the step stays pure.
Freezing them for the first `freeze_prototypes_niters` iterations is `optim.freeze_patterns` with
`optim.freeze_steps`. Suave (`methods/suave.py`) is `swav_loss` with other codes.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods.base import LossOutput, MethodVariables, OnlineBackboneEval
from ssl_jax.models.backbones import backbone_kwargs, build_backbone, compute_dtype
from ssl_jax.models.heads import LINEAR_INITS, projection_mlp
from ssl_jax.models.multicrop import apply_per_resolution_with_state
from ssl_jax.models.network import Network


def assignment_codes(scores: jax.Array, queue_scores: jax.Array | None, use_queue: jax.Array, epsilon: float,
                     num_iters: int, batch_weights: jax.Array | None = None) -> jax.Array:
    """SwAV's codes q for the crops used for assignment: scores [B, A, K] (z_a C of the batch),
    queue_scores [A, L, K] (queue_a C) or None. Sinkhorn-Knopp runs per crop over the rows
    [queue; batch] (the queue's rows only while `use_queue`; the batch's only where
    `batch_weights` [B] is True, default all: Suave balances the unlabelled images only), and the
    batch's rows are kept: `distributed_sinkhorn(torch.cat((queue C, out)))[-bs:]`.
    Returns [B, A, K], no gradient."""
    batch, num_assign, _ = scores.shape
    in_batch = jnp.ones((batch,), bool) if batch_weights is None else batch_weights.astype(bool)
    codes = []
    for a in range(num_assign):
        logits = scores[:, a]
        weights = None if batch_weights is None else in_batch
        if queue_scores is not None:
            logits = jnp.concatenate([queue_scores[a], logits], axis=0)
            weights = jnp.concatenate([jnp.broadcast_to(use_queue, queue_scores.shape[1:2]), in_batch])
        codes.append(losses.sinkhorn_knopp(logits, epsilon, num_iters, weights)[-batch:])
    return jnp.stack(codes, axis=1)


def swapped_prediction(scores: jax.Array, codes: jax.Array, crops_for_assign: tuple[int, ...],
                       temperature: float) -> jax.Array:
    """SwAV's loss: scores [B, V, K] of every crop, codes [B, A, K] of crops_for_assign.

    For each assigned crop a: mean over the other V - 1 crops v of the batch mean of
    -sum_k q_a log softmax(s_v / tau); then the mean over the A assigned crops. The crops
    are reordered so the assigned ones come first, which makes it `losses.dino_cross_entropy`.
    """
    order = list(crops_for_assign) + [v for v in range(scores.shape[1]) if v not in crops_for_assign]
    return losses.dino_cross_entropy(scores[:, jnp.asarray(order)], codes, temperature)


def push_queue(queue: jax.Array, filled: jax.Array, embeddings: jax.Array, active: jax.Array):
    """queue [A, L, D] <- the newest embeddings [B, A, D] first, the oldest L - B rows kept
    (`queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = embedding`), only while `active`;
    `filled` counts the rows written, up to L. Returns (queue, filled)."""
    batch = embeddings.shape[0]
    pushed = jnp.concatenate([jnp.swapaxes(embeddings, 0, 1).astype(queue.dtype), queue[:, :-batch]], axis=1)
    return (jnp.where(active, pushed, queue),
            jnp.where(active, jnp.minimum(filled + batch, queue.shape[1]), filled))


class SwAVSettings(NamedTuple):
    """config.method's SwAV fields, checked (`swav_settings`)."""

    num_prototypes: int
    temperature: float
    epsilon: float
    sinkhorn_iterations: int
    crops_for_assign: tuple[int, ...]
    queue_length: int
    queue_start_step: int


def swav_settings(config, steps_per_epoch: int) -> SwAVSettings:
    """The SwAV settings; crops_for_assign must name distinct crops and the queue hold whole batches."""
    cfg = config.method
    crops = tuple(int(v) for v in cfg.crops_for_assign)
    num_views = config.augment.global_crops.number + config.augment.local_crops.number
    if not crops or len(set(crops)) != len(crops) or not all(0 <= v < num_views for v in crops):
        raise UserError(f"method.crops_for_assign={crops} must name distinct crops among the "
                        f"{num_views} crops (0..{num_views - 1}: global first, then local); SwAV uses (0, 1)")
    if cfg.queue_length and cfg.queue_length % config.batch_size:
        raise UserError(f"method.queue_length={cfg.queue_length} must be a multiple of the global batch "
                        f"{config.batch_size} (main_swav.py rounds it down the same way); set it to "
                        f"{cfg.queue_length - cfg.queue_length % config.batch_size or config.batch_size}")
    return SwAVSettings(cfg.num_prototypes, cfg.temperature, cfg.epsilon, cfg.sinkhorn_iterations, crops,
                        cfg.queue_length, cfg.epoch_queue_starts * steps_per_epoch)


def swav_network(config) -> Network:
    """backbone -> projector (`method.projector`); the prototypes are a separate parameter."""
    return Network({"backbone": build_backbone(config.model, **backbone_kwargs(config)),
                    "projector": projection_mlp(config.method.projector, compute_dtype(config))})


def init_swav(network: Network, settings: SwAVSettings, rng: jax.Array, batch: dict) -> MethodVariables:
    """params {'backbone', 'projector', 'prototypes'} with unit prototype columns [D, K], the BN
    statistics and, with a queue, method_state {'queue' [A, L, D], 'queue_filled'}."""
    network_rng, prototype_rng = jax.random.split(rng)
    params, stats = network.init(network_rng, batch["views"]["global"][:, 0])
    dim = network.modules["projector"].out_dim
    # nn.Linear(feat_dim, nmb_prototypes, bias=False)'s init, normalised as the first step would.
    prototypes = LINEAR_INITS["torch"](prototype_rng, (dim, settings.num_prototypes), jnp.float32)
    params["prototypes"] = {"kernel": losses.l2_normalize(prototypes, axis=0)}
    method_state = None
    if settings.queue_length:
        method_state = {"queue": jnp.zeros((len(settings.crops_for_assign), settings.queue_length, dim), jnp.float32),
                        "queue_filled": jnp.zeros((), jnp.int32)}
    return MethodVariables(params, None, method_state, stats or None)


def embed(network: Network, params, stats, view_groups, rng):
    """Every crop -> L2-normalised projections z [B, V, D] (the backbone once per crop size, the
    projector once on all crops: BatchNorm statistics as in the reference) and the new stats."""

    def backbone(images, group_rng, group_stats):
        return network.apply(params, group_stats, images, train=True, rng=group_rng, upto="backbone")

    features, stats = apply_per_resolution_with_state(backbone, view_groups, rng, stats)
    batch, views = features.shape[:2]
    z, stats = network.apply(params, stats, features.reshape((batch * views, -1)), train=True, start="projector")
    return losses.l2_normalize(z.astype(jnp.float32)).reshape((batch, views, -1)), stats


def swav_loss(network: Network, settings: SwAVSettings, assign: Callable, params, method_state, model_state,
              views: dict, rng: jax.Array, step: jax.Array):
    """The algorithm above: (loss, LossOutput). `assign(scores [B, A, K], queue_scores [A, L, K] or
    None, use_queue) -> codes [B, A, K]` makes the codes (SwAV: `assignment_codes`)."""
    groups = [views["global"]] + ([views["local"]] if "local" in views else [])
    z, new_stats = embed(network, params, model_state or {}, groups, rng)
    prototypes = params["prototypes"]["kernel"].astype(jnp.float32)
    scores = z @ prototypes  # [B, V, K]
    assigned = jnp.asarray(settings.crops_for_assign)
    queue_scores, use_queue, new_method_state = None, jnp.zeros((), bool), method_state
    if settings.queue_length:
        queue, filled = method_state["queue"], method_state["queue_filled"]
        use_queue = filled >= settings.queue_length
        queue_scores = jax.lax.stop_gradient(queue @ prototypes)  # [A, L, K]
        new_queue, new_filled = push_queue(queue, filled, jax.lax.stop_gradient(z[:, assigned]),
                                           step >= settings.queue_start_step)
        new_method_state = {"queue": new_queue, "queue_filled": new_filled}
    codes = assign(jax.lax.stop_gradient(scores[:, assigned]), queue_scores, use_queue)
    loss = swapped_prediction(scores, codes, settings.crops_for_assign, settings.temperature)
    predictions = jax.nn.softmax(scores / settings.temperature, axis=-1)
    metrics = {
        "code_entropy": losses.mean_entropy(codes),  # per sample: low = confident codes
        "prediction_entropy": losses.mean_entropy(predictions),
        # Sinkhorn spreads the batch over the prototypes; this counts how many are anyone's argmax.
        "prototypes_used": jnp.sum(jnp.any(jax.nn.one_hot(jnp.argmax(codes, -1), settings.num_prototypes,
                                                          dtype=bool), axis=(0, 1))).astype(jnp.float32),
        "queue_in_use": use_queue.astype(jnp.float32),
    }
    return loss, LossOutput(metrics, new_method_state, new_stats or None)


class SwAV(OnlineBackboneEval):
    """The SwAV method. `views`: 'global' [B, G, H, W, 3] and optionally 'local' [B, L, h, w, 3]
    (the crops are numbered global first, then local, as `crops_for_assign` counts them)."""

    ema_teacher = False
    state_accumulation = "sequential"  # the queue receives every micro-batch's embeddings (ssl_jax/core/accumulate.py)

    def __init__(self, config, steps_per_epoch: int):
        self.settings = swav_settings(config, steps_per_epoch)
        self.network = swav_network(config)

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        return init_swav(self.network, self.settings, rng, batch)

    def loss(self, params, teacher, method_state, model_state, batch, rng, step):
        del teacher

        def assign(scores, queue_scores, use_queue):
            return assignment_codes(scores, queue_scores, use_queue, self.settings.epsilon,
                                    self.settings.sinkhorn_iterations)

        return swav_loss(self.network, self.settings, assign, params, method_state, model_state, batch["views"],
                         rng, step)

    def teacher_targets(self, params):
        return None
