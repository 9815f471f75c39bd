"""ViT initialisation of every family against its official code's formulas.

Each case builds the real ViT-S width (D = 384, MLP 1536, 16 px patches: fan-in 768) with two
blocks on a 2 x 2 patch grid, and checks every parameter's distribution against the formula the
reference's init code states (docs/FIDELITY.md (_vit_init) cites them):
  * ("normal", s): std within 5 % of s (a looser bound for tensors under ~2000 values), mean
    ~0, and tails past 3 s (timm's `trunc_normal_(std=.02)` cuts at +-2, i.e. 100 s, so it is a
    normal; a truncation at 2 s, flax's `truncated_normal`, fails);
  * ("uniform", b): every value in [-b, b], the largest within 1 % of b, std b / sqrt(3) within 5 %;
  * ("const", c): every value c.
The numbers below are written from the references, never from ssl_jax's output.
"""
from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.errors import UserError
from ssl_jax.models.vit import VisionTransformer, sincos_pos_embed, vit

D, MLP, P, DEPTH = 384, 1536, 16, 2
FAN_PATCH = 3 * P * P  # 768
TORCH_DEFAULT = ("uniform", 1 / math.sqrt(FAN_PATCH))  # nn.Conv2d's default weight and bias bound
XAVIER = lambda fan_in, fan_out: ("uniform", math.sqrt(6 / (fan_in + fan_out)))  # noqa: E731
N02 = ("normal", 0.02)


def dino_like(cls=N02, pos=N02, registers=None, **overrides):
    """DINO's VisionTransformer: Linear trunc_normal(.02) bias 0, LayerNorm 1 / 0, cls and pos
    trunc_normal(.02), the patch Conv2d left at PyTorch's default (weight and bias). cls, pos,
    registers None: the model has no such parameter."""
    want = {"patch_embed/kernel": TORCH_DEFAULT, "patch_embed/bias": TORCH_DEFAULT,
            "norm/scale": ("const", 1.0), "norm/bias": ("const", 0.0)}
    for name, spec in (("cls_token", cls), ("pos_embed", pos), ("register_tokens", registers)):
        if spec:
            want[name] = spec
    for layer in range(1, DEPTH + 1):
        for name in ("attn/qkv", "attn/proj", "fc1", "fc2"):
            want[f"blocks_{layer - 1}/{name}/kernel"] = N02
            want[f"blocks_{layer - 1}/{name}/bias"] = ("const", 0.0)
        for name in ("norm1", "norm2"):
            want[f"blocks_{layer - 1}/{name}/scale"] = ("const", 1.0)
            want[f"blocks_{layer - 1}/{name}/bias"] = ("const", 0.0)
    want.update(overrides)
    return want


def per_block(fn):
    """{blocks_{l-1}/<name>/kernel: fn(l, name)} for the four Linears of every block (l 1-based)."""
    return {f"blocks_{layer - 1}/{name}/kernel": fn(layer, name) for layer in range(1, DEPTH + 1)
            for name in ("attn/qkv", "attn/proj", "fc1", "fc2")}


def xavier_block(layer, name, qkv_fan_out):
    fans = {"attn/qkv": (D, qkv_fan_out), "attn/proj": (D, D), "fc1": (D, MLP), "fc2": (MLP, D)}
    return XAVIER(*fans[name])


def beit_block(layer, name):
    """BEiT's fix_init_weight: attn.proj and mlp.fc2 of block `layer` divided by sqrt(2 layer)."""
    return ("normal", 0.02 / math.sqrt(2 * layer)) if name in ("attn/proj", "fc2") else N02


CASES = {
    # (model kwargs, expected distributions)
    "dino": ({}, dino_like()),
    # dinov2 init_weights: cls_token normal(1e-6), register_tokens normal(1e-6), pos trunc_normal(.02).
    "dinov2": ({"num_register_tokens": 4}, dino_like(cls=("normal", 1e-6), registers=("normal", 1e-6))),
    # SiT: rot_token trunc_normal(.02) (ssl_jax's register).
    "sit": ({"num_register_tokens": 1}, dino_like(registers=N02)),
    # MAE initialize_weights: xavier_uniform on every Linear (qkv as one [3D, D] matrix) and on the
    # patch weight viewed [D, 3 p p]; its bias keeps Conv2d's default; cls normal(.02); fixed sin-cos.
    "mae": ({"pos_embed": "sincos"},
            {**dino_like(pos=None, **per_block(lambda l, n: xavier_block(l, n, 3 * D))),
             "patch_embed/kernel": XAVIER(FAN_PATCH, D)}),
    # MoCo v3 vits.py: qkv uniform(+-sqrt(6 / (3D/3 + D))), other Linears xavier_uniform, bias 0;
    # patch weight uniform(+-sqrt(6 / (3 p p + D))) (~0.072), bias 0; cls normal(1e-6).
    "mocov3": ({"pos_embed": "sincos", "num_heads": 12},
               {**dino_like(cls=("normal", 1e-6), pos=None, **per_block(lambda l, n: xavier_block(l, n, D))),
                "patch_embed/kernel": ("uniform", math.sqrt(6 / (3 * P * P + D))),
                "patch_embed/bias": ("const", 0.0)}),
    # I-JEPA: trunc_normal(.02) on Linear and Conv2d, biases 0, fix_init_weight; no [CLS].
    "ijepa": ({"pos_embed": "sincos", "class_token": False},
              {**dino_like(cls=None, pos=None, **per_block(beit_block)), "patch_embed/kernel": N02,
               "patch_embed/bias": ("const", 0.0)}),
    # SimMIM (BEiT): the same, with cls and pos trunc_normal(.02) and the mask token trunc_normal(.02).
    "simmim": ({"mask_token": "trunc_normal"},
               {**dino_like(**per_block(beit_block)), "patch_embed/kernel": N02,
                "patch_embed/bias": ("const", 0.0), "mask_token": N02}),
}


def check(path, value, spec):
    value = np.asarray(value, np.float64).ravel()
    kind, x = spec
    if kind == "const":
        np.testing.assert_array_equal(value, x, err_msg=path)
        return
    tol = max(0.05, 4 / math.sqrt(2 * value.size))  # the std estimate's relative error is ~1/sqrt(2n)
    if kind == "normal":
        assert abs(value.std() / x - 1) < tol, (path, value.std(), x)
        assert abs(value.mean()) < 4 * x / math.sqrt(value.size), (path, value.mean())
        if value.size > 100_000:  # P(|z| > 3) = 0.27 %: hundreds of such values
            assert np.abs(value).max() > 3 * x, (path, "tails cut", np.abs(value).max() / x)
    else:
        assert np.abs(value).max() <= x * (1 + 1e-6), (path, np.abs(value).max(), x)
        assert np.abs(value).max() > 0.99 * x, (path, np.abs(value).max(), x)
        assert abs(value.std() / (x / math.sqrt(3)) - 1) < tol, (path, value.std(), x / math.sqrt(3))


@pytest.mark.parametrize("scheme", sorted(CASES))
def test_vit_init_matches_the_reference_formulas(scheme):
    kwargs, want = CASES[scheme]
    kwargs = {"num_heads": 6, **kwargs}
    model = vit("custom", img_size=2 * P, patch_size=P, embed_dim=D, depth=DEPTH, **kwargs, init=scheme)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2 * P, 2 * P, 3)))["params"]
    got = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}
    assert sorted(got) == sorted(want)
    for path, spec in want.items():
        check(path, got[path], spec)


def flat_params(module, *inputs):
    params = jax.jit(module.init)(jax.random.key(1), *inputs)["params"]
    return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}


def test_mae_decoder_and_ijepa_predictor_follow_their_references():
    """MAE `_init_weights` covers the decoder (xavier-uniform Linears, decoder width 512); I-JEPA's
    `VisionTransformerPredictor` has trunc_normal(.02) Linears and its own `fix_init_weight`."""
    from ssl_jax.models.mim_heads import JEPAPredictor, MAEDecoder

    e = 512
    got = flat_params(MAEDecoder(grid_hw=(2, 2), patch_dim=FAN_PATCH, embed_dim=e, depth=DEPTH, num_heads=16),
                      jnp.zeros((1, 2, D)), jnp.arange(4)[None])
    fans = {"attn/qkv": (e, 3 * e), "attn/proj": (e, e), "fc1": (e, 4 * e), "fc2": (4 * e, e)}
    want = {"decoder_embed/kernel": XAVIER(D, e), "decoder_pred/kernel": XAVIER(e, FAN_PATCH), "mask_token": N02}
    want.update({f"decoder_blocks_{i}/{name}/kernel": XAVIER(*fan) for i in range(DEPTH) for name, fan in fans.items()})
    for path, spec in want.items():
        check(path, got[path], spec)

    got = flat_params(JEPAPredictor(grid_hw=(2, 2), out_dim=D, embed_dim=D, depth=DEPTH, num_heads=12),
                      jnp.zeros((1, 1, D)), jnp.zeros((1, 1), int), jnp.ones((1, 1), bool), jnp.ones((1, 1, 1), int),
                      jnp.ones((1, 1, 1), bool))
    want = {"predictor_embed/kernel": N02, "predictor_proj/kernel": N02, "mask_token": N02}
    want.update({k.replace("blocks_", "predictor_blocks_"): v for k, v in per_block(beit_block).items()})
    for path, spec in want.items():
        check(path, got[path], spec)


def np_mae_sincos(grid, dim):
    """MAE util/pos_embed.py get_2d_sincos_pos_embed(dim, grid, cls_token=True) (I-JEPA's is the same)."""
    grid_w, grid_h = np.arange(grid, dtype=float), np.arange(grid, dtype=float)
    mesh = np.stack(np.meshgrid(grid_w, grid_h)).reshape(2, 1, grid, grid)  # here w goes first

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb])


@pytest.mark.parametrize("scheme", ["mae", "ijepa"])
def test_mae_and_ijepa_sincos_put_the_column_first(scheme):
    """The table itself, and the one the encoder adds: with a zero patch projection, the first
    block's LayerNorm sees only [CLS] + position (MAE), or the positions alone (I-JEPA)."""
    np.testing.assert_allclose(np.asarray(sincos_pos_embed((4, 4), 16, width_first=True))[0], np_mae_sincos(4, 16),
                               atol=1e-6)
    class_token = scheme == "mae"
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, pos_embed="sincos",
                              class_token=class_token, init_scheme=scheme)
    params = dict(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
    params["patch_embed"] = jax.tree.map(jnp.zeros_like, params["patch_embed"])
    _, state = model.apply({"params": params}, jnp.ones((1, 16, 16, 3)), method="tokens", capture_intermediates=True)
    normed = np.asarray(state["intermediates"]["blocks_0"]["norm1"]["__call__"][0])[0]
    tokens = np_mae_sincos(4, 16)
    if class_token:
        tokens[0] = np.asarray(params["cls_token"])[0, 0]
    else:
        tokens = tokens[1:]
    want = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(tokens.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normed, want, atol=1e-4)


def test_mocov3_config_builds_vit_small_with_12_heads_and_its_init():
    """configs/mocov3_vit_small.py: vits.py vit_small is 384 wide with 12 heads (32 wide)."""
    import importlib.util

    from ssl_jax.models.backbones import build_backbone

    spec = importlib.util.spec_from_file_location("mocov3_config", "configs/mocov3_vit_small.py")
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    config = config_module.get_config()
    module = build_backbone(config.model)
    assert (module.embed_dim, module.depth, module.num_heads) == (384, 12, 12)
    assert module.init_scheme == "mocov3" and module.pos_embed == "sincos"


def test_unknown_init_is_one_clear_error():
    with pytest.raises(UserError, match="config.model.init"):
        vit("small", img_size=224, patch_size=16, init="beit")
