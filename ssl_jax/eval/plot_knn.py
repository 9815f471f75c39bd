"""Plot kNN accuracy against training time from a workdir's metrics.jsonl.

    python -m ssl_jax.eval.plot_knn --workdir=runs/dino_cifar10 --out=docs/cifar10_knn.png \
        --baseline="raw pixels=0.40" --baseline="random init=0.30"

Evaluation rows (from training or `--mode=eval`) are placed at the training time
(`train_seconds`, evaluation excluded) that the run had logged at their step.
"""
from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from ssl_jax import paths

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding metrics/metrics.jsonl.")
_OUT = flags.DEFINE_string("out", None, "PNG file to write.")
_KEY = flags.DEFINE_string("metric", "knn_top1@20", "Evaluation metric to plot.")
_BASELINES = flags.DEFINE_multi_string("baseline", [], "Horizontal reference lines, 'name=accuracy in [0,1]'.")
flags.mark_flags_as_required(["workdir", "out"])


def knn_curve(metrics_path: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training minutes, steps, accuracy) of every evaluation row, sorted by step.

    The time of an evaluation at step s is the train_seconds of the last training row at
    or before s (linear interpolation between log steps).
    """
    rows = [json.loads(line) for line in paths.resolve(metrics_path).read_text().splitlines() if line.strip()]
    train = sorted((r["step"], r["train_seconds"]) for r in rows if r["split"] == "train")
    evals = sorted({r["step"]: r[key] for r in rows if r["split"] == "eval" and key in r}.items())
    if not train or not evals:
        raise ValueError(f"{metrics_path} has no training rows or no '{key}' evaluations")
    train_steps, train_seconds = np.array(train, dtype=float).T
    steps = np.array([s for s, _ in evals], dtype=float)
    minutes = np.interp(steps, np.concatenate([[0.0], train_steps]), np.concatenate([[0.0], train_seconds])) / 60
    return minutes, steps, np.array([a for _, a in evals])


def main(argv):
    del argv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssl_jax.analysis import figures

    minutes, steps, accuracy = knn_curve(paths.resolve(_WORKDIR.value) / "metrics" / "metrics.jsonl", _KEY.value)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(minutes, 100 * accuracy, "o-", label=f"DINO teacher ({_KEY.value})")
    for m, s, a in zip(minutes, steps, accuracy):
        ax.annotate(f"{100 * a:.1f}% (step {int(s)})", (m, 100 * a), textcoords="offset points", xytext=(4, -12),
                    fontsize=7)
    for spec, style in zip(_BASELINES.value, ("--", ":", "-.")):
        name, value = spec.rsplit("=", 1)
        ax.axhline(100 * float(value), linestyle=style, color="gray", label=f"{name} ({100 * float(value):.1f}%)")
    ax.set_xlabel("training time on the CPU (minutes, evaluation excluded)")
    ax.set_ylabel("kNN top-1 accuracy on the test split (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.resolve(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    figures.save(fig, _OUT.value, dpi=120)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
