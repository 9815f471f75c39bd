"""Self-training on a pretrained checkpoint (Yalniz et al. 2019; Noisy Student's noise), built from the
fine-tuning runs of `eval/finetune_runs.py`; `configs/self_training.py` holds the recipe.

    labelled  = `labelled_mask`: the run's labelled subset of the eval train split (the
                `dataset.labelled_fraction` draw of data/pipeline.py); the rest is unlabelled
    teacher   = fine_tune(checkpoint, labelled images with their labels)
    scores    = softmax(teacher logits) [N, C] on the train split (eval preprocessing)
    selected  = `select_top_k`: per class, the top_k unlabelled images by score among those with the
                class in their top_p; image i trains once under each class it was selected for
    student   = fine_tune(random or pretrained backbone, selected images with their pseudo-labels,
                with the config's `student` noise), then fine_tune(student, labelled images)

Reported: test top-1 of the teacher (the supervised-only baseline: the same fine-tuning on the
labelled images alone), of the student before and after its fine-tuning on the labelled images,
and how often the pseudo-labels are right.
"""
from __future__ import annotations

import json

import numpy as np

from ssl_jax import paths
from ssl_jax.errors import UserError

RESULTS_FILE = "self_training.json"


def select_top_k(scores: np.ndarray, candidates: np.ndarray, top_k: int, top_p: int) -> np.ndarray:
    """Yalniz et al.'s selection. scores [N, C] (the teacher's softmax), candidates [N] bool (the
    unlabelled images) -> labels [N, top_p] int32: the classes image i was selected for, then -1.

    Each image keeps its top_p classes; for each class c, the (at most) top_k candidate images that kept
    c, by decreasing scores[:, c] (ties: the lower index first), are selected for c."""
    n, c = scores.shape
    top_p = min(top_p, c)
    kept = np.zeros((n, c), bool)
    np.put_along_axis(kept, np.argsort(-scores, axis=1, kind="stable")[:, :top_p], True, axis=1)
    ranked = np.where(kept & candidates[:, None], scores, -np.inf)
    order = np.argsort(-ranked, axis=0, kind="stable")[:top_k]  # [K, C] image indices, best first
    selected = np.zeros((n, c), bool)
    for cls in range(c):
        rows = order[:, cls]
        selected[rows[np.isfinite(ranked[rows, cls])], cls] = True
    labels = np.full((n, top_p), -1, np.int32)
    image, cls = np.nonzero(selected)  # row-major: each image's classes in increasing order
    slot = np.arange(len(image)) - np.searchsorted(image, image)
    labels[image, slot] = cls
    return labels


def labelled_mask(count: int, fraction: float, seed: int) -> np.ndarray:
    """[count] bool: whether each image of a split is in the labelled subset of `fraction` (the draw
    of data/pipeline.py's `_labelled` for the run's seed)."""
    import tensorflow as tf

    from ssl_jax.data import pipeline

    indices = tf.data.Dataset.range(count).map(lambda i: pipeline._labelled(i, fraction, seed))
    return np.asarray(indices.batch(count).get_single_element())


def self_train(frozen, protocol, cfg, workdir: str, printer=print) -> dict:
    """The recipe of the module docstring on the run's eval train split; writes WORKDIR/self_training.json."""
    import jax

    from ssl_jax.eval.finetune_runs import fine_tune, split_logits
    from ssl_jax.models.backbones import backbone_kwargs, build_backbone

    if jax.process_count() > 1:
        raise UserError("self-training runs in one process (its selection reads the whole split)")
    if cfg.student_init not in ("random", "pretrained"):
        raise UserError(f"student_init={cfg.student_init!r}: choose 'random' or 'pretrained'")
    config, seed = frozen.config, protocol.seed
    train_split, test_split = config.eval.train_split, config.eval.test_split

    def test_top1(tuner, params):
        logits, labels = split_logits(frozen, tuner, params, test_split)
        return float(np.mean(np.argmax(logits, -1) == labels))

    # The teacher: the checkpoint fine-tuned on the labelled images.
    count = _split_size(config, train_split)
    labelled = labelled_mask(count, cfg.labelled_fraction, config.seed)
    if not labelled.any() or labelled.all():
        raise UserError(f"labelled_fraction={cfg.labelled_fraction} leaves {int(labelled.sum())} of {count} images "
                        f"labelled: nothing to learn from or nothing to pseudo-label")
    truth = _split_labels(config, train_split)
    teacher, teacher_params, _ = fine_tune(frozen, protocol.finetune, seed, train_split,
                                           labels=np.where(labelled, truth, -1)[:, None])
    results = {"labelled_images": int(labelled.sum()), "unlabelled_images": int((~labelled).sum()),
               "teacher_test_top1": test_top1(teacher, teacher_params)}
    printer(f"teacher (fine-tuned on {results['labelled_images']} labelled images): "
            f"test top-1 {100 * results['teacher_test_top1']:.2f} %")

    logits, _ = split_logits(frozen, teacher, teacher_params, train_split)
    pseudo = select_top_k(np.asarray(jax.nn.softmax(logits, axis=-1)), ~labelled, cfg.top_k, cfg.top_p)
    chosen = pseudo >= 0
    results.update({"pseudo_labels": int(chosen.sum()), "pseudo_labelled_images": int(chosen.any(axis=1).sum()),
                    "pseudo_label_accuracy": float(np.mean((pseudo == truth[:, None])[chosen]))})

    # The student: pseudo-labels with noise, then the labelled images.
    student_cfg = protocol.finetune.copy_and_resolve_references()
    for name, value in cfg.student.items():
        if name not in student_cfg:
            raise UserError(f"student.{name} is no field of the protocol's finetune section")
        student_cfg[name] = value
    backbone = None
    if cfg.student_init == "random":
        module = build_backbone(config.model, **backbone_kwargs(config))
        size = config.model.img_size
        backbone = module.init(jax.random.key(seed + 3), np.zeros((1, size, size, 3), np.float32))["params"]
    student, student_params, _ = fine_tune(frozen, student_cfg, seed, train_split, labels=pseudo, backbone=backbone)
    results["student_test_top1"] = test_top1(student, student_params)
    final, final_params, _ = fine_tune(frozen, protocol.finetune, seed, train_split,
                                       labels=np.where(labelled, truth, -1)[:, None], params=student_params)
    results["student_finetuned_test_top1"] = test_top1(final, final_params)
    results["config"] = cfg.to_dict()
    out = paths.resolve(workdir)
    out.mkdir(parents=True, exist_ok=True)
    paths.write_atomically(out / RESULTS_FILE, json.dumps(results, indent=2))
    printer(format_table(results))
    return results


def _split_size(config, split: str) -> int:
    from ssl_jax.data import pipeline

    return pipeline.num_examples(pipeline.eval_dataset(config), split)


def _split_labels(config, split: str) -> np.ndarray:
    """The labels [N] of a split of the eval dataset, in its order (the images are not decoded)."""
    from ssl_jax.data import pipeline

    dataset_cfg = pipeline.eval_dataset(config)
    ds = pipeline._process_split(pipeline.get_builder(dataset_cfg), split, dataset_cfg.image_key, encoded=True)
    labels = ds.map(lambda ex: ex[dataset_cfg.label_key]).batch(_split_size(config, split))
    return np.asarray(labels.get_single_element()).astype(np.int32)


def format_table(results: dict) -> str:
    """Markdown table of the teacher (supervised-only baseline) and the student, test top-1 in %."""
    rows = [("teacher: labelled images only (supervised baseline)", results["teacher_test_top1"]),
            ("student: pseudo-labels", results["student_test_top1"]),
            ("student: pseudo-labels, then labelled images", results["student_finetuned_test_top1"])]
    lines = ["| model | test top-1 |", "|---|---|"] + [f"| {name} | {100 * v:.2f} % |" for name, v in rows]
    lines.append(f"\n{results['pseudo_labels']} pseudo-labels on {results['pseudo_labelled_images']} of "
                 f"{results['unlabelled_images']} unlabelled images, {100 * results['pseudo_label_accuracy']:.2f} % right")
    return "\n".join(lines)
