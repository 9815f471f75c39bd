"""Zero-shot classification with CLIP's prompt ensembles (`python -m ssl_jax.evaluate --eval=zeroshot`).

openai/CLIP `notebooks/Prompt_Engineering_for_ImageNet.ipynb` (`zeroshot_classifier`): each class's
text embedding is the normalised mean of its normalised prompt embeddings, one prompt per template;
an image is assigned the class of the largest cosine similarity. Class names and templates are
`data/prompts.md`'s (CIFAR-10: 10 classes, 18 templates). Images: the eval dataset's `split`
(`config.eval.dataset`, default CIFAR-10 from tfds), preprocessed as for kNN (`pipeline.eval_preprocess`).
"""
from __future__ import annotations

import numpy as np

from ssl_jax.errors import UserError

# openai/CLIP data/prompts.md, "CIFAR10".
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.")
PROMPTS = {"cifar10": (CIFAR10_CLASSES, CIFAR10_TEMPLATES)}


def prompts(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, templates) of config.eval.zeroshot.classes."""
    if name not in PROMPTS:
        raise UserError(f"no zero-shot prompts for {name!r} (config.eval.zeroshot.classes); known: {sorted(PROMPTS)}")
    return PROMPTS[name]


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(prompt_embeddings: np.ndarray) -> np.ndarray:
    """[C, T, D] normalised prompt embeddings -> [C, D]: the normalised mean over the T templates."""
    return _normalised(_normalised(prompt_embeddings).mean(axis=1))


def zero_shot_accuracy(image_embeddings: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of argmax_c <image, class_c>: image_embeddings [N, D], classes [C, D], labels [N]."""
    return float(np.mean(np.argmax(image_embeddings @ classes.T, axis=1) == labels))


def evaluate_zero_shot(config, method, variables, tokenizer, embed) -> dict:
    """{'zeroshot_top1': accuracy} on config.eval.zeroshot.split of the eval dataset. `embed(fn, arrays)`
    runs a jitted embedding function over an array in batches (`ssl_jax.eval.image_text_eval.embed`)."""
    from ssl_jax.data import pipeline  # tensorflow

    names, templates = prompts(config.eval.zeroshot.classes)
    ids = tokenizer.encode([t.format(n) for n in names for t in templates], config.text.max_len, config.text.sticky_eos)
    texts = embed(lambda x: method.embed_texts(variables, x), ids).reshape(len(names), len(templates), -1)
    split = config.eval.zeroshot.split
    count = pipeline.num_examples(pipeline.eval_dataset(config), split)
    images, labels = [], []
    for batch in pipeline.eval_batches(config, split, config.eval.batch_size, -(-count // config.eval.batch_size)):
        keep = batch["mask"] > 0
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
    image_embeddings = embed(lambda x: method.embed_images(variables, x), np.concatenate(images))
    return {"zeroshot_top1": zero_shot_accuracy(image_embeddings, class_embeddings(texts), np.concatenate(labels))}
