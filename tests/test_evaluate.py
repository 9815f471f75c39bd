"""Frozen-checkpoint evaluation end to end: a tiny DINO run is trained in-process (seconds),
then `python -m ssl_jax.evaluate` runs every evaluation on it from the command line, and both
notebooks execute top to bottom against it (a notebook that raises fails this test). MAE's
reconstructions are tested without training in test_eval_analysis.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, make_smoke_config

NOTEBOOKS = ("ablation_frozen_checkpoints.ipynb", "attention_maps.ipynb")


@pytest.fixture(scope="module")
def workdir(tfds_data_dir, tmp_path_factory):
    """A tiny DINO run of 2 steps (checkpoint at step 2, kNN at the end), trained in this process."""
    from ssl_jax import train

    config = make_smoke_config(num_epochs=1)
    config.steps_per_epoch = 2
    path = str(tmp_path_factory.mktemp("frozen_run") / "dino")
    train.train_and_evaluate(config, path)
    return path


def test_evaluate_command_line_runs_every_evaluation(workdir):
    command = [sys.executable, "-m", "ssl_jax.evaluate", f"--workdir={workdir}", "--eval=knn,linear,finetune",
               f"--protocol={os.path.join(REPO, 'configs', 'eval_protocols.py')}:smoke"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(workdir, "checkpoints", "eval_2.json")) as f:
        saved = json.load(f)
    for key in ("knn_top1@1", "knn_top1@20", "linear_dino_top1", "linear_dino_top5", "linear_mae_top1",
                "linear_mae_top5", "finetune_top1", "finetune_top5"):
        assert 0.0 <= saved[key] <= 1.0, key
        assert f"| {key} | {100 * saved[key]:.2f} % |" in proc.stdout
    assert saved["finetune_seconds"] > 0 and np.isfinite(saved["linear_mae_final_loss"])
    # kNN on the cached features gives the accuracy the training loop measured at its end
    with open(os.path.join(workdir, "metrics", "metrics.jsonl")) as f:
        trained = [r for r in map(json.loads, f) if r["split"] == "eval"][0]
    assert saved["knn_top1@20"] == pytest.approx(trained["knn_top1@20"], abs=1e-9)
    cached = os.listdir(os.path.join(workdir, "eval_cache", "2"))
    # kNN features of both splits; the DINO probe's (avgpool) of both (trained on cached features);
    # the MAE probe's ([CLS] only) of the test split (trained on augmented images)
    assert sorted(name.split("_")[0] for name in cached) == ["knn"] * 2 + ["probe"] * 3, cached
    bad = subprocess.run([sys.executable, "-m", "ssl_jax.evaluate", f"--workdir={workdir}", "--eval=knn,svm"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "error: unknown evaluation 'svm'" in bad.stderr
    no_prototypes = subprocess.run([sys.executable, "-m", "ssl_jax.evaluate", f"--workdir={workdir}",
                                    "--eval=classifier"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert no_prototypes.returncode == 1 and "needs a method with class prototypes" in no_prototypes.stderr


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_executes(workdir, notebook, tmp_path):
    import nbclient
    import nbformat

    nb = nbformat.read(os.path.join(REPO, "notebooks", notebook), as_version=4)
    # kNN only: its features are cached by the command-line test (or extracted here when run alone)
    env = {"SSL_JAX_NOTEBOOK_WORKDIRS": workdir, "SSL_JAX_NOTEBOOK_WORKDIR": workdir,
           "SSL_JAX_NOTEBOOK_PROTOCOL": "smoke", "SSL_JAX_NOTEBOOK_EVALS": "knn", "SSL_JAX_NOTEBOOK_IMAGES": "4",
           "SSL_JAX_NOTEBOOK_OUT": str(tmp_path / "pictures")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    if notebook == "attention_maps.ipynb":
        assert {"attention_maps.png", "attention_distance.png", "fourier.png", "cka.png",
                "training_curves.png"} <= set(os.listdir(tmp_path / "pictures"))
