"""Model soups of fine-tuned copies of one checkpoint (`ssl_jax/eval/soups.py`):
python -m ssl_jax.soup --checkpoint=RUN --grid=lr=1e-3,3e-4 --grid=seed=0,1 --workdir=SOUP_DIR

    --checkpoint  a run directory written by `python -m ssl_jax.main`, or one of its checkpoint steps
    --workdir     where the ingredients (<setting>.safetensors) and soup.json go (local or gs://...);
                  an ingredient already there with the same settings is reused
    --grid        NAME=V1,V2,... (repeatable): one ingredient per combination; NAME is `seed` or a
                  field of the protocol's finetune section or of its optim (lr, weight_decay,
                  randaugment, mixup, label_smoothing, drop_path, epochs, ...)
    --protocol    configs/eval_protocols.py[:cifar10|:smoke] (default: ':cifar10' for CIFAR-10, the
                  papers' ImageNet protocols otherwise); --protocol.x.y=... overrides
    --held_out    percent of the eval train split held out to order and grow the greedy soup (default
                  2: model-soups' ImageNet2p); or name both splits with --fit_split and --held_out_split

Prints one table (every ingredient, the best single model, the logit ensemble, the uniform and
the greedy soup; held-out and test top-1) and writes it as SOUP_DIR/soup.json.
"""
from __future__ import annotations

import sys

from ssl_jax.errors import UserError

HELD_OUT_PERCENT = 2  # model-soups datasets/imagenet.py: ImageNet2p, 2 % of ImageNet train held out


def splits(train_split: str, held_out: int, fit_split: str | None, held_out_split: str | None) -> tuple[str, str]:
    """(fit split, held-out split): the given ones, or the last `held_out` % of `train_split` held out."""
    if fit_split and held_out_split:
        return fit_split, held_out_split
    if fit_split or held_out_split:
        raise UserError("pass both --fit_split and --held_out_split, or neither (then --held_out percent of the "
                        "eval train split is held out)")
    if "[" in train_split:
        raise UserError(f"the eval train split {train_split!r} is already a slice: name both splits, e.g. "
                        f"--fit_split='train[:49000]' --held_out_split='train[49000:50000]'")
    if not 0 < held_out < 100:
        raise UserError(f"--held_out={held_out}: a percentage strictly between 0 and 100")
    return f"{train_split}[:{100 - held_out}%]", f"{train_split}[{100 - held_out}%:]"


def main(argv):
    from absl import logging

    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        from ssl_jax.eval import soups
        from ssl_jax.evaluate import default_protocol
        from ssl_jax.init_from import restore_tool_run

        grid = soups.parse_grid(GRID.value or [])
        frozen = restore_tool_run(CHECKPOINT.value, WORKDIR.value, "the ingredients and soup.json")
        protocol = PROTOCOL.value or default_protocol(frozen.config)
        fit, held_out = splits(frozen.config.eval.train_split, HELD_OUT.value, FIT_SPLIT.value, HELD_OUT_SPLIT.value)
        soups.cook(frozen, protocol, grid, WORKDIR.value, fit, held_out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from ssl_jax.config_files import resolve_flag

    CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory or checkpoint step directory.")
    WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the ingredients and soup.json (local or a URL).")
    GRID = flags.DEFINE_multi_string("grid", None, "NAME=V1,V2,...: fine-tuning settings to combine.")
    PROTOCOL = config_flags.DEFINE_config_file("protocol", None, "configs/eval_protocols.py[:preset]",
                                               lock_config=True)
    HELD_OUT = flags.DEFINE_integer("held_out", HELD_OUT_PERCENT, "Percent of the train split held out.")
    FIT_SPLIT = flags.DEFINE_string("fit_split", None, "Split the ingredients are fine-tuned on.")
    HELD_OUT_SPLIT = flags.DEFINE_string("held_out_split", None, "Split that orders and grows the greedy soup.")
    app.run(main, argv=resolve_flag(sys.argv, "protocol"))
