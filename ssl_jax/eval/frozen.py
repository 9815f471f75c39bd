"""A trained run's frozen backbone: its config, its restored checkpoint, and what the
evaluations and analyses read off it (features of several kinds, every block's tokens and
attention weights). Nothing is trained here."""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import paths, train
from ssl_jax.errors import UserError
from ssl_jax.guards.run_config import CONFIG_FILE
from ssl_jax.models.backbones import backbone_kwargs, build_backbone


class Frozen(NamedTuple):
    """A restored checkpoint: `variables` are what `method.features` takes (the method's
    evaluation backbone: DINO's teacher, the two-view methods' online network)."""

    config: ml_collections.ConfigDict
    run: train.Run
    state: object
    step: int
    workdir: str

    @property
    def variables(self):
        return self.run.method.eval_variables(self.state), self.state.model_state


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """WORKDIR/config.json (the resolved config the run trained with) as a ConfigDict."""
    path = paths.resolve(workdir) / CONFIG_FILE
    if not path.exists():
        raise UserError(f"{path} does not exist: --workdir must be a directory written by "
                        f"`python -m ssl_jax.main` (it holds config.json and checkpoints/)")
    return ml_collections.ConfigDict(paths.read_json(path))


def restore(workdir: str, step: int | None = None, config=None) -> Frozen:
    """Restores `step` (default: the latest) of the run in `workdir` with orbax, using the
    run's own config (or `config`)."""
    config = load_config(workdir) if config is None else config
    run = train.setup(config)
    state, step = train.restore_saved(config, run, workdir, step)
    return Frozen(config, run, train.gathered(state, run.mesh), step, str(paths.resolve(workdir)))


def vit_module(config) -> nn.Module:
    """The run's ViT without drop-path (evaluation), or a clear error for other backbones."""
    if config.model.name != "vit":
        raise UserError(f"this evaluation reads a ViT's tokens; the run's backbone is config.model.name="
                        f"{config.model.name!r}")
    return build_backbone(config.model, with_drop_path=False, **backbone_kwargs(config))


def vit_outputs(frozen: Frozen, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every block's output tokens [L, B, T, D] (before the final norm) and attention weights
    [L, B, H, T, T] of the frozen ViT on images [B, H, W, 3] (`VisionTransformer.block_outputs`)."""
    module = vit_module(frozen.config)
    params = frozen.run.method.eval_variables(frozen.state)
    return jax.jit(lambda p, x: module.apply({"params": p}, x, method="block_outputs"))(params, images)


def probe_features_fn(config, method, n_last_blocks: int = 1, avgpool: bool = False):
    """features_fn(variables, images [B, H, W, 3]) -> [B, F] for the linear probes.

    ViT: the final LayerNorm applied to each of the last `n_last_blocks` blocks' outputs,
    their [CLS] tokens concatenated (DINO's `get_intermediate_layers` + eval_linear.py), and
    with `avgpool` the mean of the last block's normed patch tokens appended:
    F = (n_last_blocks + avgpool) * D. n_last_blocks=1 without avgpool is the normed [CLS]
    (MAE's linear probe). A ViT without [CLS] (I-JEPA) gives each block's mean patch token
    in its place. Other backbones: the method's own pooled features.
    """
    if config.model.name != "vit":
        return lambda variables, images: method.features(variables[0], variables[1], images)
    module = vit_module(config)
    prefix = module.num_prefix_tokens

    def features(variables, images):
        layers = module.apply({"params": variables[0]}, images, n_last_blocks, method="intermediate_layers")
        parts = [x[:, 0] if module.class_token else jnp.mean(x[:, prefix:], axis=1) for x in layers]
        if avgpool:
            parts.append(jnp.mean(layers[-1][:, prefix:], axis=1))
        return jnp.concatenate(parts, axis=-1).astype(jnp.float32)

    return features
