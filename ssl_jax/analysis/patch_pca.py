"""DINOv2's PCA pictures of patch features (Oquab et al. 2023, Fig. 1 and Sec. 7.5 / Fig. 9).

The paper: a PCA of the patch features of a set of images; the background is removed by
thresholding the first component (patches with a negative score are dropped), a second PCA is
computed on the remaining patches of all the images together, and its first three components are
shown as the red, green and blue channels. The paper gives no threshold code (facebookresearch/
dinov2 issues #23 and #412 point to community notebooks); here the threshold is 0 on the
first component, whose sign is fixed so that the kept ("foreground") side is the smaller one
(a principal component's sign is arbitrary), and each colour channel is min-max scaled over the
kept patches; dropped patches are black.

    rgb = pca_rgb(tokens)       # tokens [B, h, w, D] (normed patch tokens) -> [B, h, w, 3] in [0, 1]
"""
from __future__ import annotations

import numpy as np


def principal_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(components [k, D], scores [N, k]) of rows x [N, D]: the top-k eigenvectors of the covariance
    of the centred rows (float64), by decreasing eigenvalue, and the rows projected on them."""
    centred = np.asarray(x, np.float64) - np.mean(x, axis=0, dtype=np.float64)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    components = vectors[:, np.argsort(values)[::-1][:k]].T
    return components, centred @ components.T


def foreground(tokens: np.ndarray) -> np.ndarray:
    """[B, h, w] bool: patches whose first principal component (over every patch of the B images)
    is positive, the component's sign chosen so that they are at most half of the patches."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    first = principal_components(flat, 1)[1][:, 0]
    first = -first if np.sum(first > 0) > flat.shape[0] / 2 else first
    return (first > 0).reshape(tokens.shape[:-1])


def pca_rgb(tokens: np.ndarray, threshold: bool = True) -> np.ndarray:
    """tokens [B, h, w, D] -> [B, h, w, 3] in [0, 1]: the first three principal components of the
    kept patches (`foreground` with `threshold`, else all), each min-max scaled; the rest black."""
    keep = foreground(tokens) if threshold else np.ones(tokens.shape[:-1], bool)
    rgb = np.zeros((*tokens.shape[:-1], 3))
    kept = tokens[keep]
    if len(kept) > 3:
        scores = principal_components(kept, 3)[1]
        low, high = scores.min(0), scores.max(0)
        rgb[keep] = (scores - low) / np.maximum(high - low, 1e-12)
    return rgb
