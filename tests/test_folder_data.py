"""The folder dataset (`ssl_jax/data/folder.py`) on real image files: CIFAR-10 images read from
tfds and written as PNGs, flat, nested, in class folders and as a list; corrupt and missing
files; pretraining on an unlabelled folder with kNN on tfds CIFAR-10 (`config.eval.dataset`)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import TFDS_DATA_DIR, make_smoke_config
from ssl_jax.data import folder, pipeline
from ssl_jax.errors import UserError

NUM_IMAGES = 40  # 32 flat + 8 in a nested sub-folder
LOCAL_BATCH = 8
STEPS_PER_EPOCH = 2


def _cifar_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` CIFAR-10 train images [N, 32, 32, 3] uint8 and labels [N]."""
    batch = tfds.as_numpy(tfds.load("cifar10", split=f"train[:{count}]", data_dir=TFDS_DATA_DIR, batch_size=-1))
    return batch["image"], batch["label"]


def _write_png(path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


@pytest.fixture(scope="module")
def cifar(tfds_data_dir):
    return _cifar_images(NUM_IMAGES)


@pytest.fixture(scope="module")
def flat(cifar, tmp_path_factory):
    """ROOT/train/img_XX.png (32 images) and ROOT/train/more/deeper/img_XX.png (8): no class folders."""
    root = tmp_path_factory.mktemp("flat")
    images, _ = cifar
    for i, image in enumerate(images):
        _write_png(root / "train" / ("more/deeper" if i >= 32 else "") / f"img_{i:02d}.png", image)
    (root / "train" / "README.txt").write_text("not an image: ignored")
    return root


def _folder_cfg(root, **overrides):
    return make_smoke_config(**{"dataset.name": "folder", "dataset.data_dir": str(root), **overrides})


def test_flat_and_nested_images_are_listed_sorted_and_unlabelled(flat):
    listed = folder.Folder(_folder_cfg(flat).dataset).split("train")
    names = [f.split("/train/", 1)[1] for f in listed.files]
    want = sorted([f"img_{i:02d}.png" for i in range(32)] + [f"more/deeper/img_{i:02d}.png" for i in range(32, 40)])
    assert names == want
    assert not listed.labelled and set(listed.labels) == {-1}
    assert pipeline.num_examples(_folder_cfg(flat).dataset, "train[4:12]") == 8
    quarter = folder.Folder(_folder_cfg(flat).dataset).split("train[-25%:]")  # unlabelled: of all 40 images
    assert quarter.files == listed.files[-10:]


def test_class_folders_give_imagefolder_labels(cifar, tmp_path):
    """<class>/ folders: label = position of the class name in sorted order, whatever the nesting."""
    images, labels = cifar
    names = ["zebra", "ant", "mole"]
    for i in range(9):
        _write_png(tmp_path / "train" / names[i % 3] / ("sub" if i % 2 else "") / f"{i}.png", images[i])
    listed = folder.Folder(_folder_cfg(tmp_path).dataset).split("train")
    assert listed.classes == ("ant", "mole", "zebra")
    for path, label in zip(listed.files, listed.labels):
        assert listed.classes[label] == path.split("/train/", 1)[1].split("/")[0]


def test_eval_batches_give_the_written_pixels_in_list_order(flat, cifar):
    """A .txt list (relative and absolute paths, blank lines) is read in its own order, pixel for pixel."""
    images, _ = cifar
    order = [5, 33, 0, 17]
    lines = [f"train/img_{order[0]:02d}.png", "", str(flat / "train/more/deeper/img_33.png"),
             "train/img_00.png", f"train/img_{order[3]:02d}.png"]
    (flat / "lists").mkdir(exist_ok=True)
    (flat / "lists" / "some.txt").write_text("\n".join(f"../{x}" if x.startswith("train/") else x for x in lines))
    config = _folder_cfg(flat, **{"eval.train_split": "lists/some.txt"})
    batch = next(pipeline.eval_batches(config, "lists/some.txt", 8, 1, raw=True))
    np.testing.assert_array_equal(batch["image"][:4], images[order])
    assert list(batch["mask"]) == [1] * 4 + [0] * 4 and list(batch["label"][:4]) == [-1] * 4


def test_train_batches_resume_exactly_on_a_folder(flat):
    """The batch of step s is the same whether the stream started at 0 or at s (across an epoch end)."""
    config = _folder_cfg(flat)
    stream = list(itertools.islice(pipeline.train_batches(config, 0, STEPS_PER_EPOCH, LOCAL_BATCH), 4))
    resumed = next(pipeline.train_batches(config, 3, STEPS_PER_EPOCH, LOCAL_BATCH))
    for name in stream[3]["views"]:
        np.testing.assert_array_equal(resumed["views"][name], stream[3]["views"][name])
    assert not np.array_equal(stream[0]["views"]["global"], stream[1]["views"]["global"])


@pytest.fixture
def with_corrupt(cifar, tmp_path):
    images, _ = cifar
    for i in range(16):
        _write_png(tmp_path / "train" / f"{i:02d}.png", images[i])
    (tmp_path / "train" / "07_broken.jpg").write_bytes(b"not a jpeg" * 20)
    return tmp_path


def test_corrupt_image_is_named_and_skipped_with_on_corrupt_skip(with_corrupt, capsys):
    config = _folder_cfg(with_corrupt, **{"dataset.on_corrupt": "skip"})
    listed = folder.Folder(config.dataset).split("train")
    assert len(listed.files) == 16 and not any("broken" in f for f in listed.files)
    assert "skipping 1 image(s)" in capsys.readouterr().out
    for batch in itertools.islice(pipeline.train_batches(config, 0, 2, LOCAL_BATCH), 4):  # two epochs decode
        assert np.isfinite(batch["views"]["global"]).all()


def test_corrupt_image_stops_the_run_naming_it_with_on_corrupt_error(with_corrupt):
    config = _folder_cfg(with_corrupt)  # the default: "error"
    with pytest.raises(UserError, match=r"cannot decode 1 image\(s\) of the batch of step \d+: \S+07_broken\.jpg"):
        list(itertools.islice(pipeline.train_batches(config, 0, 2, LOCAL_BATCH), 2))


@pytest.mark.parametrize("case, match", [
    ("empty folder", r"no images \(.jpg.*\) under \S+/train; put the images there"),
    ("missing split", r"no split 'train': \S+/train is not a directory \(the folders in \S+ are \['other'\]\)"),
    ("no data_dir", r"--config.dataset.data_dir, which is not set"),
    ("list with missing files", r"1 of the 2 images listed in \S+list.txt do not exist: \S+/gone.png"),
    ("unreadable list", r"cannot read the image list \S+nope.txt"),
    ("bad on_corrupt", r"on_corrupt='ignore'; choose one of \('error', 'skip'\)"),
    ("mixed slice", r"split 'train\[10:80%\]': give both bounds of a slice in percent or both in images"),
])
def test_bad_folder_input_is_one_user_error(flat, tmp_path, case, match):
    split, overrides = "train", {}
    if case == "empty folder":
        (tmp_path / "train").mkdir()
        (tmp_path / "train" / "notes.md").write_text("no image")
    elif case == "missing split":
        (tmp_path / "other").mkdir()
    elif case == "list with missing files":
        (tmp_path / "list.txt").write_text(f"{flat}/train/img_00.png\ngone.png\n")
        split = "list.txt"
    elif case == "unreadable list":
        split = "nope.txt"
    elif case == "bad on_corrupt":
        overrides = {"dataset.on_corrupt": "ignore"}
    elif case == "mixed slice":
        tmp_path, split = flat, "train[10:80%]"
    root = "" if case == "no data_dir" else str(tmp_path)
    with pytest.raises(UserError, match=match):
        pipeline.num_examples(_folder_cfg(root, **overrides).dataset, split)


def test_folder_is_read_through_gfile_from_a_non_local_filesystem(cifar):
    """tf.io.gfile's in-memory ram:// filesystem: listing, list files and reading go through gfile, not os."""
    images, _ = cifar
    root = "ram://folder_test"
    tf.io.gfile.makedirs(f"{root}/train/a")
    for i in range(3):
        with tf.io.gfile.GFile(f"{root}/train/a/{i}.png", "wb") as f:
            f.write(tf.io.encode_png(images[i]).numpy())
    with tf.io.gfile.GFile(f"{root}/list.txt", "w") as f:
        f.write("train/a/2.png\ntrain/a/0.png\n")
    config = _folder_cfg(root, **{"eval.train_split": "train", "eval.test_split": "train"})
    assert folder.Folder(config.dataset).split("train").classes == ("a",)
    batch = next(pipeline.eval_batches(config, "list.txt", 8, 1, raw=True))
    np.testing.assert_array_equal(batch["image"][:2], images[[2, 0]])


def test_pretrain_on_an_unlabelled_folder_with_knn_on_tfds_cifar10(flat, tmp_path, capsys):
    """DINO smoke steps on the flat folder; kNN from config.eval.dataset (tfds CIFAR-10 slices)."""
    from ssl_jax import train

    config = _folder_cfg(flat, **{"eval.dataset.name": "cifar10", "eval.train_split": "train[:400]",
                                  "eval.test_split": "test[:200]", "checkpoint.every_steps": 100})
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert math.isfinite(result["loss"]) and 0.0 <= result["knn_top1@20"] <= 1.0
    assert pipeline.eval_num_classes(config) == 10
    assert "kNN evaluation is off" not in capsys.readouterr().out


def test_unlabelled_folder_without_eval_dataset_trains_with_knn_off(flat, tmp_path, capsys):
    from ssl_jax import train

    config = _folder_cfg(flat, **{"eval.train_split": "train", "eval.test_split": "train",
                                  "num_epochs": 1, "checkpoint.every_steps": 100})
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert math.isfinite(result["loss"]) and not any(k.startswith("knn") for k in result)
    off = [line for line in capsys.readouterr().out.splitlines() if "kNN evaluation is off" in line]
    assert len(off) == 1 and "'train' (eval.train_split)" in off[0] and "--config.eval.dataset.name" in off[0]
    with pytest.raises(UserError, match="nothing to evaluate: split 'train'"):
        train.evaluate_checkpoint(config, str(tmp_path / "run"))
