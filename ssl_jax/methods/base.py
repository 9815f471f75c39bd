"""What a method is: a loss over views plus optional teacher state.

The train step (`ssl_jax.core.step.train_step`) knows only this interface. A method
file builds its networks from the config and reads like the paper's pseudo-code.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax

PyTree = Any


class MethodVariables(NamedTuple):
    """What `Method.init` returns: the pieces of a fresh TrainState."""

    params: PyTree
    teacher: PyTree  # None when the method has no EMA teacher
    method_state: PyTree  # e.g. DINO's center; None if unused
    model_state: PyTree  # e.g. BatchNorm statistics; None if unused


class LossOutput(NamedTuple):
    """Auxiliary outputs of `Method.loss`: scalar metrics and the updated states."""

    metrics: dict
    method_state: PyTree
    model_state: PyTree


class Method(Protocol):
    """The contract between a method and the one train step.

    Two class attributes declare what the step does around the loss (tests/test_contract.py
    checks every registered method declares them):
      ema_teacher: True when `teacher` is an EMA of `teacher_targets(params)`, updated by the
        step with config.optim.teacher_momentum, which is then required (and refused for a
        method without one: `ssl_jax.guards.config_check`);
      state_accumulation: how the method_state of `accum_steps` micro-batches combines into the
        step's (`ssl_jax.core.accumulate`): "mean" (each micro-batch starts from the step's state,
        the results are averaged: right for an EMA of batch means, e.g. DINO's center) or
        "sequential" (each micro-batch starts from the previous one's result: SwAV's queue
        receives every micro-batch's embeddings). model_state (BatchNorm statistics) is
        always averaged.
    """

    ema_teacher: bool
    state_accumulation: str

    def init(self, rng: jax.Array, batch: dict) -> MethodVariables:
        """Creates params (and teacher/method/model state) from an example batch."""

    def loss(self, params: PyTree, teacher: PyTree, method_state: PyTree, model_state: PyTree,
             batch: dict, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, LossOutput]:
        """Scalar loss over the global batch; differentiated w.r.t. `params` only."""

    def teacher_targets(self, params: PyTree) -> PyTree:
        """The sub-tree of `params` that the EMA teacher tracks (same structure as `teacher`)."""

    def features(self, variables: PyTree, model_state: PyTree, images: jax.Array) -> jax.Array:
        """Frozen-backbone features [B, D] for evaluation (kNN, linear probe)."""

    def eval_variables(self, state) -> PyTree:
        """Which weights evaluation uses (DINO: the teacher's)."""

    def class_logits(self, state, images: jax.Array) -> jax.Array:
        """Optional, for methods that train a classifier (SLA, Suave, Daino): logits [B, C] of
        images [B, H, W, 3] from a TrainState, what `ssl_jax.evaluate --eval=classifier` scores."""


class OnlineBackboneEval:
    """`eval_variables` / `features` of a method whose `self.network` (`ssl_jax.models.network.Network`)
    starts with a 'backbone' module that is trained online (no EMA teacher is evaluated):
    the two-view methods, SwAV and the pretext-task methods."""

    def eval_variables(self, state):
        """The online backbone is the one evaluated (and the one the papers release)."""
        return state.params["backbone"]

    def features(self, backbone_params, model_state, images: jax.Array) -> jax.Array:
        """Pooled backbone features [B, D] (ResNet: BatchNorm with its running averages)."""
        return self.network.apply({"backbone": backbone_params}, model_state or {}, images, train=False,
                                  upto="backbone")[0].astype(jax.numpy.float32)
