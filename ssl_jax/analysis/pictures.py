"""Pictures and analyses of a frozen checkpoint, written as PNG files.

    python -m ssl_jax.analysis.pictures --workdir=DIR --out=DIR [--step=N] [--images=8]
        [--image_files=a.jpg,b.png]

writes attention_maps.png ([CLS] attention per head of the last block, DINO's
visualisation, and a last column of DINOv2's PCA picture of the normed patch tokens,
`patch_pca.py`), attention_distance.png, fourier.png and cka.png (Park et al. 2023's three
analyses, `metrics.py`), training_curves.png (from WORKDIR/metrics/metrics.jsonl) and, for
an MAE run, mae_reconstructions.png (original / masked / reconstruction).
Images: the first --images of the run's eval test split, or --image_files, preprocessed
as the run's evaluation (resize + centre crop to config.eval.crop).
"""
from __future__ import annotations

import jax
import numpy as np

from ssl_jax import paths
from ssl_jax.analysis import figures, metrics
from ssl_jax.analysis.patch_pca import pca_rgb
from ssl_jax.analysis.reconstruction import mae_reconstructions
from ssl_jax.eval.frozen import vit_module, vit_outputs
from ssl_jax.methods.mae import MAE


def load_images(config, count: int = 8, files=()) -> tuple[np.ndarray, np.ndarray]:
    """(display images [B, H, W, 3] in [0, 1], model inputs [B, H, W, 3] normalised), from
    `files` or the first `count` images of config.eval.test_split."""
    import tensorflow as tf

    from ssl_jax.data import pipeline

    if files:
        inputs = np.stack([pipeline.eval_preprocess(tf.io.decode_image(tf.io.read_file(f), channels=3,
                                                                        expand_animations=False),
                                                    config.eval, config.augment).numpy() for f in files])
    else:
        inputs = next(pipeline.eval_batches(config, config.eval.test_split, count, 1))["image"]
    display = np.clip(inputs * np.asarray(config.augment.std) + np.asarray(config.augment.mean), 0, 1)
    return display, np.asarray(inputs, np.float32)


def analyse(frozen, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The three analyses and the attention maps of the frozen ViT on inputs [B, H, W, 3]
    (`analyse_outputs`)."""
    return analyse_outputs(vit_module(frozen.config), jax.device_get(vit_outputs(frozen, inputs)))


def analyse_outputs(module, outputs: tuple) -> dict[str, np.ndarray]:
    """The three analyses and the attention maps from ViT `module`'s `block_outputs`: (tokens
    [L, B, T, D], attn [L, B, H, T, T]); `ssl_jax.load(...).blocks(images)` gives them too:
    {'attention_maps' [B, heads, h, w], 'attention_distance' [L, H], 'fourier' [L, F], 'cka' [L, L]}."""
    tokens, attn = outputs
    prefix = module.num_prefix_tokens
    return {"attention_maps": metrics.cls_attention_maps(attn[-1], prefix) if module.class_token else None,
            "attention_distance": metrics.mean_attention_distance(attn, module.patch_size, prefix),
            "fourier": metrics.relative_log_amplitude(tokens, prefix),
            "cka": metrics.cka_matrix(tokens)}


def patch_tokens(frozen, inputs: np.ndarray) -> np.ndarray:
    """The frozen ViT's normed last-block patch tokens on inputs [B, H, W, 3], as a grid [B, h, w, D]."""
    module = vit_module(frozen.config)
    tokens = jax.jit(lambda p, x: module.apply({"params": p}, x, method="tokens"))(
        frozen.run.method.eval_variables(frozen.state), inputs)
    grid = (inputs.shape[1] // module.patch_size, inputs.shape[2] // module.patch_size)
    return np.asarray(tokens[:, module.num_prefix_tokens:]).reshape(len(inputs), *grid, -1)


def write_pictures(frozen, out_dir: str, count: int = 8, files=()) -> list[str]:
    """Writes the PNG files for one checkpoint into out_dir (local or a URL); returns their paths."""
    out = paths.resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    display, inputs = load_images(frozen.config, count, files)
    results = analyse(frozen, inputs)
    name = f"{paths.resolve(frozen.workdir).name} step {frozen.step}"
    made = {"attention_distance": figures.attention_distance({name: results["attention_distance"]}),
            "fourier": figures.fourier({name: results["fourier"]}),
            "cka": figures.cka({name: results["cka"]})}
    if results["attention_maps"] is not None:
        made["attention_maps"] = figures.attention_maps(display, results["attention_maps"], name,
                                                        pca_rgb(patch_tokens(frozen, inputs)))
    if isinstance(frozen.run.method, MAE):
        panels = mae_reconstructions(frozen.run.method, frozen.state.params, inputs, frozen.config.augment.mean,
                                     frozen.config.augment.std)
        made["mae_reconstructions"] = figures.reconstructions(panels, name)
    metrics_path = paths.resolve(frozen.workdir) / "metrics" / "metrics.jsonl"
    if metrics_path.exists():
        made["training_curves"] = figures.training_curves(metrics_path)
    written = []
    for key, fig in made.items():
        written.append(str(out / f"{key}.png"))
        figures.save(fig, written[-1], dpi=110)
        figures.plt.close(fig)
    return written


def main(argv):
    del argv
    import matplotlib
    from absl import logging

    from ssl_jax.eval.frozen import restore

    logging.set_verbosity(logging.WARNING)
    matplotlib.use("Agg")  # files only
    frozen = restore(WORKDIR.value, STEP.value)
    files = [f for f in IMAGE_FILES.value.split(",") if f]
    for path in write_pictures(frozen, OUT.value, IMAGES.value, files):
        print(f"wrote {path}")


if __name__ == "__main__":
    from absl import app, flags

    WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config.json, checkpoints/).")
    OUT = flags.DEFINE_string("out", None, "Directory for the PNG files.")
    STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    IMAGES = flags.DEFINE_integer("images", 8, "Number of test-split images to analyse.")
    IMAGE_FILES = flags.DEFINE_string("image_files", "", "Comma-separated image files instead of the test split.")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
