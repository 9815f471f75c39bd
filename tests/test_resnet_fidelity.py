"""The ResNet-family recipes against their references (docs/FIDELITY.md).

* ResNet init: each named convolution init (`resnet.CONV_INITS`) on one ResNet-50 bottleneck block
  at real width, its std within 5 % of the reference's formula, and the BatchNorm init;
* RotNet's learning rate per epoch against gidariss/FeatureLearningRotNet's `LUT_lr` lookup;
* which parameters each recipe decays / LARS-adapts, from one optimiser step on a built ResNet.

Shapes are small where the statistic allows: 2 shared CPU cores.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import optim
from ssl_jax.models.backbones import build_backbone
from ssl_jax.models.heads import projection_mlp
from ssl_jax.models.resnet import ResidualBlock
from ssl_jax.tree_paths import path_name

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(name: str, preset: str = ""):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


# ----------------------------------------------------------------------------- ResNet init

def truncated_normal_std(bound: float) -> float:
    """Std of a standard normal cut at +-bound: sqrt(1 - 2 b phi(b) / (Phi(b) - Phi(-b)))."""
    phi = math.exp(-bound**2 / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1 - 2 * bound * phi / mass)


def expected_std(init: str, kernel_shape) -> float:
    """The references' conv init std for a [kh, kw, C_in, C_out] kernel."""
    kh, kw, c_in, c_out = kernel_shape
    fan_in, fan_out = kh * kw * c_in, kh * kw * c_out
    if init == "torchvision":  # nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")
        return math.sqrt(2.0 / fan_out)
    if init == "simclr_tf":  # tf.variance_scaling_initializer(): truncated normal rescaled to sqrt(1 / fan_in)
        return math.sqrt(1.0 / fan_in)
    if init == "haiku":  # hk.initializers.TruncatedNormal(1 / sqrt(fan_in)): cut at +-2, not rescaled
        return truncated_normal_std(2.0) / math.sqrt(fan_in)
    raise KeyError(init)


@functools.lru_cache(maxsize=None)
def bottleneck_params(init: str, zero_init_residual: bool):
    """layer4_0 of ResNet-50: 1024 -> (512, 512, 2048) with the stride-2 projection shortcut."""
    norm = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5)
    block = ResidualBlock(512, 2, True, zero_init_residual, norm, conv_init=init)
    variables = jax.jit(block.init)(jax.random.key(0), jnp.zeros((1, 2, 2, 1024)))
    return jax.tree.map(np.asarray, variables["params"])


@pytest.mark.parametrize("init", ["torchvision", "simclr_tf", "haiku"])
def test_conv_init_std_matches_the_reference_formula(init):
    params = bottleneck_params(init, True)
    for name in ("conv1", "conv2", "conv3", "downsample_conv"):
        kernel = params[name]["kernel"]
        want = expected_std(init, kernel.shape)
        assert abs(kernel.std() / want - 1) < 0.05, (name, kernel.shape, kernel.std(), want)
        assert abs(kernel.mean()) < 0.05 * want
        if init != "torchvision":  # both cut at 2 stddev of the untruncated normal
            assert np.abs(kernel).max() <= 2 * want / truncated_normal_std(2.0) * 1.0001


@pytest.mark.parametrize("zero_init_residual", [True, False])
def test_batchnorm_init_and_zero_init_residual(zero_init_residual):
    params = bottleneck_params("simclr_tf", zero_init_residual)
    for name in ("bn1", "bn2", "downsample_bn"):
        np.testing.assert_array_equal(params[name]["scale"], 1.0)
        np.testing.assert_array_equal(params[name]["bias"], 0.0)
    np.testing.assert_array_equal(params["bn3"]["scale"], 0.0 if zero_init_residual else 1.0)
    np.testing.assert_array_equal(params["bn3"]["bias"], 0.0)


@pytest.mark.parametrize("config, init, zero_init_residual", [
    ("simclr_resnet50", "simclr_tf", True),  # resnet.py: variance_scaling_initializer, init_zero=True
    ("byol_resnet50", "haiku", True),  # networks.py: hk.Conv2D default, batchnorm_2 scale_init=zeros
    ("simsiam_resnet50", "torchvision", True),  # main_simsiam.py: zero_init_residual=True
    ("swav_resnet50", "torchvision", False),  # src/resnet50.py: zero_init_residual=False
    ("rotation_resnet50", "torchvision", False),  # torchvision resnet50() defaults
    ("sla_resnet", "torchvision", False),  # torchvision resnet18() defaults
    ("suave_resnet50", "torchvision", False),  # suave-daino src/resnet50.py (SwAV's)
])
def test_each_recipe_builds_its_reference_resnet_init(config, init, zero_init_residual):
    model = build_backbone(load_config(config).model)
    assert (model.conv_init, model.zero_init_residual) == (init, zero_init_residual)


def test_unknown_init_is_one_clear_error():
    cfg = load_config("simclr_resnet50").model
    cfg.conv_init = "xavier"
    with pytest.raises(ValueError, match="config.model.conv_init"):
        build_backbone(cfg)


# ----------------------------------------------------------------------------- RotNet lr

# gidariss/FeatureLearningRotNet config/ImageNet_RotNet_AlexNet.py net_optim_params['LUT_lr'].
ROTNET_IMAGENET_LUT = [(15, 0.01), (30, 0.001), (45, 0.0001), (50, 0.00001)]
# config/CIFAR10_RotNet_NIN4blocks.py.
ROTNET_CIFAR_LUT = [(60, 0.1), (120, 0.02), (160, 0.004), (200, 0.0008)]


def lut_lr(lut, epoch: int) -> float:
    """algorithms/Algorithm.py adjust_learning_rates, run at the start of every epoch."""
    return next((lr for (max_epoch, lr) in lut if max_epoch > epoch), lut[-1][1])


@pytest.mark.parametrize("preset, lut, epochs", [
    ("", ROTNET_IMAGENET_LUT, (0, 7, 14, 15, 29, 30, 44, 45, 49)),
    ("cifar10", ROTNET_CIFAR_LUT, (0, 59, 60, 119, 120, 159, 160, 199)),
])
def test_rotnet_learning_rate_follows_the_lut_every_epoch(preset, lut, epochs):
    cfg = load_config("rotation_resnet50", preset)
    steps_per_epoch = 7
    schedules = optim.build_schedules(cfg.optim, cfg.num_epochs * steps_per_epoch, steps_per_epoch, cfg.batch_size)
    for epoch in epochs:
        for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
            assert float(schedules.learning_rate(step)) == pytest.approx(lut_lr(lut, epoch), rel=1e-5), (epoch, step)


# ----------------------------------------------------------------------------- weight decay / LARS

def built_params(cfg):
    """Params of the recipe's ResNet (ResNet-10, width 8) and its projector (tiny widths)."""
    model_cfg = cfg.model.copy_and_resolve_references()
    model_cfg.update({"depth": 10, "width": 8})
    params = {"backbone": build_backbone(model_cfg).init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)))["params"]}
    if "projector" in cfg.method:
        head_cfg = cfg.method.projector.copy_and_resolve_references()
        head_cfg.update({"hidden_dim": 8, "out_dim": 4})
        params["projector"] = projection_mlp(head_cfg).init(jax.random.key(1), jnp.zeros((2, 64)),
                                                            train=True)["params"]
    return params


def excluded_by_reference(rule: str, path: str) -> bool:
    """The references' exclusion from weight decay and LARS adaptation, by parameter name:
    SimCLR `exclude_from_weight_decay=['batch_normalization', 'bias']` (lars_optimizer.py,
    also its layer-adaptation list); BYOL `exclude_bias_and_norm` ('batchnorm' in the module
    name or the bias `b`); the PyTorch SGD / LARC recipes decay every parameter."""
    module, leaf = path.rsplit("/", 1)
    is_norm = "bn" in module.split("/")[-1] or "BatchNorm" in module
    if rule == "bn_and_bias":
        return is_norm or leaf == "bias"
    assert rule == "none"
    return False


@pytest.mark.parametrize("config, rule", [
    ("simclr_resnet50", "bn_and_bias"),
    ("byol_resnet50", "bn_and_bias"),
    ("simsiam_resnet50", "none"),  # torch SGD(weight_decay=--wd) on model.parameters()
    ("swav_resnet50", "none"),  # LARC over SGD(weight_decay=--wd) on model.parameters()
    ("rotation_resnet50", "none"),
    ("sla_resnet", "none"),
    ("suave_resnet50", "none"),  # utils.LARS(exclude_bias_n_norm=False)
])
def test_weight_decay_and_lars_exclusions_follow_the_reference(config, rule):
    cfg = load_config(config)
    params = built_params(cfg)
    schedules = optim.Schedules(lambda step: 1.0, lambda step: 0.1, None, 1.0)
    tx = optim.build_optimizer(cfg.optim, schedules, params, steps_per_epoch=10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    # BN biases start at 0, so decay would not move them: give every parameter a non-zero value.
    params = jax.tree.map(lambda p: p + 0.5, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        name = path_name(path)
        moved = bool(np.abs(np.asarray(update)).max() > 0)
        assert moved == (not excluded_by_reference(rule, name)), name
