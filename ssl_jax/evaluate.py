"""Evaluate a frozen checkpoint on any dataset:
python -m ssl_jax.evaluate --checkpoint=<workdir | WORKDIR/checkpoints/<step> | weights file> --eval=knn,linear,...

    --checkpoint  a run directory written by `python -m ssl_jax.main` (its config.json is read),
                  one of its checkpoint steps, or an official / exported weights file (.pth,
                  .safetensors; `ssl_jax.init_from`), which also needs --config and --workdir
    --workdir     the run directory (same as --checkpoint=WORKDIR); for a weights file, where
                  results and cached features go
    --config      for a weights file: the config whose model matches it (e.g.
                  configs/dino_small.py); its method's features are evaluated, every backbone
                  array must load from the file
    --step        the checkpoint step (default: the latest)
    --dataset     a dataset to evaluate on instead of the run's: a labelled image folder
                  (DIR/train/<class>/... and DIR/test/<class>/... (or val/), or one folder of
                  <class>/ sub-folders split 80 / 20 within each class: `use_folder`), or a
                  tfds name (its classes and test split, 'test' or else 'validation', from
                  tfds' metadata); results go to eval_<step>_<folder's or dataset's name>.json.
                  With --eval=segmentation: a segmentation folder, DIR/<split>/images/ +
                  DIR/<split>/labels/ (CamVid, ADE20k; `ssl_jax/data/segmentation.py`)
    --eval        comma-separated: knn, linear_dino, linear_mae, finetune (`linear` = both probes),
                  classifier (a semi-supervised run's own class prototypes: Suave, Daino),
                  segmentation (DINOv2's linear probe on frozen patch tokens: mIoU, pixel
                  accuracy, per-class IoU; `ssl_jax/eval/segmentation.py`),
                  zeroshot, retrieval (image-text runs: `ssl_jax/eval/image_text_eval.py`)
    --protocol    configs/eval_protocols.py[:cifar10|:smoke] (default: ':cifar10' for CIFAR-10,
                  the papers' ImageNet protocols otherwise); --protocol.x.y=... overrides

This is the evaluation entry point for frozen checkpoints. A run is evaluated with its own
config rather than `--config`, because a checkpoint restores only into the config it was
trained with. (`python -m ssl_jax.main --mode=eval` stays what it was: the training loop's
own kNN monitor, `config.eval.knn_k`, on a saved step; both use `eval/knn.py` and
`eval/features.py`.) The backbone is frozen (except for
`finetune`, which trains a copy). Each evaluation prints a table, appends its numbers to
WORKDIR/metrics/metrics.jsonl (split 'eval', for the curves) and merges them into
WORKDIR/checkpoints/eval_<step>.json next to the checkpoint. Frozen features are cached in
WORKDIR/eval_cache/<step>/ (`ssl_jax/eval/cache.py`).
"""
from __future__ import annotations

import os
import posixpath
import sys
import time

import jax

from ssl_jax import paths
from ssl_jax.errors import UserError

EVALS = ("knn", "linear_dino", "linear_mae", "finetune", "classifier", "segmentation", "zeroshot", "retrieval")
ALIASES = {"linear": ("linear_dino", "linear_mae")}


def parse_evals(spec: str) -> list[str]:
    """'knn,linear' -> ['knn', 'linear_dino', 'linear_mae']; unknown names are an error."""
    names = []
    for name in filter(None, (s.strip() for s in spec.split(","))):
        expanded = ALIASES.get(name, (name,))
        for n in expanded:
            if n not in EVALS:
                raise UserError(f"unknown evaluation {name!r} in --eval; choose from {', '.join(EVALS + tuple(ALIASES))}")
            if n not in names:
                names.append(n)
    if not names:
        raise UserError("--eval is empty; pass e.g. --eval=knn,linear")
    return names


def load_protocol(preset: str = ""):
    """configs/eval_protocols.py's `preset` ('' = the papers' ImageNet protocols, 'cifar10', 'smoke')."""
    import importlib.util

    from ssl_jax.config_files import config_path

    path = config_path("eval_protocols")
    spec = importlib.util.spec_from_file_location("eval_protocols", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def default_protocol(config):
    """The protocol preset for the run's eval dataset: ':cifar10' for CIFAR-10, else the ImageNet one."""
    from ssl_jax.data import pipeline

    return load_protocol("cifar10" if pipeline.eval_dataset(config).name == "cifar10" else "")


def run_knn(frozen, protocol) -> dict[str, float]:
    """Weighted kNN on cached [CLS] features (the method's `features`) for every k at once."""
    from ssl_jax.data import pipeline
    from ssl_jax.eval.cache import cached_features
    from ssl_jax.eval.knn import knn_accuracy

    config, method = frozen.config, frozen.run.method
    features_fn = lambda v, images: method.features(v[0], v[1], images)  # noqa: E731
    train_x, train_y = cached_features(frozen, "knn", {}, features_fn, config.eval.train_split)
    test_x, test_y = cached_features(frozen, "knn", {}, features_fn, config.eval.test_split)
    return {f"knn_top1@{k}": knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=protocol.knn.temperature,
                                          num_classes=pipeline.eval_num_classes(config)) for k in protocol.knn.k}


def run_linear(frozen, protocol, name: str) -> dict[str, float]:
    """A linear probe (`linear_dino` / `linear_mae`): on cached features when the protocol's
    augment is off, else on augmented images through the frozen backbone."""
    from ssl_jax.eval import linear
    from ssl_jax.eval.cache import cached_features
    from ssl_jax.eval.frozen import probe_features_fn

    cfg, config = protocol[name], frozen.config
    params = {"n_last_blocks": cfg.n_last_blocks, "avgpool": cfg.avgpool}
    features_fn = probe_features_fn(config, frozen.run.method, cfg.n_last_blocks, cfg.avgpool)
    test_x, test_y = cached_features(frozen, "probe", params, features_fn, config.eval.test_split)
    from ssl_jax.data import pipeline

    num_classes = pipeline.eval_num_classes(config)
    if cfg.augment:
        from ssl_jax.eval.supervised_data import augmented_batches

        num_train = pipeline.num_examples(pipeline.eval_dataset(config), config.eval.train_split)
        batches = augmented_batches(config, config.eval.train_split, cfg.batch_size, cfg.crop_scale, protocol.seed,
                                    frozen.run.mesh)
        probe, state, losses = linear.train_on_images(cfg, features_fn, frozen.variables, batches, test_x.shape[1],
                                                      num_train, num_classes, frozen.run.mesh)
    else:
        train_x, train_y = cached_features(frozen, "probe", params, features_fn, config.eval.train_split)
        probe, state, losses = linear.train_on_features(cfg, train_x, train_y, num_classes, protocol.seed)
    accuracy = linear.top_k_accuracy(probe.logits(state, test_x), test_y)
    return {**{f"{name}_{k}": v for k, v in accuracy.items()}, f"{name}_final_loss": losses[-1]}


def run_finetune(frozen, protocol) -> dict[str, float]:
    """Fine-tunes a copy of the whole ViT (`ssl_jax/eval/finetune.py`), then top-1/top-5."""
    from ssl_jax.eval.finetune_runs import fine_tune, split_logits
    from ssl_jax.eval.linear import top_k_accuracy

    config = frozen.config
    tuner, params, losses = fine_tune(frozen, protocol.finetune, protocol.seed, config.eval.train_split)
    logits, labels = split_logits(frozen, tuner, params, config.eval.test_split)
    return {**{f"finetune_{k}": v for k, v in top_k_accuracy(logits, labels).items()}, "finetune_final_loss": losses[-1]}


def run_classifier(frozen, protocol) -> dict[str, float]:
    """Top-1/top-5 on the test split of the run's own classifier (`method.class_logits`: the class
    prototypes a semi-supervised method trains); nothing is fitted."""
    from ssl_jax.eval.features import extract_features
    from ssl_jax.eval.linear import top_k_accuracy

    del protocol
    config, method = frozen.config, frozen.run.method
    if not hasattr(method, "class_logits"):
        raise UserError(f"--eval=classifier needs a method with class prototypes (suave, daino); this run's "
                         f"method is {config.method.name!r}: use knn or linear")
    logits, labels = extract_features(config, method.class_logits, frozen.state, config.eval.test_split,
                                      frozen.run.mesh)
    return {f"classifier_{k}": v for k, v in top_k_accuracy(logits, labels).items()}


def run_segmentation(frozen, protocol) -> dict[str, float]:
    """DINOv2's linear segmentation probe on protocol.segmentation.data_dir (`ssl_jax/eval/segmentation.py`)."""
    return segmentation_probe(frozen.config, frozen.run.method.eval_variables(frozen.state), protocol)


def segmentation_probe(config, backbone_params, protocol, printer=print) -> dict[str, float]:
    """The linear segmentation probe on the run's ViT with `backbone_params` (also run during training
    when `config.eval.segmentation_dir` is set)."""
    from ssl_jax.eval import segmentation
    from ssl_jax.eval.frozen import vit_module

    cfg, module = protocol.segmentation, vit_module(config)
    return segmentation.evaluate(cfg, segmentation.patch_features_fn(module, cfg.n_last_blocks), backbone_params,
                                 module.patch_size, config.augment.mean, config.augment.std, protocol.seed, printer)


FOLDER_TEST_SPLITS = ("test", "val", "validation")  # a folder's test split: the first of these sub-folders
HELD_OUT_PERCENT = 20  # without one: the last 20 % of each class's sorted images are the test split


def use_dataset(config, dataset: str):
    """`config` evaluating (config.eval.dataset) on `dataset`: a labelled image folder when it is
    a directory (`use_folder`), else a tfds name (its classes from tfds' metadata; its 'test',
    else 'validation' split)."""
    import ml_collections
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from ssl_jax.data import pipeline
    from ssl_jax.errors import one_line

    if tf.io.gfile.isdir(dataset):
        return use_folder(config, dataset)
    current = pipeline.eval_dataset(config)
    data_dir = "" if current.name == "folder" else current.data_dir  # a folder's root is no tfds data_dir
    try:
        info = tfds.builder(dataset, data_dir=data_dir or None).info
    except Exception as e:  # tfds raises DatasetNotFoundError and others
        raise UserError(f"--dataset={dataset}: neither a directory nor a dataset tfds can find "
                        f"({one_line(e)})") from None
    config.eval.dataset = ml_collections.ConfigDict({
        "name": dataset, "data_dir": data_dir, "image_key": current.image_key, "label_key": current.label_key,
        "num_classes": info.features[current.label_key].num_classes})
    config.eval.train_split = "train"
    config.eval.test_split = "test" if "test" in info.splits else "validation"
    return config


def use_folder(config, directory: str):
    """`config` evaluating on the labelled image folder `directory` (`ssl_jax/data/folder.py`,
    torchvision's ImageFolder layout):

        DIRECTORY/train/<class>/**/<image> and DIRECTORY/<test|val|validation>/<class>/**/<image>
            the kNN memory bank / probe training images, and the test images;
        otherwise DIRECTORY/train/<class>/... or DIRECTORY/<class>/... alone, split by a fixed
            rule: of each class's images in sorted order, the first 80 % train and the last
            20 % test (the folder slices "[:80%]" and "[80%:]").

    Both splits must have the same class sub-folders; a folder without them has no labels, and
    that is one error naming the fix."""
    import ml_collections
    import tensorflow as tf

    from ssl_jax.data import folder

    directory = absolute(directory)
    found = [s for s in ("train",) + FOLDER_TEST_SPLITS if tf.io.gfile.isdir(f"{directory}/{s}")]
    if "train" in found and len(found) > 1:
        root, train, test = directory, "train", found[1]
    elif found and "train" not in found:
        raise UserError(f"--dataset={directory} has {found[0]}/ but no train/: put the images to fit on (the kNN "
                        f"memory bank, the probe's training set) in {directory}/train/<class>/")
    else:  # one folder of class sub-folders: split by the rule above
        root, name = (directory, "train") if "train" in found else posixpath.split(directory)
        keep = 100 - HELD_OUT_PERCENT
        train, test = f"{name}[:{keep}%]", f"{name}[{keep}%:]"
    config.eval.dataset = ml_collections.ConfigDict({"name": "folder", "data_dir": root, "image_key": "image",
                                                     "label_key": "label", "num_classes": 0})
    config.eval.train_split, config.eval.test_split = train, test
    listed = folder.Folder(config.eval.dataset)
    for split in (train, test):
        if not listed.split(split).labelled:
            raise UserError(f"--dataset={directory}: the images of {posixpath.join(root, split)} are not in class "
                            f"sub-folders, so they have no labels to evaluate with; put each class's images in "
                            f"their own folder, <split>/<class>/*.jpg (split: train and test, or val)")
    if listed.split(train).classes != listed.split(test).classes:
        raise UserError(f"--dataset={directory}: {train} and {test} have different class sub-folders "
                        f"({len(listed.split(train).classes)} and {len(listed.split(test).classes)}); give both the "
                        f"same ones")
    return config


def absolute(directory: str) -> str:
    """A local directory's absolute path; a URL without its trailing "/"."""
    return directory.rstrip("/") if "://" in directory else os.path.abspath(directory)


def dataset_suffix(dataset: str) -> str:
    """The eval_<step><suffix>.json suffix of `--dataset`: "_<tfds name>" or "_<folder's base name>"."""
    import tensorflow as tf

    name = posixpath.basename(absolute(dataset)) if tf.io.gfile.isdir(dataset) else dataset
    return "_" + name.replace("/", "-")


def weights_frozen(path: str, config, workdir: str, printer=print):
    """A Frozen (step 0) of `config`'s method with a weights file's arrays loaded: every backbone
    array must load; the rest (heads the file lacks) stays at its initialisation."""
    from ssl_jax import init_from, train
    from ssl_jax.eval.frozen import Frozen
    from ssl_jax.guards.checkpoint import checkpoint_dir

    config.init_from, config.init_from_strict = path, False
    run = train.setup(config, steps_per_epoch=1)  # nothing is trained: the training split is not read
    state = init_from.initialize(config, train.create_state(config, run), printer, required="backbone/")
    checkpoint_dir(workdir).mkdir(parents=True, exist_ok=True)
    return Frozen(config, run, state, 0, str(paths.resolve(workdir)))


def evaluate_checkpoint(checkpoint: str, evals=("knn",), step: int | None = None, protocol=None, config=None,
                        dataset: str | None = None, workdir: str | None = None, printer=print) -> dict:
    """Evaluates a run (workdir or checkpoint step) or a weights file (with `config` and
    `workdir`) on its own dataset or on `dataset` (an image folder or a tfds name: `use_dataset`)."""
    from ssl_jax.eval.frozen import load_config, restore
    from ssl_jax.init_from import CHECKPOINT_SUFFIXES, workdir_and_step

    from ssl_jax.data.segmentation import is_segmentation_folder

    start = time.time()
    dense = bool(dataset) and is_segmentation_folder(dataset)  # a segmentation folder serves --eval=segmentation
    if dense and set(evals) != {"segmentation"}:
        others = ", ".join(e for e in evals if e != "segmentation")
        raise UserError(f"--dataset={dataset} is a segmentation folder (<split>/images/, <split>/labels/): it "
                        f"serves --eval=segmentation only; evaluate {others} on a labelled image folder or a tfds name")
    with_dataset = (lambda c: use_dataset(c, dataset)) if dataset and not dense else (lambda c: c)  # noqa: E731
    if run := workdir_and_step(checkpoint):
        run_dir, run_step = run
        config = load_config(run_dir) if config is None else config
        frozen = restore(run_dir, run_step if step is None else step, with_dataset(config))
    elif checkpoint.endswith(CHECKPOINT_SUFFIXES) and paths.resolve(checkpoint).is_file():
        if config is None or not workdir:
            raise UserError(f"--checkpoint={checkpoint} is a weights file: pass --config=<a config whose model "
                            f"matches it> and --workdir=<where results go>")
        frozen = weights_frozen(checkpoint, with_dataset(config), workdir, printer)
    else:
        raise UserError(f"--checkpoint={checkpoint} is neither a run directory (with config.json), a checkpoint "
                        f"step nor a {' / '.join(CHECKPOINT_SUFFIXES)} file")
    printer(f"restored {checkpoint} step {frozen.step} ({time.time() - start:.1f}s)")
    if dense:
        protocol = default_protocol(frozen.config) if protocol is None else protocol
        protocol.segmentation.data_dir = absolute(dataset)
    return evaluate_frozen(frozen, evals, protocol, printer, suffix=dataset_suffix(dataset) if dataset else "")


def evaluate_frozen(frozen, evals=("knn",), protocol=None, printer=print, suffix: str = "") -> dict:
    """Runs `evals` on a restored checkpoint (`ssl_jax.eval.frozen.restore`); prints a table,
    logs to metrics.jsonl and merges the results into checkpoints/eval_<step><suffix>.json.
    `protocol` defaults to `default_protocol(frozen.config)`."""
    from ssl_jax.eval.image_text_eval import run_retrieval, run_zero_shot
    from ssl_jax.guards.logger import MetricLogger

    protocol = default_protocol(frozen.config) if protocol is None else protocol
    runners = {"knn": run_knn, "finetune": run_finetune, "classifier": run_classifier, "segmentation": run_segmentation,
               "zeroshot": run_zero_shot, "retrieval": run_retrieval,
               "linear_dino": lambda f, p: run_linear(f, p, "linear_dino"),
               "linear_mae": lambda f, p: run_linear(f, p, "linear_mae")}
    results, rows = {}, []
    logger = MetricLogger(frozen.workdir)
    try:
        for name in evals:
            start = time.time()
            numbers = runners[name](frozen, protocol)
            seconds = time.time() - start
            results.update(numbers)
            results[f"{name}_seconds"] = seconds
            logger.write(frozen.step, {k: v for k, v in numbers.items() if "loss" not in k}, prefix="eval")
            rows += [(name, metric, value, seconds) for metric, value in numbers.items()]
    finally:
        logger.close()
    printer(format_table(rows))
    if jax.process_index() == 0:
        from ssl_jax.eval_record import merge_eval_results
        from ssl_jax.guards.checkpoint import checkpoint_dir

        path = merge_eval_results(checkpoint_dir(frozen.workdir), frozen.step, results, suffix)
        printer(f"wrote {path}")
    return results


def format_table(rows) -> str:
    """Markdown table of (evaluation, metric, value, seconds) rows; accuracies in %."""
    lines = ["| evaluation | metric | value | seconds |", "|---|---|---|---|"]
    for name, metric, value, seconds in rows:
        shown = f"{value:.4f}" if "loss" in metric else f"{100 * value:.2f} %"
        lines.append(f"| {name} | {metric} | {shown} | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv):
    from absl import logging


    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        checkpoint = CHECKPOINT.value or WORKDIR.value
        if not checkpoint:
            raise UserError("pass --checkpoint=<workdir | checkpoint step | weights file> (or --workdir)")
        evaluate_checkpoint(checkpoint, parse_evals(EVAL.value), STEP.value, PROTOCOL.value, CONFIG.value,
                            DATASET.value, WORKDIR.value)
    except (UserError, FileNotFoundError) as e:  # anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run directory, checkpoint step directory or weights file.")
    WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config.json, checkpoints/); for a weights file, "
                                  "where results go.")
    DATASET = flags.DEFINE_string("dataset", None, "Labelled image folder or tfds dataset to evaluate on "
                                  "(default: the run's).")
    CONFIG = config_flags.DEFINE_config_file("config", None, "For a weights file: a config whose model matches it.")
    STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    EVAL = flags.DEFINE_string("eval", "knn", f"Comma-separated evaluations: {', '.join(EVALS)}, or linear (both probes).")
    PROTOCOL = config_flags.DEFINE_config_file("protocol", None, "configs/eval_protocols.py[:preset]",
                                               lock_config=True)
    from ssl_jax.config_files import resolve_flag

    app.run(main, argv=resolve_flag(resolve_flag(sys.argv), "protocol"))
