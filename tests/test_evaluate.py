"""Frozen-checkpoint evaluation end to end: a tiny DINO run is trained in-process (seconds),
then `python -m ssl_jax.evaluate` runs every evaluation on it from the command line, on its own
dataset and on a labelled folder of CIFAR-10 PNGs (whose kNN must equal the same images' kNN
read from tfds), and both notebooks execute top to bottom against it (a notebook that raises
fails this test). MAE's reconstructions are tested without training in test_eval_analysis.py."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import main_process
from conftest import REPO, TFDS_DATA_DIR, make_smoke_config
from ssl_jax.errors import UserError

NOTEBOOKS = ("ablation_frozen_checkpoints.ipynb", "attention_maps.ipynb")
EVALUATE = "ssl_jax.evaluate"


@pytest.fixture(scope="module")
def workdir(tfds_data_dir, tmp_path_factory):
    """A tiny DINO run of 2 steps (checkpoint at step 2, kNN and the CamVid segmentation probe at the
    end), trained in this process."""
    from ssl_jax import train

    config = make_smoke_config(num_epochs=1)
    config.steps_per_epoch = 2
    config.eval.segmentation_dir, config.eval.segmentation_protocol = CAMVID, "smoke"
    path = str(tmp_path_factory.mktemp("frozen_run") / "dino")
    train.train_and_evaluate(config, path)
    return path


def test_evaluate_command_line_runs_every_evaluation(workdir):
    proc = main_process.run([f"--workdir={workdir}", "--eval=knn,linear,finetune",
                             f"--protocol={os.path.join(REPO, 'configs', 'eval_protocols.py')}:smoke"], EVALUATE)
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
    assert 0.0 < trained["segmentation_mIoU"] <= 1.0 and 0.0 < trained["segmentation_pixel_accuracy"] <= 1.0
    cached = os.listdir(os.path.join(workdir, "eval_cache", "2"))
    # kNN features of both splits; the DINO probe's (avgpool) of both (trained on cached features);
    # the MAE probe's ([CLS] only) of the test split (trained on augmented images)
    assert sorted(name.split("_")[0] for name in cached) == ["knn"] * 2 + ["probe"] * 3, cached
    bad = main_process.run([f"--workdir={workdir}", "--eval=knn,svm"], EVALUATE, timeout=120)
    assert bad.returncode == 1 and "error: unknown evaluation 'svm'" in bad.stderr
    no_prototypes = main_process.run([f"--workdir={workdir}", "--eval=classifier"], EVALUATE, timeout=300)
    assert no_prototypes.returncode == 1 and "needs a method with class prototypes" in no_prototypes.stderr


CAMVID = os.path.join(os.path.dirname(TFDS_DATA_DIR), "camvid")  # shared/data/camvid beside the tfds copy


@pytest.mark.skipif(not os.path.isdir(CAMVID), reason=f"CamVid not found at {CAMVID}")
def test_evaluate_segmentation_on_camvid(workdir):
    """`python -m ssl_jax.evaluate --eval=segmentation` on the real CamVid files (the smoke protocol:
    8 train, 4 test images, two test scales and flips), results printed and in eval_2_camvid.json;
    a segmentation folder serves no other evaluation."""
    from ssl_jax.evaluate import evaluate_checkpoint

    proc = main_process.run([f"--workdir={workdir}", "--eval=segmentation", f"--dataset={CAMVID}",
                             f"--protocol={os.path.join(REPO, 'configs', 'eval_protocols.py')}:smoke"], EVALUATE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(workdir, "checkpoints", "eval_2_camvid.json")) as f:
        saved = json.load(f)
    assert saved["step"] == 2 and saved["segmentation_seconds"] > 0
    assert f"| segmentation_mIoU | {100 * saved['segmentation_mIoU']:.2f} % |" in proc.stdout, proc.stdout
    assert 0.0 <= saved["segmentation_mIoU"] <= 1.0 and 0.0 <= saved["segmentation_pixel_accuracy"] <= 1.0
    classes = [k for k in saved if k.startswith("segmentation_IoU_")]
    assert classes and {k[len("segmentation_IoU_"):] for k in classes} <= {"Sky", "Building", "Pole", "Road",
        "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"}  # noqa: E128
    with pytest.raises(UserError, match="serves --eval=segmentation only"):
        evaluate_checkpoint(workdir, ["knn", "segmentation"], dataset=CAMVID)


def write_cifar_folder(root, split: str, count: int, out_split: str | None = None) -> None:
    """The first `count` images of CIFAR-10's `split` as ROOT/<out_split>/<label>_<class>/<i>.png (sorted
    class names in label order, as ImageFolder numbers them); out_split None: ROOT/<label>_<class>/."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=TFDS_DATA_DIR)
    names = builder.info.features["label"].names
    data = tfds.as_numpy(builder.as_dataset(split=f"{split}[:{count}]", batch_size=-1))
    for i, (image, label) in enumerate(zip(data["image"], data["label"])):
        path = root / (out_split or "") / f"{label}_{names[label]}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())


def test_evaluate_on_a_labelled_folder_equals_the_same_images_from_tfds(workdir, tmp_path):
    """--dataset=DIR (train/ and test/ of <class>/ folders, 200 + 100 PNGs): kNN equals the kNN of
    CIFAR-10's train[:200] / test[:100] read from tfds (the memory bank's order does not matter)."""
    from ssl_jax.eval.frozen import load_config, restore
    from ssl_jax.evaluate import load_protocol, run_knn

    run = tmp_path / "run"
    shutil.copytree(workdir, run)  # its own eval_cache and eval json, whatever ran before
    data = tmp_path / "cifar_pngs"
    write_cifar_folder(data, "train", 200, "train")
    write_cifar_folder(data, "test", 100, "test")
    protocol = os.path.join(REPO, "configs", "eval_protocols.py")
    proc = main_process.run([f"--checkpoint={run}", f"--dataset={data}", "--eval=knn", f"--protocol={protocol}:smoke"],
                            EVALUATE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(run / "checkpoints" / "eval_2_cifar_pngs.json") as f:
        saved = json.load(f)
    config = load_config(str(run))
    config.eval.train_split, config.eval.test_split = "train[:200]", "test[:100]"
    frozen = restore(str(run), 2, config)._replace(workdir=str(tmp_path / "reference"))
    want = run_knn(frozen, load_protocol("smoke"))
    for key, value in want.items():
        assert saved[key] == pytest.approx(value, abs=1e-9), key


def test_cached_features_of_two_folders_do_not_mix(tmp_path):
    """Two folders with the same split names are different datasets to the feature cache."""
    from types import SimpleNamespace

    from ssl_jax.eval.cache import cache_path
    from ssl_jax.evaluate import use_folder

    paths = []
    for name in ("a", "b"):
        write_cifar_folder(tmp_path / name, "test", 20, "train")
        write_cifar_folder(tmp_path / name, "test", 20, "val")
        config = use_folder(make_smoke_config(), str(tmp_path / name))
        assert (config.eval.train_split, config.eval.test_split) == ("train", "val")
        paths.append(cache_path(SimpleNamespace(config=config, workdir=str(tmp_path), step=2), "knn", "train", {}))
    assert paths[0] != paths[1]


def test_one_folder_of_classes_is_split_80_20_within_each_class(tmp_path):
    """DIR/<class>/ alone: of each class's sorted images the first 80 % train, the last 20 % test."""
    from ssl_jax.data import folder
    from ssl_jax.evaluate import use_dataset

    write_cifar_folder(tmp_path / "pets", "test", 60)
    config = use_dataset(make_smoke_config(), str(tmp_path / "pets"))
    assert (config.eval.dataset.name, config.eval.dataset.data_dir) == ("folder", str(tmp_path))
    listing = folder.Folder(config.eval.dataset)
    train, test = listing.split(config.eval.train_split), listing.split(config.eval.test_split)
    assert train.classes == test.classes and len(train.classes) == 10
    assert not set(train.files) & set(test.files)
    for label, name in enumerate(train.classes):
        files = sorted(str(p) for p in (tmp_path / "pets" / name).iterdir())
        cut = len(files) * 80 // 100
        assert [f for f, own in zip(train.files, train.labels) if own == label] == files[:cut]
        assert [f for f, own in zip(test.files, test.labels) if own == label] == files[cut:]


def test_a_folder_without_class_folders_is_one_line_naming_the_fix(tmp_path):
    from ssl_jax.evaluate import use_dataset

    write_cifar_folder(tmp_path / "flat", "test", 4, "train")
    for png in (tmp_path / "flat" / "train").glob("*/*.png"):  # every image straight in train/
        png.rename(tmp_path / "flat" / "train" / png.name)
    with pytest.raises(UserError) as error:
        use_dataset(make_smoke_config(), str(tmp_path / "flat"))
    message = str(error.value)
    assert "\n" not in message and "are not in class sub-folders" in message
    assert "<split>/<class>/*.jpg" in message
    write_cifar_folder(tmp_path / "no_train", "test", 4, "val")
    with pytest.raises(UserError, match=r"no_train has val/ but no train/: put the images to fit on"):
        use_dataset(make_smoke_config(), str(tmp_path / "no_train"))


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_executes(workdir, notebook, tmp_path):
    import nbclient
    import nbformat

    from ssl_jax.export import export

    nb = nbformat.read(os.path.join(REPO, "notebooks", notebook), as_version=4)
    env = {"SSL_JAX_NOTEBOOK_WORKDIR": workdir, "SSL_JAX_NOTEBOOK_IMAGES": "4",
           "SSL_JAX_NOTEBOOK_OUT": str(tmp_path / "pictures")}
    if notebook == "ablation_frozen_checkpoints.ipynb":  # its sources: the run and the run's export
        exported = str(tmp_path / "dino.safetensors")
        export(workdir, exported)
        env.update({"SSL_JAX_NOTEBOOK_SOURCES": f"{workdir},{exported}", "SSL_JAX_NOTEBOOK_PROTOCOL": "smoke",
                    "SSL_JAX_NOTEBOOK_SPLITS": "train[:200],test[:100]", "SSL_JAX_NOTEBOOK_EVALS": "knn,linear",
                    "SSL_JAX_NOTEBOOK_SEGMENTATION": CAMVID})
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
    if notebook == "ablation_frozen_checkpoints.ipynb":  # the run and its export: the same numbers
        table = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if "text/markdown" in o.get("data", {})][0].splitlines()
        assert "knn_top1@20" in table[0] and "linear_top1" in table[0] and "segmentation_mIoU" in table[0]
        assert table[2].startswith("| dino |") and table[3].replace("dino.safetensors", "dino", 1) == table[2]
    else:
        assert {"attention_maps.png", "attention_distance.png", "fourier.png", "cka.png",
                "training_curves.png"} <= set(os.listdir(tmp_path / "pictures"))
