"""`ssl_jax.load(path).embed(images)`, `python -m ssl_jax.evaluate --checkpoint=<weights file>`, and
configs reachable by name (packaging).

Features of an official weights file are compared with `test_convert.np_timm_vit` (a float64
transcription of timm's forward) on images preprocessed by hand (torchvision's CenterCrop);
the resize is compared with PIL's bicubic resize (torchvision's Resize on PIL images)."""
from __future__ import annotations

import configparser
import json
import os

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import ssl_jax
import main_process
from conftest import REPO, make_smoke_config
from test_convert import mocov3_vit_state, np_timm_vit
from test_init_from import torchvision_resnet_shapes
from ssl_jax.api import resize_and_crop
from ssl_jax.errors import UserError

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(path, state): a ViT with vit_small's 6 heads (width 24, 2 blocks, patch 8, 32 px) as .safetensors."""
    state = mocov3_vit_state(np.random.RandomState(0), dim=24, patch=8, grid=4, depth=2)
    path = str(tmp_path_factory.mktemp("weights") / "vit.safetensors")
    save_file(state, path)
    return path, state


def reference_tokens(state, images_uint8):
    """Resize(37) is a no-op on 37 px images; CenterCrop(32) starts at (37 - 32) // 2 = 2 (torchvision
    rounds the offset; 2.5 -> 2); then ToTensor and Normalize with ImageNet's mean and std."""
    x = images_uint8[:, 2:34, 2:34].astype(np.float64) / 255.0
    x = (x - MEAN) / STD
    return np_timm_vit(state, x.transpose(0, 3, 1, 2), num_heads=6)


def test_embed_an_official_file(official, tmp_path):
    path, state = official
    model = ssl_jax.load(path, arch="vit_small", image_size=32)  # Resize(round(32 * 256 / 224) = 37), crop 32
    images = np.random.RandomState(1).randint(0, 256, (5, 37, 37, 3), dtype=np.uint8)
    want = reference_tokens(state, images)
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.embed(images, batch_size=2), want[:, 0], **tol)
    np.testing.assert_allclose(model.embed(images, output="patch"), want[:, 1:], **tol)
    np.testing.assert_allclose(model.embed(images, output="pooled"), want[:, 1:].mean(1), **tol)
    np.testing.assert_allclose(model.embed(images[0]), want[:1, 0], **tol)  # one [H, W, 3] image
    files = []
    for i, image in enumerate(images[:2]):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(files[-1])
    np.testing.assert_allclose(model.embed(files), want[:2, 0], **tol)
    np.testing.assert_allclose(model.embed(list(images[:2].astype(np.float32) / 255)), want[:2, 0], **tol)
    with pytest.raises(UserError, match="output='token'; choose one of cls, pooled, patch"):
        model.embed(images, output="token")
    with pytest.raises(UserError, match="pass arch="):
        ssl_jax.load(path)
    with pytest.raises(UserError, match="is neither an ssl_jax workdir"):
        ssl_jax.load(str(tmp_path / "nothing"))


def test_embed_a_torchvision_resnet(tmp_path):
    """ResNet-18 (basic blocks) is recognised from its keys; its features are the flax ResNet's with the
    file's BatchNorm statistics (zero means, so the scale alone sets them: checked by doubling it)."""
    rng = np.random.RandomState(4)
    shapes = torchvision_resnet_shapes((2, 2, 2, 2), False, 4)
    state = {k: np.asarray(rng.rand(*s) + 0.5 if k.endswith("running_var") else rng.randn(*s) * 0.3, np.float32)
             for k, s in shapes.items()}
    state.update({k: np.zeros_like(v) for k, v in state.items() if k.endswith("running_mean")})
    path = str(tmp_path / "r18.safetensors")
    save_file(state, path)
    model = ssl_jax.load(path, image_size=32)
    assert model.arch == "resnet18"
    images = rng.randint(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    features = model.embed(images)
    assert features.shape == (2, 32) and np.all(features >= 0)  # pooled after a ReLU
    with pytest.raises(UserError, match="output='patch' needs a ViT"):
        model.embed(images, output="patch")
    variables = {**model.variables, "batch_stats": {**model.variables["batch_stats"]}}
    variables["batch_stats"]["bn1"] = {"mean": variables["batch_stats"]["bn1"]["mean"],
                                       "var": variables["batch_stats"]["bn1"]["var"] / 4}
    assert not np.allclose(model.module.apply(variables, model.prepare(images)), features, atol=1e-4)


def test_resize_follows_pil_bicubic():
    """Shorter side 80 -> 40 (a 2x antialiased downscale), then the centre 32 x 32 crop of 40 x 60."""
    image = np.random.RandomState(2).randint(0, 256, (80, 120, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(image).resize((60, 40), Image.BICUBIC))  # antialiased when shrinking
    want = smooth[4:36, 14:46].astype(np.float32) / 255
    got = resize_and_crop(image.astype(np.float32) / 255, 40, 32)
    assert got.shape == (32, 32, 3)
    batch = np.stack([image, image[::-1]]).astype(np.float32) / 255  # a batch is resized in one call, the same
    np.testing.assert_allclose(resize_and_crop(batch, 40, 32)[0], got, atol=1e-6)
    assert np.abs(got - want).mean() < 0.003 and np.abs(got - want).max() < 0.03  # measured: 0.0011, 0.014


@pytest.fixture(scope="module")
def trained_run(tfds_data_dir, tmp_path_factory):
    """A tiny DINO run of 2 steps (its checkpoint at step 2), trained in this process."""
    from ssl_jax import train

    config = make_smoke_config(num_epochs=1)
    config.steps_per_epoch = 2
    path = str(tmp_path_factory.mktemp("run") / "dino")
    train.train_and_evaluate(config, path)
    return path


def test_embed_a_run_gives_the_features_knn_evaluates(trained_run):
    from ssl_jax.init_from import restore_run

    frozen = restore_run(trained_run)
    images = np.random.RandomState(3).randint(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mean, std = np.float32(frozen.config.augment.mean), np.float32(frozen.config.augment.std)
    want = frozen.run.method.features(*frozen.variables, (images / np.float32(255) - mean) / std)
    for path in (trained_run, os.path.join(trained_run, "checkpoints", "2")):
        np.testing.assert_allclose(ssl_jax.load(path).embed(images), want, rtol=1e-5, atol=1e-5)


def test_evaluate_a_weights_file_on_a_named_dataset(official, tmp_path, tfds_data_dir):
    """kNN of an official file through a config whose model matches it, on tfds `cifar10`."""
    path, _ = official
    overrides = {"model.size": "custom", "model.embed_dim": 24, "model.depth": 2, "model.num_heads": 6,
                 "method.out_dim": 32, "method.head_hidden_dim": 32, "method.head_bottleneck_dim": 16,
                 "dataset.download": False, "eval.batch_size": 200, "eval.train_split": "train[:400]",
                 "eval.test_split": "test[:200]"}
    command = [f"--checkpoint={path}", "--config=dino_small:smoke", f"--workdir={tmp_path / 'out'}", "--eval=knn",
               "--dataset=cifar10", "--protocol=eval_protocols:smoke", *[f"--config.{k}={v}" for k, v in overrides.items()]]
    proc = main_process.run(command, "ssl_jax.evaluate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "init_from " in proc.stdout and "kept fresh: head/" in proc.stdout
    with open(tmp_path / "out" / "checkpoints" / "eval_0_cifar10.json") as f:
        assert 0.0 <= json.load(f)["knn_top1@20"] <= 1.0
    wrong = main_process.run(command[:-len(overrides)] + ["--config.model.depth=3"], "ssl_jax.evaluate")
    assert wrong.returncode == 1 and "the backbone/ arrays must load" in wrong.stderr, wrong.stderr[-2000:]


def test_every_package_is_listed_for_installs():
    """setup.cfg lists its packages (configs/ ships as ssl_jax.configs): a new subpackage must be added."""
    from setuptools import find_packages

    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    listed = set(parser["options"]["packages"].split())
    assert listed == set(find_packages(REPO, include=["ssl_jax", "ssl_jax.*"])) | {"ssl_jax.configs"}
    from ssl_jax.config_files import config_path, resolve_flag

    assert config_path("dino_small") == os.path.join(REPO, "configs", "dino_small.py")
    assert resolve_flag(["--config=mae_small:smoke", "--config=configs/x.py:cifar10"]) == [
        f"--config={os.path.join(REPO, 'configs', 'mae_small.py')}:smoke", "--config=configs/x.py:cifar10"]
