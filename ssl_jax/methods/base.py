"""What a method is: a loss over views plus optional teacher state.

The train step (`ssl_jax.step.train_step`) knows only this interface. A method
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
    """The contract between a method and the one train step."""

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
