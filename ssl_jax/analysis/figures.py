"""Matplotlib figures of the analyses (PNG files); each function returns the Figure.

Models are compared by passing {name: result} dicts, one entry per checkpoint. pyplot's
backend is left alone (inline in notebooks; `pictures.main` selects Agg for files).
"""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np

from ssl_jax import paths


def attention_maps(images: np.ndarray, maps: np.ndarray, title: str = "", patch_pca: np.ndarray | None = None):
    """One row per image: the image, then the [CLS] attention of each head over it, then (with
    `patch_pca` [B, h, w, 3] in [0, 1], `patch_pca.pca_rgb`) the PCA picture of its patch features.

    images [B, H, W, 3] in [0, 1]; maps [B, heads, h, w] (`metrics.cls_attention_maps`),
    each shown at the image's size (nearest) and scaled to its own maximum."""
    num_images, num_heads = maps.shape[:2]
    columns = num_heads + 1 + (patch_pca is not None)
    fig, axes = plt.subplots(num_images, columns, figsize=(1.6 * columns, 1.6 * num_images), squeeze=False)
    height, width = images.shape[1:3]
    for i in range(num_images):
        axes[i, 0].imshow(np.clip(images[i], 0, 1))
        for h in range(num_heads):
            axes[i, h + 1].imshow(maps[i, h] / max(maps[i, h].max(), 1e-12), cmap="inferno",
                                  extent=(0, width, height, 0), interpolation="nearest")
            if i == 0:
                axes[i, h + 1].set_title(f"head {h}", fontsize=8)
        if patch_pca is not None:
            axes[i, -1].imshow(patch_pca[i], extent=(0, width, height, 0), interpolation="nearest")
            if i == 0:
                axes[i, -1].set_title("patch PCA", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title or "[CLS] attention of the last block, per head", fontsize=9)
    fig.tight_layout()
    return fig


def attention_distance(results: dict[str, np.ndarray]):
    """Mean attention distance (pixels) of every head against depth; results {name: [L, H]}."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    offsets = np.linspace(-0.15, 0.15, len(results)) if len(results) > 1 else [0.0]  # side by side per block
    for offset, (name, distance) in zip(offsets, results.items()):
        layers = np.repeat(np.arange(1, len(distance) + 1), distance.shape[1]) + offset
        ax.scatter(layers, distance.ravel(), s=12, alpha=0.7, label=name)
    return _per_block_axes(fig, ax, results, "mean attention distance (pixels)")


def fourier(results: dict[str, np.ndarray]):
    """Relative log amplitude of the highest frequency of the feature maps against depth;
    results {name: [L, F]} (`metrics.relative_log_amplitude`)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, amplitude in results.items():
        ax.plot(np.arange(1, len(amplitude) + 1), amplitude[:, -1], "o-", label=name)
    return _per_block_axes(fig, ax, results, "Δ log amplitude, high frequency")


def _per_block_axes(fig, ax, results: dict[str, np.ndarray], ylabel: str):
    """Labels a plot of a value against block number (1..L, the longest result's L); returns fig."""
    ax.set_xticks(np.arange(1, max(len(r) for r in results.values()) + 1))
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cka(results: dict[str, np.ndarray]):
    """Layer-to-layer linear CKA heatmaps side by side; results {name: [L, L]}."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], results.items()):
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma", origin="lower",
                          extent=(0.5, len(matrix) + 0.5, 0.5, len(matrix) + 0.5))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("block")
        ax.set_ylabel("block")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="linear CKA")
    return fig


def save(fig, path, **kwargs) -> None:
    """Writes `fig` as a PNG to `path`, local or a URL (`ssl_jax.paths`)."""
    with paths.resolve(path).open("wb") as f:
        fig.savefig(f, format="png", **kwargs)


def training_curves(metrics_path, keys=("loss", "learning_rate")):
    """Training metrics (`keys`) and every evaluation against the step, from metrics.jsonl (local or a URL)."""
    rows = [json.loads(line) for line in paths.resolve(metrics_path).read_text().splitlines() if line.strip()]
    train = sorted((r for r in rows if r.get("split") == "train"), key=lambda r: r["step"])
    evals = sorted((r for r in rows if r.get("split") == "eval"), key=lambda r: r["step"])
    eval_keys = sorted({k for r in evals for k in r if k not in ("step", "split", "time")})
    panels = [k for k in keys if any(k in r for r in train)] + (["evaluation"] if eval_keys else [])
    if not panels:
        raise ValueError(f"{metrics_path} has none of the metrics {keys} and no evaluation rows")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "evaluation":
            for k in eval_keys:
                points = [(r["step"], 100 * r[k]) for r in evals if k in r]
                ax.plot(*zip(*points), "o-", label=k, markersize=3)
            ax.set_ylabel("accuracy (%)")
            ax.legend(fontsize=7)
        else:
            ax.plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r])
            ax.set_ylabel(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def reconstructions(panels: dict[str, np.ndarray], title: str = ""):
    """One row per image, one column per panel (`reconstruction.mae_reconstructions`)."""
    names = list(panels)
    num_images = len(panels[names[0]])
    fig, axes = plt.subplots(num_images, len(names), figsize=(1.8 * len(names), 1.8 * num_images), squeeze=False)
    for j, name in enumerate(names):
        for i in range(num_images):
            axes[i, j].imshow(panels[name][i])
            axes[i, j].axis("off")
        axes[0, j].set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
