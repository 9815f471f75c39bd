"""Image-to-text and text-to-image retrieval, Recall@K (`python -m ssl_jax.evaluate --eval=retrieval`).

On the image-caption test split (`config.eval.retrieval_split`; Flickr8k: 1,000 images, 5,000 captions):
image -> text R@K is the share of images with one of their own captions among the K captions most similar
to them; text -> image R@K the share of captions whose image is among the K most similar images
(cosine similarity of the normalised embeddings; the protocol of big_vision's `evaluators/proj/image_text/
retrieval.py` and of the Flickr/COCO retrieval tables).
"""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def recall_at_k(image_embeddings: np.ndarray, text_embeddings: np.ndarray, text_image: np.ndarray,
                ks=KS) -> dict:
    """image_embeddings [N, D], text_embeddings [M, D] (normalised), text_image [M] the image of each text.
    Returns {'i2t_r@K', 't2i_r@K'} for each K."""
    sims = image_embeddings @ text_embeddings.T  # [N, M]
    # Rank of the best own caption per image: how many captions score strictly higher.
    own = text_image[None, :] == np.arange(len(image_embeddings))[:, None]
    best_own = np.max(np.where(own, sims, -np.inf), axis=1)
    i2t_rank = np.sum(sims > best_own[:, None], axis=1)
    # Rank of each caption's own image among the images.
    own_score = sims[text_image, np.arange(len(text_image))]
    t2i_rank = np.sum(sims > own_score[None, :], axis=0)
    out = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float(np.mean(i2t_rank < k))
        out[f"t2i_r@{k}"] = float(np.mean(t2i_rank < k))
    return out


def evaluate_retrieval(config, method, variables, tokenizer, embed) -> dict:
    """Recall@1/5/10 both ways on config.eval.retrieval_split of config.dataset (`embed`: as zero-shot's)."""
    from ssl_jax.data import image_text  # tensorflow

    images, tokens, owner = image_text.eval_pairs(config, config.eval.retrieval_split, tokenizer)
    image_embeddings = embed(lambda x: method.embed_images(variables, x), images)
    text_embeddings = embed(lambda x: method.embed_texts(variables, x), tokens)
    return recall_at_k(image_embeddings, text_embeddings, owner)
