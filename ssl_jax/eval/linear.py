"""Linear probes on a frozen backbone (DINO's eval_linear.py, MAE's main_linprobe.py).

    logits = Linear(BN_without_affine?(features))        features: frozen, [B, F]

Two ways to feed it:
  * `train_on_features`: the train split's features are extracted once (cached per
    checkpoint) and the layer is trained on them, minibatch by minibatch, jitted per
    epoch. No augmentation (each image has one fixed feature vector): an epoch costs
    milliseconds, which is what makes the protocol affordable on a CPU;
  * `train_on_images`: the papers' protocol, with light augmentation (random resized crop
    + flip): every step runs the frozen backbone on freshly augmented images over the
    mesh and updates only the linear layer.
The optimiser is the shared `ssl_jax.optim` (SGD for DINO, LARS for MAE) with its
warm-up + cosine schedule; accuracy is top-1/top-5 on the eval-preprocessed test split.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.errors import UserError
from ssl_jax.optim import build_optimizer, build_schedules
from ssl_jax.sharding import batch_sharding, replicated


class LinearClassifier(nn.Module):
    """[B, F] -> logits [B, C]: optional BatchNorm without affine parameters (MAE:
    BatchNorm1d(affine=False, eps=1e-6), torch momentum 0.1 = flax 0.9), then a Linear
    layer with N(0, init_std) weights and zero bias (both papers use std 0.01)."""

    num_classes: int
    batchnorm: bool = False
    init_std: float = 0.01

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.batchnorm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-6, use_bias=False,
                             use_scale=False)(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(self.init_std))(x)


class HeadState(NamedTuple):
    params: dict
    batch_stats: dict
    opt_state: optax.OptState


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """{'top1': ..., 'top5': ...}: the fraction of rows whose label is among the k largest logits
    (k larger than the number of classes is left out)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    order = np.argsort(-logits, axis=1, kind="stable")
    return {f"top{k}": float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
            for k in ks if k <= logits.shape[1]}


class Probe:
    """A linear classifier, its optimiser and its jitted update for one protocol section
    (`configs/eval_protocols.py`: linear_dino / linear_mae)."""

    def __init__(self, cfg, num_features: int, num_classes: int, num_examples: int):
        self.cfg = cfg
        self.head = LinearClassifier(num_classes, cfg.batchnorm, cfg.init_std)
        self.steps_per_epoch = num_examples // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"linear probe batch_size={cfg.batch_size} is larger than the train split "
                            f"({num_examples} examples); lower --protocol.<probe>.batch_size")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        variables = self.head.init(jax.random.key(0), jnp.zeros((2, num_features)))
        self.init_params = variables["params"]
        self.init_stats = variables.get("batch_stats", {})
        schedules = build_schedules(cfg.optim, self.total_steps, self.steps_per_epoch, cfg.batch_size)
        self.tx = build_optimizer(cfg.optim, schedules, self.init_params, self.steps_per_epoch)

    def init(self) -> HeadState:
        return HeadState(self.init_params, self.init_stats, self.tx.init(self.init_params))

    def update(self, state: HeadState, features: jax.Array, labels: jax.Array) -> tuple[HeadState, jax.Array]:
        """One optimiser step on a batch of features [B, F] and labels [B]."""

        def loss_fn(params):
            logits, new_vars = self.head.apply({"params": params, "batch_stats": state.batch_stats}, features,
                                               train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
            return loss, new_vars.get("batch_stats", {})

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        return HeadState(optax.apply_updates(state.params, updates), stats, opt_state), loss

    def logits(self, state: HeadState, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
        apply = jax.jit(lambda s, x: self.head.apply({"params": s.params, "batch_stats": s.batch_stats}, x))
        return np.concatenate([np.asarray(apply(state, jnp.asarray(features[i:i + chunk])))
                               for i in range(0, len(features), chunk)])


def train_on_features(cfg, train_x: np.ndarray, train_y: np.ndarray, num_classes: int,
                      seed: int = 0) -> tuple[Probe, HeadState, list[float]]:
    """Trains the probe on cached features [N, F] (one device; a fresh permutation each epoch,
    the last incomplete batch dropped). Returns (probe, final state, mean loss per epoch)."""
    probe = Probe(cfg, train_x.shape[1], num_classes, len(train_x))
    steps, batch = probe.steps_per_epoch, cfg.batch_size
    x, y = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32)

    @jax.jit
    def epoch(state, key):
        order = jax.random.permutation(key, len(x))[:steps * batch].reshape(steps, batch)

        def step(s, idx):
            return probe.update(s, x[idx], y[idx])

        state, losses = jax.lax.scan(step, state, order)
        return state, losses.mean()

    state, key, losses = probe.init(), jax.random.key(seed), []
    for _ in range(cfg.epochs):
        key, sub = jax.random.split(key)
        state, loss = epoch(state, sub)
        losses.append(float(loss))
    return probe, state, losses


def train_on_images(cfg, features_fn: Callable, variables, batches, num_features: int, num_examples: int,
                    num_classes: int, mesh) -> tuple[Probe, HeadState, list[float]]:
    """Trains the probe on augmented images: `batches` yields global batches {'image' [B, H, W, 3],
    'label' [B]} sharded on the mesh's data axis; the frozen features_fn(variables, images)
    runs inside the jitted step, whose gradient reaches only the linear layer."""
    probe = Probe(cfg, num_features, num_classes, num_examples)

    def step(state, variables, images, labels):
        features = jax.lax.stop_gradient(features_fn(variables, images))
        return probe.update(state, features, labels)

    jitted = jax.jit(step, in_shardings=(replicated(mesh), replicated(mesh), batch_sharding(mesh),
                                         batch_sharding(mesh)), out_shardings=replicated(mesh), donate_argnums=0)
    state, losses = probe.init(), []
    for epoch in range(cfg.epochs):
        epoch_losses = []
        for _ in range(probe.steps_per_epoch):
            batch = next(batches)
            state, loss = jitted(state, variables, batch["image"], batch["label"])
            epoch_losses.append(loss)
        losses.append(float(np.mean(jax.device_get(epoch_losses))))
    return probe, state, losses

