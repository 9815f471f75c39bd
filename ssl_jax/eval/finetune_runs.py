"""Fine-tuning runs on a restored checkpoint: what `--eval=finetune`, model soups (`eval/soups.py`)
and self-training (`eval/self_training.py`) share (imports tensorflow).

    fine_tune:   a FineTuner (eval/finetune.py) trained on a split, or on given labels per image
    split_logits: its logits [N, C] and the labels [N] of a whole split (eval preprocessing)
"""
from __future__ import annotations

import jax
import numpy as np

from ssl_jax.data import pipeline
from ssl_jax.errors import UserError
from ssl_jax.eval.features import extract_features
from ssl_jax.eval.finetune import FineTuner
from ssl_jax.eval.supervised_data import augmented_batches


def fine_tune(frozen, cfg, seed: int, split: str, labels: np.ndarray | None = None, backbone=None, params=None):
    """Fine-tunes with the protocol section `cfg` (`protocol.finetune`'s fields) on `split` of the eval
    dataset; returns (tuner, trained params {'backbone', 'head'[, 'fc_norm']}, mean loss per epoch).

    labels [N, P]: the labels each image of the split trains with (`augmented_batches`; -1: none),
    default its own. The network starts from `backbone` (default: the checkpoint's evaluation
    backbone) with a fresh head, or from the whole tree `params` (a fine-tuned model, fine-tuned again).
    An epoch is cfg.steps_per_epoch steps, or one pass over the images (each copy) it trains on."""
    config, mesh = frozen.config, frozen.run.mesh
    backbone = frozen.run.method.eval_variables(frozen.state) if backbone is None else backbone
    # host copies: training donates its parameters, and the checkpoint's arrays serve the next run too
    tuner = FineTuner(config, cfg, jax.tree.map(np.array, backbone), pipeline.eval_num_classes(config), seed)
    if params is not None:
        tuner.params = jax.tree.map(np.array, params)
    count = pipeline.num_examples(pipeline.eval_dataset(config), split) if labels is None else int((labels >= 0).sum())
    steps = cfg.steps_per_epoch or count // cfg.batch_size
    if steps < 1:
        raise UserError(f"fine-tuning on {count} image(s) of {split!r} cannot fill one batch of {cfg.batch_size}; "
                        f"lower the protocol's finetune.batch_size")
    batches = augmented_batches(config, split, cfg.batch_size, cfg.crop_scale, seed, mesh,
                                rand_augment=cfg.randaugment, labels=labels)
    params, losses = tuner.train(batches, steps, mesh)
    return tuner, params, losses


def split_logits(frozen, tuner: FineTuner, params, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, num_classes] of `params` and labels [N] on every image of `split`, in the split's order."""
    # one function per tuner, so that jax compiles its forward pass once for every params and split
    predict = tuner.__dict__.setdefault("_predict", lambda p, images: tuner.logits(p, images))
    return extract_features(frozen.config, predict, params, split, frozen.run.mesh)
