"""Linear-segmentation baselines with the same probe as `--eval=segmentation`: raw patch pixels,
and the config's ViT at random initialisation.

    python -m ssl_jax.eval.segmentation_baselines --config=configs/dino_small.py:cifar10 \
        --dataset=DIR [--protocol=configs/eval_protocols.py:cifar10]
"""
from __future__ import annotations

import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset (its ViT and normalisation).",
                                          lock_config=True)
_DATASET = flags.DEFINE_string("dataset", None, "Segmentation folder (<split>/images/, <split>/labels/).")
_PROTOCOL = config_flags.DEFINE_config_file("protocol", None, "configs/eval_protocols.py[:preset]", lock_config=True)
flags.mark_flags_as_required(["config", "dataset"])


def main(argv):
    from ssl_jax import train
    from ssl_jax.eval import segmentation
    from ssl_jax.eval.frozen import vit_module
    from ssl_jax.evaluate import absolute, default_protocol

    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    protocol = _PROTOCOL.value or default_protocol(config)
    cfg = protocol.segmentation
    cfg.data_dir = absolute(_DATASET.value)
    run = train.setup(config, steps_per_epoch=1)  # nothing is trained: the training split is not read
    baselines = {"raw pixels": (segmentation.pixel_features_fn(config.model.patch_size), None),
                 "random init": (segmentation.patch_features_fn(vit_module(config), cfg.n_last_blocks),
                                 run.method.eval_variables(train.create_state(config, run)))}
    for name, (features_fn, params) in baselines.items():
        start = time.time()
        results = segmentation.evaluate(cfg, features_fn, params, config.model.patch_size, config.augment.mean,
                                        config.augment.std, protocol.seed)
        print(f"{name:12s} mIoU={100 * results['segmentation_mIoU']:.2f}% "
              f"pixel accuracy={100 * results['segmentation_pixel_accuracy']:.2f}% ({time.time() - start:.1f}s)",
              flush=True)


if __name__ == "__main__":
    from ssl_jax.config_files import resolve_flag

    app.run(main, argv=resolve_flag(resolve_flag(sys.argv), "protocol"))
