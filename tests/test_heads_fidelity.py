"""The heads of every method as built from its config's paper preset: which parameters exist
(biases, BatchNorm scale/shift) and their init statistics, against the reference code.

Formulas (derived here, not read off ssl_jax):
  torch.nn.Linear default (kaiming_uniform(a=sqrt(5)); bias likewise): U(-b, b), b = 1/sqrt(fan_in),
      std b/sqrt(3);
  haiku.Linear default: TruncatedNormal(stddev=1/sqrt(fan_in)) = a standard normal cut at +-2
      times the stddev, std = TRUNC2_STD/sqrt(fan_in), |w| <= 2/sqrt(fan_in), bias 0;
  tf.random_normal_initializer(stddev=.01) (SimCLR), bias 0;
  torch trunc_normal_(std=.02) with the absolute cut +-2 (= +-100 std; DINO, iBOT, DINOv2
      `_init_weights`): std .02, bias 0.
Sources are cited per config below; docs/FIDELITY.md (_heads) has the table. Input, output and
bottleneck widths are the real ones; hidden widths are cut to 512 and prototype counts to 4096
(compile-free eager init on 2 cores; every formula depends on the layer's own fan_in only).
"""
from __future__ import annotations

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods import build_method

# Std of N(0, 1) truncated to [-2, 2]: sqrt(1 - 2 c phi(c) / (Phi(c) - Phi(-c))) at c = 2.
_C = 2.0
TRUNC2_STD = math.sqrt(1 - 2 * _C * math.exp(-_C ** 2 / 2) / math.sqrt(2 * math.pi) / math.erf(_C / math.sqrt(2)))


def load_config(name: str):
    return importlib.import_module(f"configs.{name}").get_config("imagenet")


def assert_close_std(x: np.ndarray, expected: float, what: str):
    std = float(np.std(np.asarray(x, np.float64)))
    assert abs(std / expected - 1) < 0.05, f"{what}: std {std:.5g}, reference {expected:.5g}"


def assert_linear_init(layer: dict, scheme: str, fan_in: int, what: str):
    """A Dense's kernel (and bias, if any) against the reference's init formula."""
    kernel = np.asarray(layer["kernel"], np.float64)
    assert kernel.shape[0] == fan_in, what
    assert abs(float(kernel.mean())) < 0.1 * float(kernel.std()), what
    bias = None if "bias" not in layer else np.asarray(layer["bias"], np.float64)
    if scheme == "torch":
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(kernel).max() <= bound, what
        assert_close_std(kernel, bound / math.sqrt(3), what)
        if bias is not None:  # U(-bound, bound): inside, and reaching close to it
            assert bound >= np.abs(bias).max() >= 0.9 * bound, what
        return
    if scheme == "haiku":
        assert np.abs(kernel).max() <= 2 / math.sqrt(fan_in), what
        assert_close_std(kernel, TRUNC2_STD / math.sqrt(fan_in), what)
    else:
        assert_close_std(kernel, {"normal_0.01": 0.01, "normal_0.02": 0.02}[scheme], what)
    if bias is not None:
        np.testing.assert_array_equal(bias, 0.0, err_msg=what)


# ----------------------------------------------------------------------------- projector / predictor MLPs

HIDDEN = 512
K, KB = {"kernel"}, {"kernel", "bias"}
BN, BN_SCALE = {"scale", "bias"}, {"scale"}

# config -> module -> (input width, init, {layer: params it has}, layers with BatchNorm statistics).
# A BatchNorm without affine parameters has statistics but no params.
MLPS = {
    # deepmind-research byol/utils/networks.py MLP: hk.Linear(4096, with_bias=True) -> hk.BatchNorm
    # (create_scale/offset) -> relu -> hk.Linear(256, with_bias=False). The bias before the BN is
    # cancelled by it (absent here). ResNet-50 features: 2048; predictor input: the 256-d projection.
    "byol_resnet50": {
        "projector": (2048, "haiku", {"linear_0": K, "bn_0": BN, "linear_1": K}, {"bn_0"}),
        "predictor": (256, "haiku", {"linear_0": K, "bn_0": BN, "linear_1": K}, {"bn_0"}),
    },
    # moco-v3 moco/builder.py MoCo_ViT: _build_mlp(3, 384, 4096, 256) and _build_mlp(2, 256, 4096, 256),
    # last_bn=True: Linear(bias=False) [-> BN -> ReLU], the last one -> BatchNorm1d(affine=False).
    "mocov3_vit_small": {
        "projector": (384, "torch", {"linear_0": K, "bn_0": BN, "linear_1": K, "bn_1": BN, "linear_2": K},
                      {"bn_0", "bn_1", "bn_2"}),
        "predictor": (256, "torch", {"linear_0": K, "bn_0": BN, "linear_1": K}, {"bn_0", "bn_1"}),
    },
    # google-research/simclr model_util.py projection_head/linear_layer: dense(use_bias=False) ->
    # batch_norm_relu(center=True) -> relu -> dense(use_bias=False) -> batch_norm_relu(center=False).
    "simclr_resnet50": {
        "projector": (2048, "normal_0.01", {"linear_0": K, "bn_0": BN, "linear_1": K, "bn_1": BN_SCALE},
                      {"bn_0", "bn_1"}),
    },
    # facebookresearch/simsiam simsiam/builder.py: 3 x Linear(2048, bias=False) + BN, the last
    # BatchNorm1d(affine=False) (fc's bias frozen, cancelled); predictor Linear(2048, 512, bias=False)
    # -> BN -> ReLU -> Linear(512, 2048) with bias.
    "simsiam_resnet50": {
        "projector": (2048, "torch", {"linear_0": K, "bn_0": BN, "linear_1": K, "bn_1": BN, "linear_2": K},
                      {"bn_0", "bn_1", "bn_2"}),
        "predictor": (2048, "torch", {"linear_0": K, "bn_0": BN, "linear_1": KB}, {"bn_0"}),
    },
    # facebookresearch/swav src/resnet50.py projection_head: Linear(2048, 2048) -> BatchNorm1d -> ReLU
    # -> Linear(2048, 128) with bias (the first Linear's bias is cancelled by the BN).
    "swav_resnet50": {
        "projector": (2048, "torch", {"linear_0": K, "bn_0": BN, "linear_1": KB}, {"bn_0"}),
    },
}


@pytest.mark.parametrize("config_name,module", [(c, m) for c, mods in MLPS.items() for m in mods])
def test_projection_mlp_params_and_init_follow_the_reference(config_name, module):
    in_dim, scheme, layers, stats = MLPS[config_name][module]
    config = load_config(config_name)
    config.method[module].hidden_dim = min(config.method[module].hidden_dim, HIDDEN)
    method = build_method(config, steps_per_epoch=10)
    variables = method.network.modules[module].init(jax.random.key(1), jnp.zeros((2, in_dim)))
    params = jax.tree.map(np.asarray, variables["params"])
    assert {name: set(p) for name, p in params.items()} == layers
    assert set(variables.get("batch_stats", {})) == stats
    fan_in = in_dim
    for name in sorted(n for n in layers if n.startswith("linear_")):
        assert_linear_init(params[name], scheme, fan_in, f"{config_name} {module}/{name}")
        fan_in = params[name]["kernel"].shape[1]
    for name in (n for n in layers if n.startswith("bn_")):
        np.testing.assert_array_equal(params[name]["scale"], 1.0)
        if "bias" in params[name]:
            np.testing.assert_array_equal(params[name]["bias"], 0.0)


# ----------------------------------------------------------------------------- DINO-family heads

# config -> (norm_last_layer: is `g` fixed, i.e. not a parameter; the head param trees' names).
# DINO main_dino.py --norm_last_layer True (ViT-S); iBOT README --norm_last_layer false, shared head;
# DINOv2 dinov2/layers/dino_head.py never freezes weight_g; the ImageNet-1k recipe (vitl16_short.yaml)
# shares dino_head with the patches (ibot.separate_head false), vitl14.yaml unties an ibot_head;
# Daino: DINO's head with one prototype per class.
DINO_HEADS = {
    "dino_small": (True, {"head": ("last_layer",)}),
    "ibot_small": (False, {"head": ("last_layer",)}),
    "dinov2_small": (False, {"dino_head": ("last_layer",)}),
    "daino_small": (False, {"head": ("last_layer",)}),  # train_10perc.sh --norm_last_layer false
}


@pytest.mark.parametrize("config_name", list(DINO_HEADS))
def test_dino_family_head_init_follows_the_reference(config_name):
    """MLP Linears trunc_normal(.02) with zero biases, GELU MLP ending in the bottleneck Linear;
    the weight-normalised last layer bias-free with torch.nn.Linear's default direction
    U(-1/sqrt(256), 1/sqrt(256)) (it is built after `self.apply(self._init_weights)`), g = 1."""
    fixed_g, heads = DINO_HEADS[config_name]
    config = load_config(config_name)
    if config.method.get("separate_head"):
        heads = {**heads, "ibot_head": ("last_layer",)}
    for field, size in (("out_dim", 4096), ("ibot_out_dim", 4096), ("patch_out_dim", 4096),
                        ("head_hidden_dim", HIDDEN), ("ibot_head_hidden_dim", HIDDEN)):
        if field in config.method:
            config.method[field] = min(config.method[field], size)
    method = build_method(config, steps_per_epoch=10)
    features = jnp.zeros((1, 384))  # ViT-S
    if hasattr(method, "init_heads"):
        params = method.init_heads(jax.random.key(2), features)
    else:
        params = {"head": method.head.init(jax.random.key(2), features)["params"]}
    params = jax.tree.map(np.asarray, params)
    assert set(params) == set(heads)
    for head, last_layers in heads.items():
        mlp = params[head]["mlp"]
        assert [set(mlp[f"mlp_{i}"]) for i in range(3)] == [KB, KB, KB]  # nlayers 3, biases
        fan_in = 384
        for i, width in enumerate((HIDDEN, HIDDEN, 256)):  # 3 layers, bottleneck_dim 256
            assert mlp[f"mlp_{i}"]["kernel"].shape == (fan_in, width)
            assert_linear_init(mlp[f"mlp_{i}"], "normal_0.02", fan_in, f"{config_name} {head}/mlp_{i}")
            fan_in = width
        assert set(params[head]) == {"mlp", *last_layers}
        for name in last_layers:
            last = params[head][name]
            assert set(last) == ({"v"} if fixed_g else {"v", "g"})  # no bias
            assert_linear_init({"kernel": last["v"]}, "torch", 256, f"{config_name} {head}/{name}")
            if not fixed_g:
                np.testing.assert_array_equal(last["g"], 1.0)
