"""Self-training from a pretrained checkpoint (`ssl_jax/eval/self_training.py`):
python -m ssl_jax.self_train --checkpoint=RUN --workdir=DIR [--config=configs/self_training.py:cifar10]

    --checkpoint  a run directory written by `python -m ssl_jax.main`, or one of its checkpoint steps
    --workdir     where self_training.json goes (local or gs://...)
    --config      configs/self_training.py[:cifar10|:smoke] (default ':cifar10'): labelled_fraction,
                  top_k, top_p, student_init and the student's noise; --config.x=... overrides
    --protocol    configs/eval_protocols.py[:preset]: the fine-tuning recipe of teacher and student
                  (default: ':cifar10' for CIFAR-10, the papers' ImageNet protocols otherwise)

Prints the test top-1 of the teacher (fine-tuned on the labelled images only: the supervised
baseline) and of the student, and writes them to DIR/self_training.json.
"""
from __future__ import annotations

import sys

from ssl_jax.errors import UserError


def main(argv):
    from absl import logging

    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        from ssl_jax.eval.self_training import self_train
        from ssl_jax.evaluate import default_protocol
        from ssl_jax.init_from import restore_tool_run

        frozen = restore_tool_run(CHECKPOINT.value, WORKDIR.value, "self_training.json")
        self_train(frozen, PROTOCOL.value or default_protocol(frozen.config), CONFIG.value, WORKDIR.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from ssl_jax.config_files import config_path, resolve_flag

    CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory or checkpoint step directory.")
    WORKDIR = flags.DEFINE_string("workdir", None, "Directory for self_training.json (local or a URL).")
    CONFIG = config_flags.DEFINE_config_file("config", f"{config_path('self_training')}:cifar10",
                                             "configs/self_training.py[:preset]", lock_config=True)
    PROTOCOL = config_flags.DEFINE_config_file("protocol", None, "configs/eval_protocols.py[:preset]",
                                               lock_config=True)
    app.run(main, argv=resolve_flag(resolve_flag(sys.argv), "protocol"))
