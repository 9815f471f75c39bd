"""kNN baselines with the same kNN code as training: raw pixels, and the backbone at random init.

    python -m ssl_jax.eval.knn_baselines --config=configs/dino_small.py:cifar10
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from ssl_jax import train
from ssl_jax.eval.knn_eval import evaluate_knn, raw_pixel_knn

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset.", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    run = train.setup(config)
    for name, results in (("raw pixels", raw_pixel_knn(config, run.mesh)),
                          ("random init", evaluate_knn(config, run.method, train.create_state(config, run), run.mesh))):
        print(f"{name:12s} " + " ".join(f"{k}={100 * v:.2f}%" for k, v in results.items()), flush=True)


if __name__ == "__main__":
    app.run(main)
