"""Tests for the model pieces (ViT, heads, ResNet, projection MLPs) and the DINO method.

Covers ssl_jax.models.vit (position-embedding interpolation, ViT forward against a
float64 numpy re-implementation of DINO's `vision_transformer.py`, shapes at two
resolutions, stochastic depth), ssl_jax.models.heads (`WeightNormDense`, `DINOHead`
against numpy), ssl_jax.models.multicrop.apply_per_resolution, and
ssl_jax.methods.dino.DINO end to end on the `smoke` config (init, loss against the
numpy DINOLoss on logits from the numpy ViT and head, gradients, centre update,
stochastic depth in the student only).
Shapes are tiny: 2 shared CPU cores.
"""
from __future__ import annotations

import functools
import math

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.dino_small import get_config
from ssl_jax.core.batch import example_batch
from ssl_jax.methods.dino import DINO
from ssl_jax.models.heads import DINOHead, WeightNormDense
from ssl_jax.models.multicrop import apply_per_resolution
from ssl_jax.models.vit import DropPath, VisionTransformer, interpolate_pos_embed

_erf = np.vectorize(math.erf)


# ----------------------------------------------------------------------------- numpy references

def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_dense(x, p):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def to64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_vit(params, images, patch_size, num_heads):
    """vision_transformer.py VisionTransformer.forward (no drop-path), native resolution.

    PatchEmbed is Conv2d(k=p, stride=p) then flatten(2).transpose(1, 2): tokens in
    row-major patch order, each the dot product of one p x p patch with the filter.
    """
    params = to64(params)
    images = np.asarray(images, np.float64)
    b, h, w, c = images.shape
    gh, gw = h // patch_size, w // patch_size
    tokens = []
    for r in range(gh):
        for col in range(gw):
            patch = images[:, r * patch_size:(r + 1) * patch_size, col * patch_size:(col + 1) * patch_size, :]
            tokens.append(np_dense(patch.reshape(b, -1), params["patch_embed"]))
    x = np.stack(tokens, axis=1)
    dim = x.shape[-1]
    x = np.concatenate([np.broadcast_to(params["cls_token"], (b, 1, dim)), x], axis=1) + params["pos_embed"]
    head_dim = dim // num_heads
    i = 0
    while f"blocks_{i}" in params:
        blk = params[f"blocks_{i}"]
        y = np_layer_norm(x, blk["norm1"])
        n = y.shape[1]
        # timm Attention: qkv(x).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        qkv = np_dense(y, blk["attn"]["qkv"]).reshape(b, n, 3, num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = np_softmax(q @ k.transpose(0, 1, 3, 2) * head_dim ** -0.5)
        y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, dim)
        x = x + np_dense(y, blk["attn"]["proj"])
        y = np_dense(np_gelu(np_dense(np_layer_norm(x, blk["norm2"]), blk["fc1"])), blk["fc2"])
        x = x + y
        i += 1
    return np_layer_norm(x, params["norm"])[:, 0]


def np_weight_norm_dense(x, v, g=None):
    """weight_norm(Linear(bias=False)): W = g * v / ||v|| with the norm over the inputs."""
    v = np.asarray(v, np.float64)
    w = v / np.linalg.norm(v, axis=0, keepdims=True)
    if g is not None:
        w = w * np.asarray(g, np.float64)
    return np.asarray(x, np.float64) @ w


def np_dino_head(params, x):
    """DINOHead.forward: mlp -> F.normalize(dim=-1, p=2) -> last_layer."""
    params = to64(params)
    x = np.asarray(x, np.float64)
    mlp = params["mlp"]
    num = len(mlp)
    for i in range(num):
        x = np_dense(x, mlp[f"mlp_{i}"])
        if i < num - 1:
            x = np_gelu(x)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np_weight_norm_dense(x, params["last_layer"]["v"], params["last_layer"].get("g"))


def np_dino_loss(student, teacher, center, student_temp, teacher_temp):
    """DINOLoss.forward on [B, V, K] logits (see tests/test_losses.py for the layout)."""
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    q = np_softmax((teacher - np.asarray(center, np.float64)) / teacher_temp)
    log_p = np_log_softmax(student / student_temp)
    total, terms = 0.0, 0
    for iq in range(q.shape[1]):
        for v in range(log_p.shape[1]):
            if v == iq:
                continue
            total += np.sum(-q[:, iq] * log_p[:, v], axis=-1).mean()
            terms += 1
    return total / terms


# ----------------------------------------------------------------------------- interpolate_pos_embed

GRIDS = [(2, 2), (6, 6), (3, 6)]  # down-sampling (local crops), up-sampling, non-square
_interpolate = jax.jit(interpolate_pos_embed, static_argnums=1)


def _structured_pos_embed():
    """[1, 1 + 4*4, 6]: channel 0 = row index, 1 = column index, 2-3 constant, 4-5 random."""
    rng = np.random.RandomState(1)
    side = 4
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    grid = np.stack([rows, cols, np.full((side, side), 0.7), np.full((side, side), -2.0),
                     rng.randn(side, side), rng.randn(side, side)], axis=-1).astype(np.float32)
    cls = rng.randn(1, 1, 6).astype(np.float32)
    return jnp.asarray(np.concatenate([cls, grid.reshape(1, side * side, 6)], axis=1))


def test_interpolate_pos_embed_is_identity_for_the_native_grid():
    pos = _structured_pos_embed()
    np.testing.assert_array_equal(np.asarray(interpolate_pos_embed(pos, (4, 4))), np.asarray(pos))


@pytest.mark.parametrize("grid", GRIDS)
def test_interpolate_pos_embed_shape_and_untouched_cls(grid):
    pos = _structured_pos_embed()
    out = np.asarray(_interpolate(pos, grid))
    assert out.shape == (1, 1 + grid[0] * grid[1], 6)
    np.testing.assert_array_equal(out[:, 0], np.asarray(pos)[:, 0])
    assert not np.allclose(out[0, 1:, 4], out[0, 1, 4])  # the random channel is not flattened


@pytest.mark.parametrize("grid", GRIDS)
def test_interpolate_pos_embed_keeps_a_constant_grid_constant(grid):
    out = np.asarray(_interpolate(_structured_pos_embed(), grid))[0, 1:]
    np.testing.assert_allclose(out[:, 2], 0.7, rtol=1e-5)
    np.testing.assert_allclose(out[:, 3], -2.0, rtol=1e-5)


@pytest.mark.parametrize("grid", GRIDS)
def test_interpolate_pos_embed_keeps_linear_ramps_monotone_along_their_axis(grid):
    out = np.asarray(_interpolate(_structured_pos_embed(), grid))[0, 1:].reshape(grid[0], grid[1], 6)
    rows, cols = out[..., 0], out[..., 1]
    assert np.all(np.diff(rows, axis=0) > 0), rows  # increasing down the rows ...
    np.testing.assert_allclose(rows, np.broadcast_to(rows[:, :1], rows.shape), atol=1e-5)  # ... flat along them
    assert np.all(np.diff(cols, axis=1) > 0), cols
    np.testing.assert_allclose(cols, np.broadcast_to(cols[:1], cols.shape), atol=1e-5)
    for ramp in (rows, cols):  # within the range of the original pixel centres, up to cubic overshoot
        assert ramp.min() >= -0.5 and ramp.max() <= 3.5


def test_interpolate_pos_embed_rejects_non_square_pos_embed():
    with pytest.raises(ValueError):
        interpolate_pos_embed(jnp.zeros((1, 1 + 12, 4)), (2, 2))


# ----------------------------------------------------------------------------- ViT

VIT_KW = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
VIT_BATCH = 4


@pytest.fixture(scope="module")
def vit_and_params():
    """Random parameters of every shape `init` creates (init itself costs a compile on 2 cores);
    random biases/norm scales too, so that every parameter matters."""
    model = VisionTransformer(**VIT_KW, drop_path_rate=0.5)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.randn(*s.shape), s.dtype), shapes)
    params["norm"]["scale"] = params["norm"]["scale"] + 1.0
    return model, params


@pytest.fixture(scope="module")
def vit_apply(vit_and_params):
    model, _ = vit_and_params

    @functools.partial(jax.jit, static_argnames=("train", "method", "capture"))
    def apply(params, images, key=None, train=False, method="__call__", capture=False):
        rngs = {"drop_path": key} if key is not None else None
        return model.apply({"params": params}, images, train, method=method, rngs=rngs, capture_intermediates=capture)

    return apply


def _images(seed, size, batch=VIT_BATCH):
    return jnp.asarray(np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32))


def test_vit_forward_matches_numpy_vision_transformer(vit_and_params, vit_apply):
    _, params = vit_and_params
    images = _images(1, 32)
    got = np.asarray(vit_apply(params, images))
    assert got.shape == (VIT_BATCH, 16)
    want = np_vit(params, images, patch_size=8, num_heads=2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_vit_entry_points_agree_and_patch_grid_order(vit_and_params, vit_apply):
    """block_outputs shapes at 32 px; the pooled output is [CLS] of `tokens`, and the final norm
    of the last block output (`intermediate_layers`); changing the pixels of patch (row 1, col 2)
    changes only patch token 1*4 + 2 of the patch embedding (row-major grid, as Conv2d + flatten(2))."""
    model, params = vit_and_params
    images = _images(4, 32)
    (tokens, attn), state = vit_apply(params, images, method="block_outputs", capture=True)
    assert tokens.shape == (2, VIT_BATCH, 17, 16)
    assert attn.shape == (2, VIT_BATCH, 2, 17, 17)
    np.testing.assert_allclose(np.asarray(attn).sum(-1), 1.0, rtol=1e-5)
    pooled = np.asarray(vit_apply(params, images))
    np.testing.assert_allclose(np.asarray(vit_apply(params, images, method="tokens"))[:, 0], pooled, rtol=1e-5,
                               atol=1e-6)
    last, = model.apply({"params": params}, images, 1, method="intermediate_layers")
    np.testing.assert_allclose(np.asarray(last)[:, 0], pooled, rtol=1e-5, atol=1e-6)
    normed = np_layer_norm(np.float64(tokens[-1]), jax.tree.map(np.float64, params["norm"]))
    np.testing.assert_allclose(np.asarray(last), normed, rtol=1e-4, atol=1e-5)

    changed = np.asarray(images).copy()
    changed[:, 8:16, 16:24, :] += 1.0
    _, changed_state = vit_apply(params, jnp.asarray(changed), method="block_outputs", capture=True)
    tokens = lambda st: np.asarray(st["intermediates"]["patch_embed"]["__call__"][0])  # noqa: E731
    diff = np.abs(tokens(changed_state) - tokens(state)).max(axis=(0, 2))
    assert diff.shape == (16,)
    assert diff[6] > 0 and np.all(np.delete(diff, 6) == 0)


def test_vit_16px_input_uses_interpolated_pos_embed_with_the_same_params(vit_and_params, vit_apply):
    """16 px: 2x2 patches; equals the numpy ViT whose pos_embed is interpolate_pos_embed(., (2, 2))."""
    _, params = vit_and_params
    images = _images(3, 16)
    tokens, attn = vit_apply(params, images, method="block_outputs")
    assert tokens.shape == (2, VIT_BATCH, 5, 16)
    assert attn.shape == (2, VIT_BATCH, 2, 5, 5)
    got = np.asarray(vit_apply(params, images))
    assert got.shape == (VIT_BATCH, 16)
    small = dict(params)
    small["pos_embed"] = interpolate_pos_embed(params["pos_embed"], (2, 2))
    np.testing.assert_allclose(got, np_vit(small, images, patch_size=8, num_heads=2), rtol=1e-4, atol=1e-5)
    # ... and not the native embedding truncated to 5 tokens.
    truncated = dict(params)
    truncated["pos_embed"] = params["pos_embed"][:, :5]
    assert not np.allclose(got, np_vit(truncated, images, patch_size=8, num_heads=2), atol=1e-3)


def test_vit_eval_mode_is_deterministic_and_drop_path_acts_only_in_training(vit_and_params, vit_apply):
    _, params = vit_and_params
    images = _images(5, 32)
    eval_out = np.asarray(vit_apply(params, images))
    np.testing.assert_array_equal(np.asarray(vit_apply(params, images)), eval_out)

    train = lambda seed: np.asarray(vit_apply(params, images, jax.random.key(seed), train=True))  # noqa: E731
    t1, t1_again, t2 = train(1), train(1), train(2)
    np.testing.assert_array_equal(t1, t1_again)  # a function of the rng
    assert not np.allclose(t1, t2)  # ... that matters (rate 0.5 on block 1)
    assert not np.allclose(t1, eval_out)


def test_vit_cls_only_last_block_equals_the_full_computation_in_value_and_gradient(vit_and_params):
    """When only [CLS] is read, the last block computes [CLS] alone (one query row, MLP on one
    token): its output and every parameter gradient equal those of [CLS] taken from the full
    token output, in training mode with drop path."""
    model, params = vit_and_params
    images = _images(6, 32)
    rngs = {"drop_path": jax.random.key(3)}

    def cls_loss(p, full):
        out = model.apply({"params": p}, images, True, method="tokens" if full else "__call__", rngs=rngs)
        cls = out[:, 0] if full else out
        return jnp.sum(jnp.sin(3.0 * cls)), cls

    (_, trimmed), trimmed_grads = jax.value_and_grad(cls_loss, has_aux=True)(params, False)
    (_, full), full_grads = jax.value_and_grad(cls_loss, has_aux=True)(params, True)
    np.testing.assert_allclose(np.asarray(trimmed), np.asarray(full), rtol=1e-5, atol=1e-6)
    for path, got in jax.tree_util.tree_leaves_with_path(trimmed_grads):
        want = functools.reduce(lambda node, key: node[key.key], path, full_grads)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5, err_msg=str(path))
    assert np.abs(np.asarray(trimmed_grads["blocks_1"]["fc1"]["kernel"])).max() > 0


def test_drop_path_drops_whole_samples_and_rescales_the_kept_ones():
    """timm drop_path: x / keep_prob * bernoulli(keep_prob) per sample."""
    layer = DropPath(0.5)
    x = jnp.asarray(np.random.RandomState(6).rand(64, 3, 2).astype(np.float32) + 0.5)
    out = np.asarray(jax.jit(lambda x, key: layer.apply({}, x, deterministic=False, rngs={"drop_path": key}))(
        x, jax.random.key(0)))
    kept = np.all(out != 0, axis=(1, 2))
    dropped = np.all(out == 0, axis=(1, 2))
    assert np.all(kept | dropped)
    assert 10 < kept.sum() < 54
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / 0.5, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x, deterministic=True)), np.asarray(x))


# ----------------------------------------------------------------------------- heads

@pytest.mark.parametrize("fix_norm", [True, False])
def test_weight_norm_dense_equals_x_times_normalised_columns(fix_norm):
    layer = WeightNormDense(12, fix_norm=fix_norm)
    rng = np.random.RandomState(6)
    x = jnp.asarray(rng.randn(5, 8).astype(np.float32))
    params = jax.jit(layer.init)(jax.random.key(0), x)["params"]
    if fix_norm:
        assert set(params) == {"v"}
    else:
        assert set(params) == {"v", "g"}
        np.testing.assert_array_equal(np.asarray(params["g"]), np.ones((1, 12), np.float32))
        params = dict(params, g=jnp.asarray(rng.uniform(0.5, 2.0, (1, 12)).astype(np.float32)))
    assert params["v"].shape == (8, 12)
    apply = jax.jit(layer.apply)
    got = np.asarray(apply({"params": params}, x))
    np.testing.assert_allclose(got, np_weight_norm_dense(x, params["v"], params.get("g")), rtol=1e-5, atol=1e-6)
    # Only the direction of v matters: scaling all of v, or one column, changes nothing.
    scale = np.ones(12, np.float32)
    scale[3] = 5.0
    for scaled_v in (params["v"] * 3.7, params["v"] * scale):
        rescaled = np.asarray(apply({"params": dict(params, v=scaled_v)}, x))
        np.testing.assert_allclose(rescaled, got, rtol=1e-5, atol=1e-6)


def _random_head_params(head, in_dim, seed):
    """Random values in every parameter `init` would create (no zero biases)."""
    shapes = jax.eval_shape(head.init, jax.random.key(0), jnp.zeros((1, in_dim)))["params"]
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.randn(*s.shape), s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("head", "capture"))
def _head_apply(params, x, head, capture=False):
    return head.apply({"params": params}, x, capture_intermediates=capture)


@pytest.mark.parametrize("nlayers", [1, 3])
def test_dino_head_matches_numpy_dinohead(nlayers):
    head = DINOHead(out_dim=40, hidden_dim=32, bottleneck_dim=8, nlayers=nlayers)
    params = _random_head_params(head, 16, seed=7)
    assert len(params["mlp"]) == nlayers
    assert params["mlp"][f"mlp_{nlayers - 1}"]["kernel"].shape[-1] == 8
    assert set(params["last_layer"]) == {"v"}  # norm_last_layer=True: g fixed to 1, not a parameter
    x = jnp.asarray(np.random.RandomState(8).randn(4, 16).astype(np.float32))
    out = np.asarray(_head_apply(params, x, head))
    assert out.shape == (4, 40)
    np.testing.assert_allclose(out, np_dino_head(params, x), rtol=1e-4, atol=1e-6)


def test_dino_head_bottleneck_is_l2_normalised():
    """The captured bottleneck, L2-normalised, then the weight-normalised layer gives the output;
    and scaling the bottleneck layer (kernel and bias) by a positive constant changes nothing."""
    head = DINOHead(out_dim=40, hidden_dim=32, bottleneck_dim=8, nlayers=3)
    params = _random_head_params(head, 16, seed=9)
    x = jnp.asarray(np.random.RandomState(10).randn(4, 16).astype(np.float32))
    out, state = _head_apply(params, x, head, capture=True)
    bottleneck = np.asarray(state["intermediates"]["mlp"]["__call__"][0], np.float64)
    assert bottleneck.shape == (4, 8)
    assert not np.allclose(np.linalg.norm(bottleneck, axis=-1), 1.0, rtol=1e-2)  # the MLP output is not unit
    unit = bottleneck / np.linalg.norm(bottleneck, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), np_weight_norm_dense(unit, params["last_layer"]["v"]),
                               rtol=1e-4, atol=1e-6)

    scaled = {"mlp": dict(params["mlp"]), "last_layer": params["last_layer"]}
    scaled["mlp"]["mlp_2"] = jax.tree.map(lambda p: 50.0 * p, params["mlp"]["mlp_2"])
    scaled_out, _ = _head_apply(scaled, x, head, capture=True)
    np.testing.assert_allclose(np.asarray(scaled_out), np.asarray(out), rtol=1e-5, atol=1e-6)


def test_dino_head_norm_last_layer_false_has_trainable_g():
    head = DINOHead(out_dim=10, hidden_dim=8, bottleneck_dim=4, nlayers=2, norm_last_layer=False)
    shapes = jax.eval_shape(head.init, jax.random.key(3), jnp.ones((2, 6)))["params"]
    assert set(shapes["last_layer"]) == {"v", "g"}
    assert shapes["last_layer"]["g"].shape == (1, 10)  # 2-D like torch weight_g: decayed
    assert shapes["last_layer"]["v"].shape == (4, 10)


# ----------------------------------------------------------------------------- multicrop

def test_apply_per_resolution_equals_per_view_application_in_group_order():
    rng = np.random.RandomState(9)
    groups = [jnp.asarray(rng.randn(3, 2, 4, 4, 3).astype(np.float32)),
              jnp.asarray(rng.randn(3, 5, 2, 2, 3).astype(np.float32))]
    weights = rng.randn(3, 6).astype(np.float32)

    def fn(images, _rng):  # [N, H, W, 3] -> [N, 6]; resolution-independent, image-specific
        return jnp.mean(images, axis=(1, 2)) @ weights + jnp.max(images, axis=(1, 2, 3))[:, None]

    out = np.asarray(jax.jit(lambda g, key: apply_per_resolution(fn, g, key))(groups, jax.random.key(0)))
    assert out.shape == (3, 7, 6)
    views = [np.asarray(g)[:, v] for g in groups for v in range(g.shape[1])]  # globals first, then locals
    for b in range(3):
        for v, view in enumerate(views):  # fn on the single image, in numpy
            want = view[b].mean(axis=(0, 1)) @ weights + view[b].max()
            np.testing.assert_allclose(out[b, v], want, rtol=1e-5, atol=1e-5)


def test_apply_per_resolution_gives_each_group_its_own_rng():
    groups = [jnp.zeros((2, 2, 4, 4, 3)), jnp.zeros((2, 2, 4, 4, 3))]
    fn = lambda images, key: jax.random.normal(key, (images.shape[0], 3))  # noqa: E731
    out = np.asarray(jax.jit(lambda g, key: apply_per_resolution(fn, g, key))(groups, jax.random.key(0)))
    assert not np.allclose(out[:, :2], out[:, 2:])


# ----------------------------------------------------------------------------- DINO method
#
# The `smoke` preset (ViT 32 wide, 2 blocks, 8 px patches, 2 x 32 px global + 2 x 16 px local
# crops, 64 prototypes), steps_per_epoch=3. Most tests set model.drop_path_rate to 0: the student
# is then deterministic, so the loss can be compared with numpy, and one compiled value-and-gradient
# serves them all (XLA compiles take seconds each on the 2 shared cores). The last test keeps
# stochastic depth on to check that only the student uses it.

BATCH = 2
STEPS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def dino_setup():
    config = get_config("smoke")
    config.model.drop_path_rate = 0.0
    # Not the recipe's 0.9: a method that ignored the configured momentum would still pass at 0.9.
    config.method.center_momentum = 0.8
    method = DINO(config, steps_per_epoch=STEPS_PER_EPOCH)
    # An 'rbg' key: the same standard-normal crops, without compiling threefry eagerly (~5 s here).
    batch = example_batch(config.augment, BATCH, jax.random.key(1, impl="rbg"))
    variables = jax.jit(method.init)(jax.random.key(0), batch)
    return config, method, batch, variables


@pytest.fixture(scope="module")
def dino_value_and_grad(dino_setup):
    """(loss, LossOutput), (d/d params, d/d teacher) of DINO.loss, jitted once."""
    _, method, batch, _ = dino_setup

    def loss_fn(params, teacher, center, step):
        return method.loss(params, teacher, {"center": center}, None, batch, jax.random.key(4), step)

    return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))


def np_views_logits(params, views, config):
    """Numpy ViT + DINO head on [B, V, H, W, 3] crops -> [B, V, K], eval mode.

    A crop smaller than model.img_size uses interpolate_pos_embed (tested above)."""
    views = np.asarray(views)
    b, v, size = views.shape[:3]
    backbone = dict(params["backbone"])
    grid = size // config.model.patch_size
    backbone["pos_embed"] = interpolate_pos_embed(backbone["pos_embed"], (grid, grid))
    feats = np_vit(backbone, views.reshape((b * v,) + views.shape[2:]), config.model.patch_size,
                   config.model.num_heads)
    return np_dino_head(params["head"], feats).reshape(b, v, -1)


def test_dino_batch_layout_of_smoke_config(dino_setup):
    _, _, batch, _ = dino_setup
    assert batch["views"]["global"].shape == (BATCH, 2, 32, 32, 3)
    assert batch["views"]["local"].shape == (BATCH, 2, 16, 16, 3)


def test_dino_init_teacher_is_exact_copy_of_params(dino_setup):
    config, _, _, variables = dino_setup
    params, teacher = variables.params, variables.teacher
    assert set(params) == {"backbone", "head"}
    assert jax.tree.structure(params) == jax.tree.structure(teacher)
    for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(teacher)):
        assert p.dtype == t.dtype
        np.testing.assert_array_equal(np.asarray(p), np.asarray(t))
    assert params["head"]["last_layer"]["v"].shape == (16, 64)  # bottleneck 16 -> out_dim 64
    np.testing.assert_array_equal(np.asarray(variables.method_state["center"]), np.zeros(64, np.float32))


@pytest.fixture(scope="module")
def dino_results(dino_setup, dino_value_and_grad):
    """The compiled loss at step 0 (teacher temp 0.04) and step 3 (epoch 1: 0.07), with a
    teacher different from the student and a non-zero centre."""
    config, _, _, variables = dino_setup
    rng = np.random.RandomState(10)
    teacher = jax.tree.map(lambda p: p + jnp.asarray(0.02 * rng.randn(*p.shape), p.dtype), variables.params)
    center = jnp.asarray(0.1 * rng.randn(config.method.out_dim).astype(np.float32))
    results = {step: dino_value_and_grad(variables.params, teacher, center, jnp.asarray(step, jnp.int32))
               for step in (0, 3)}
    return teacher, center, results


@pytest.mark.parametrize("step,teacher_temp", [(0, 0.04), (3, 0.07)])
def test_dino_method_loss_equals_numpy_dinoloss_on_numpy_forward(dino_setup, dino_results, step, teacher_temp):
    """DINOLoss on the student's logits of all crops (globals then locals) and the *teacher's*
    logits of the global crops, at the epoch's teacher temperature (smoke: 1 warm-up epoch)."""
    config, _, batch, variables = dino_setup
    teacher, center, results = dino_results
    (loss, out), _ = results[step]
    views = batch["views"]
    student_logits = np.concatenate([np_views_logits(variables.params, views["global"], config),
                                     np_views_logits(variables.params, views["local"], config)], axis=1)
    teacher_logits = np_views_logits(teacher, views["global"], config)
    want = np_dino_loss(student_logits, teacher_logits, center, config.method.student_temp, teacher_temp)
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    np.testing.assert_allclose(float(out.metrics["teacher_temp"]), teacher_temp, rtol=1e-6)
    for name, value in out.metrics.items():
        assert np.isfinite(float(value)), name


def test_dino_method_loss_is_finite_and_positive(dino_results):
    _, _, results = dino_results
    for (loss, _), _ in results.values():
        assert np.isfinite(float(loss)) and float(loss) > 0


def test_dino_method_gradient_reaches_backbone_and_head(dino_results):
    _, _, results = dino_results
    (_, _), (grad_params, _) = results[0]
    grad_params = jax.tree.map(np.asarray, grad_params)
    for part in ("backbone", "head"):
        leaves = jax.tree.leaves(grad_params[part])
        assert all(np.all(np.isfinite(g)) for g in leaves), part
        assert sum(float(np.sum(np.square(g))) for g in leaves) > 0, part
    # Freezing the last layer is the optimiser's job, not the loss's.
    assert np.abs(grad_params["head"]["last_layer"]["v"]).max() > 0
    assert np.abs(grad_params["head"]["mlp"]["mlp_0"]["kernel"]).max() > 0
    assert np.abs(grad_params["backbone"]["patch_embed"]["kernel"]).max() > 0
    assert np.abs(grad_params["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"]).max() > 0


def test_dino_method_teacher_receives_no_gradient(dino_results):
    _, _, results = dino_results
    for _, (_, grad_teacher) in results.values():
        for g in jax.tree.leaves(grad_teacher):
            assert np.all(np.asarray(g) == 0.0)


def test_dino_method_center_update_follows_ema_of_teacher_logits(dino_setup, dino_results):
    config, _, batch, _ = dino_setup
    teacher, center, results = dino_results
    (_, out), _ = results[0]
    teacher_logits = np_views_logits(teacher, batch["views"]["global"], config)
    m = config.method.center_momentum
    want = m * np.asarray(center, np.float64) + (1 - m) * teacher_logits.reshape(-1, teacher_logits.shape[-1]).mean(0)
    got = np.asarray(out.method_state["center"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(got, np.asarray(center), atol=1e-4)


def test_dino_method_student_uses_drop_path_and_teacher_does_not(dino_setup):
    """smoke config with drop_path_rate 0.5: the loss depends on the rng (stochastic depth in the
    student), the centre, a function of the teacher's logits only, does not."""
    _, _, batch, variables = dino_setup  # parameters do not depend on the drop-path rate
    config = get_config("smoke")
    config.model.drop_path_rate = 0.5
    method = DINO(config, steps_per_epoch=STEPS_PER_EPOCH)
    center = jnp.zeros((config.method.out_dim,), jnp.float32)
    loss_fn = jax.jit(lambda key: method.loss(variables.params, variables.teacher, {"center": center}, None, batch,
                                               key, jnp.asarray(0, jnp.int32)))
    runs = [loss_fn(jax.random.key(seed)) for seed in (1, 2, 3)]
    losses_ = [float(loss) for loss, _ in runs]
    assert len(set(losses_)) > 1, losses_
    for _, out in runs[1:]:
        np.testing.assert_array_equal(np.asarray(out.method_state["center"]),
                                      np.asarray(runs[0][1].method_state["center"]))


# ----------------------------------------------------------------------------- ResNet, sin-cos embeddings, MLPs

@pytest.mark.parametrize("depth,torchvision_params,feature_dim", [
    # torchvision resnet18 / resnet50 parameter counts (11,689,512 / 25,557,032) minus the
    # 1000-way classifier (512*1000+1000 / 2048*1000+1000): convs + BatchNorm weight/bias.
    (18, 11_689_512 - 513_000, 512),
    (50, 25_557_032 - 2_049_000, 2048),
])
def test_resnet_parameter_count_and_features_match_torchvision(depth, torchvision_params, feature_dim):
    from ssl_jax.models.resnet import resnet

    model = resnet(depth)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    assert count == torchvision_params
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((2, 64, 64, 3)))
    assert out.shape == (2, feature_dim)


def test_resnet_cifar_stem_keeps_resolution_and_zero_init_blocks_start_as_identity():
    """CIFAR stem: 3x3 stride 1, no max-pool (a 32 px image keeps 32 px into layer1). With
    zero_init_residual each block's last BN scale is 0, so a stride-1 block without
    projection passes its (post-ReLU, non-negative) input through unchanged."""
    from ssl_jax.models.resnet import ResidualBlock, resnet

    model = resnet(18, cifar_stem=True)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = model.init(jax.random.key(1), images)
    _, state = model.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
    stem = state["intermediates"]["layer1_0"]["__call__"][0]
    assert stem.shape == (2, 32, 32, 64)
    assert not np.any(np.asarray(variables["params"]["layer1_0"]["bn2"]["scale"]))
    block = ResidualBlock(64, 1, False, True, functools.partial(flax.linen.BatchNorm, use_running_average=True))
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (2, 8, 8, 64)))
    block_vars = block.init(jax.random.key(3), x)
    np.testing.assert_allclose(np.asarray(block.apply(block_vars, x)), np.asarray(x), atol=1e-6)


def np_mocov3_sincos(grid: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """moco-v3 vits.py `build_2d_sincos_position_embedding` for a square grid, as loops:
    torch.meshgrid(grid_w, grid_h) ('ij') flattened gives token k = r * grid + c the pair
    (r, c), encoded as [sin(r w), cos(r w), sin(c w), cos(c w)], w_i = 1 / T^(i / (D/4))."""
    quarter = dim // 4
    out = np.zeros((1 + grid * grid, dim))
    for r in range(grid):
        for c in range(grid):
            for i in range(quarter):
                omega = 1.0 / temperature ** (i / quarter)
                k = 1 + r * grid + c
                out[k, i], out[k, quarter + i] = np.sin(r * omega), np.cos(r * omega)
                out[k, 2 * quarter + i], out[k, 3 * quarter + i] = np.sin(c * omega), np.cos(c * omega)
    return out


def test_sincos_pos_embed_matches_mocov3_and_is_not_a_parameter():
    from ssl_jax.models.vit import VisionTransformer, sincos_pos_embed

    np.testing.assert_allclose(np.asarray(sincos_pos_embed((4, 4), 16))[0], np_mocov3_sincos(4, 16), atol=1e-6)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, pos_embed="sincos")
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert "pos_embed" not in params


def test_projection_mlp_layers_follow_the_papers():
    """MoCo v3 projector: Linear without bias -> BN -> ReLU, last Linear -> BN without affine;
    BYOL: last Linear with bias and no BN; SimCLR: last BN with a scale but no shift."""
    from ssl_jax.models.heads import ProjectionMLP

    def shapes(mlp):
        params = mlp.init(jax.random.key(0), jnp.zeros((4, 8)))["params"]
        return jax.tree.map(lambda x: x.shape, params)

    assert shapes(ProjectionMLP(16, 4, 3, last_bn=True)) == {
        "linear_0": {"kernel": (8, 16)}, "bn_0": {"scale": (16,), "bias": (16,)},
        "linear_1": {"kernel": (16, 16)}, "bn_1": {"scale": (16,), "bias": (16,)},
        "linear_2": {"kernel": (16, 4)}}
    assert shapes(ProjectionMLP(16, 4, 2, last_bias=True)) == {
        "linear_0": {"kernel": (8, 16)}, "bn_0": {"scale": (16,), "bias": (16,)},
        "linear_1": {"kernel": (16, 4), "bias": (4,)}}
    assert shapes(ProjectionMLP(16, 4, 2, last_bn=True, last_bn_scale=True))["bn_1"] == {"scale": (4,)}
