"""The analyses that contrast contrastive and masked-modelling ViTs, as pure numpy functions.

Park et al. 2023 ("What Do Self-Supervised Vision Transformers Learn?", ICLR) compare
DINO/MoCo v3 with MAE/SimMIM by
  * the mean attention distance of every head of every layer (how far a patch looks;
    Dosovitskiy et al. 2021, Fig. 7): contrastive ViTs attend globally in late layers,
    masked-modelling ViTs stay local;
  * a Fourier analysis of the token feature maps (relative log amplitude of high
    frequencies per layer, Park & Kim 2022): masked modelling keeps high frequencies;
  * layer-to-layer representation similarity with linear CKA (Kornblith et al. 2019).
Inputs are what `VisionTransformer.block_outputs` returns, as numpy arrays: tokens
[L, B, T, D] and attention weights [L, B, H, T, T], whose first `num_prefix` tokens are
[CLS] (and registers) and the rest the row-major h x w patch grid.
"""
from __future__ import annotations

import numpy as np


def _patch_grid(num_tokens: int, num_prefix: int) -> int:
    side = int(round((num_tokens - num_prefix) ** 0.5))
    if side * side != num_tokens - num_prefix:
        raise ValueError(f"{num_tokens} tokens minus {num_prefix} prefix token(s) is not a square patch grid")
    return side


def cls_attention_maps(attn: np.ndarray, num_prefix: int = 1) -> np.ndarray:
    """The [CLS] token's attention to every patch, per head: attn [B, H, T, T] of one layer
    -> [B, H, h, w] (DINO's `visualize_attention.py`, which shows the last layer's)."""
    side = _patch_grid(attn.shape[-1], num_prefix)
    return np.asarray(attn)[:, :, 0, num_prefix:].reshape(attn.shape[0], attn.shape[1], side, side)


def patch_distances(side: int, patch_size: int) -> np.ndarray:
    """Euclidean distance in pixels between the centres of every pair of patches of a
    side x side grid (row-major): [side^2, side^2]."""
    rows, cols = np.divmod(np.arange(side * side), side)
    centres = np.stack([rows, cols], axis=1).astype(np.float64) * patch_size
    return np.linalg.norm(centres[:, None] - centres[None], axis=-1)


def mean_attention_distance(attn: np.ndarray, patch_size: int, num_prefix: int = 1) -> np.ndarray:
    """Mean attention distance in pixels per layer and head: attn [L, B, H, T, T] -> [L, H].

    For each patch query, the distance to each patch key weighted by the attention it pays
    that key, averaged over queries and images (Dosovitskiy et al. 2021, App. D.7). The
    weights over patch keys are renormalised to sum to one, so the attention a patch pays
    [CLS]/registers (position-less) does not count as distance 0.
    """
    attn = np.asarray(attn, np.float64)
    side = _patch_grid(attn.shape[-1], num_prefix)
    patches = attn[..., num_prefix:, num_prefix:]  # [L, B, H, N, N]
    patches = patches / np.maximum(patches.sum(-1, keepdims=True), 1e-12)
    per_query = np.einsum("lbhqk,qk->lbhq", patches, patch_distances(side, patch_size))
    return per_query.mean(axis=(1, 3))


def relative_log_amplitude(tokens: np.ndarray, num_prefix: int = 1) -> np.ndarray:
    """Fourier analysis of feature maps (Park & Kim 2022, `fourier_analysis.ipynb`): [L, B, T, D] -> [L, ceil(side / 2)].

    Each layer's patch tokens form feature maps [B, D, h, w]; their 2-D FFT's log
    amplitude, centred and averaged over images and channels, is read along the
    half-diagonal, frequencies (k, k) for k = 0 .. side//2 - 1 (the reference's
    `diag()[h//2:]`, which stops below pi for an even grid), minus its value at 0. The last
    entry is the "relative log amplitude of high frequencies" plotted against depth.
    """
    tokens = np.asarray(tokens, np.float64)
    side = _patch_grid(tokens.shape[2], num_prefix)
    maps = tokens[:, :, num_prefix:].reshape(tokens.shape[0], tokens.shape[1], side, side, tokens.shape[-1])
    log_amplitude = np.log(np.abs(np.fft.fft2(maps, axes=(2, 3))) + 1e-6)
    centred = np.roll(log_amplitude, (side // 2, side // 2), axis=(2, 3)).mean(axis=(1, 4))  # [L, h, w]
    diagonal = np.diagonal(centred, axis1=1, axis2=2)[:, side // 2:]  # frequencies 0 .. pi
    return diagonal - diagonal[:, :1]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019, Eq. 5) of two representations of the same n examples,
    x [n, p] and y [n, q]: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring the
    columns, computed with the n x n Gram matrices (p, q can be large). In [0, 1]; invariant
    to orthogonal transforms and isotropic scaling of either side."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    gram_x, gram_y = x @ x.T, y @ y.T
    return float(np.sum(gram_x * gram_y) / np.sqrt(np.sum(gram_x * gram_x) * np.sum(gram_y * gram_y)))


def cka_matrix(tokens: np.ndarray) -> np.ndarray:
    """Layer-to-layer linear CKA of every block's output: tokens [L, B, T, D] -> [L, L].

    Each image is one example whose representation is all its tokens flattened [T * D]."""
    tokens = np.asarray(tokens)
    num_layers = len(tokens)
    out = np.ones((num_layers, num_layers))
    for i in range(num_layers):
        for j in range(i + 1, num_layers):
            out[i, j] = out[j, i] = linear_cka(tokens[i], tokens[j])
    return out
