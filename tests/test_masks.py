"""ssl_jax.masks against Python ports of the reference generators (statistics over many draws),
plus exact properties, determinism per rng and static shapes under jit."""
from __future__ import annotations

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import masks

GRID = (14, 14)  # ViT-*/16 at 224 px
DRAWS = 400


def ibot_reference_mask(rng: random.Random, grid, pred_ratio=0.3, pred_ratio_var=0.2, aspect=(0.3, 1 / 0.3)):
    """bytedance/ibot loader.py ImageFolderMask.__getitem__ (pred_shape='block'), one crop."""
    H, W = grid
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    high = rng.uniform(pred_ratio - pred_ratio_var, pred_ratio + pred_ratio_var) * H * W
    mask = np.zeros((H, W), dtype=bool)
    mask_count = 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for _ in range(10):
            low = (min(H, W) // 3) ** 2
            target_area = rng.uniform(low, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < W and h < H:
                top = rng.randint(0, H - h)
                left = rng.randint(0, W - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    delta += int((~mask[top: top + h, left: left + w]).sum())
                    mask[top: top + h, left: left + w] = True
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask.reshape(-1)


def ijepa_reference_masks(gen: np.random.Generator, batch, grid, enc_scale=(0.85, 1.0), pred_scale=(0.15, 0.2),
                          aspect=(0.75, 1.5), npred=4, min_keep=10):
    """facebookresearch/ijepa src/masks/multiblock.py MaskCollator.__call__ (nenc=1,
    allow_overlap=False), before the truncation to the batch minimum: per-image context and
    target masks [B, N], [B, M, N]."""
    H, W = grid

    def block_size(scale, ar):
        u = gen.random()
        max_keep = int(H * W * (scale[0] + u * (scale[1] - scale[0])))
        a = ar[0] + u * (ar[1] - ar[0])
        h, w = int(round(math.sqrt(max_keep * a))), int(round(math.sqrt(max_keep / a)))
        return min(h, H - 1), min(w, W - 1)

    def block(size, regions=None):
        h, w = size
        tries, timeout = 0, 20
        while True:
            top, left = gen.integers(0, H - h), gen.integers(0, W - w)
            m = np.zeros((H, W), bool)
            m[top:top + h, left:left + w] = True
            if regions is not None:
                for k in range(max(len(regions) - tries, 0)):
                    m &= regions[k]
            if m.sum() > min_keep:
                comp = np.ones((H, W), bool)
                comp[top:top + h, left:left + w] = False
                return m.reshape(-1), comp
            timeout -= 1
            if timeout == 0:
                tries, timeout = tries + 1, 20

    p_size = block_size(pred_scale, aspect)
    e_size = block_size(enc_scale, (1.0, 1.0))
    contexts, targets = [], []
    for _ in range(batch):
        pairs = [block(p_size) for _ in range(npred)]
        targets.append([m for m, _ in pairs])
        contexts.append(block(e_size, [c for _, c in pairs])[0])
    return np.array(contexts), np.array(targets)


@pytest.fixture(scope="module")
def ibot_draws():
    draw = jax.jit(lambda key: masks.ibot_block_masks(key, DRAWS, GRID))
    ours = np.asarray(draw(jax.random.key(0)))
    rng = random.Random(0)
    ref = np.array([ibot_reference_mask(rng, GRID) for _ in range(DRAWS)])
    return ours, ref, draw


def _rows_and_cols_touched(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grid = m.reshape(-1, *GRID)
    return grid.any(axis=2).sum(1), grid.any(axis=1).sum(1)


def test_random_masks_keep_exactly_k_and_restore_inverts_the_shuffle():
    out = jax.jit(lambda k: masks.random_masks(k, 5, 16, 0.75))(jax.random.key(3))
    keep, mask, restore = map(np.asarray, out)
    assert keep.shape == (5, 4) and mask.shape == (5, 16) and restore.shape == (5, 16)
    for b in range(5):
        assert set(keep[b]) == set(np.flatnonzero(~mask[b]))  # kept = not masked, 4 of 16
        shuffle = np.argsort(restore[b])  # restore is the inverse permutation of the shuffle
        np.testing.assert_array_equal(shuffle[:4], keep[b])
    assert len({tuple(k) for k in keep}) > 1  # per-sample masks
    np.testing.assert_array_equal(keep, np.asarray(masks.random_masks(jax.random.key(3), 5, 16, 0.75).keep))
    with pytest.raises(ValueError, match="mask_ratio"):
        masks.num_kept(16, 1.0)


def test_simmim_masks_are_coarse_cells_at_the_reference_count():
    m = np.asarray(masks.simmim_masks(jax.random.key(1), 6, 224, 32, 16, 0.6)).reshape(6, 14, 14)
    cells = m.reshape(6, 7, 2, 7, 2)
    assert (cells.all(axis=(2, 4)) == cells.any(axis=(2, 4))).all()  # each 32 px cell all or nothing
    np.testing.assert_array_equal(cells.all(axis=(2, 4)).sum((1, 2)), math.ceil(49 * 0.6))  # 30 cells
    with pytest.raises(ValueError, match="divisible"):
        masks.simmim_masks(jax.random.key(1), 1, 224, 24, 16, 0.6)


def test_ibot_block_masks_match_the_reference_statistics(ibot_draws):
    ours, ref, _ = ibot_draws
    assert ours.shape == (DRAWS, GRID[0] * GRID[1]) and ours.dtype == bool
    frac, ref_frac = ours.mean(1), ref.mean(1)
    # Per-image ratio U[0.1, 0.5], minus what the last blocks cannot fill: mean ~0.29.
    se = math.sqrt(frac.var() / DRAWS + ref_frac.var() / DRAWS)
    assert abs(frac.mean() - ref_frac.mean()) < 4 * se
    np.testing.assert_allclose(np.quantile(frac, [0.1, 0.5, 0.9]), np.quantile(ref_frac, [0.1, 0.5, 0.9]), atol=0.03)
    assert frac.min() > 0.05 and frac.max() <= 0.5 + 1e-9
    # Block shape: rows and columns spanned, and the fraction of masked patches with a masked
    # 4-neighbour (blocks, not scattered patches).
    for ours_stat, ref_stat in zip(_rows_and_cols_touched(ours), _rows_and_cols_touched(ref)):
        assert abs(ours_stat.mean() - ref_stat.mean()) < 0.4, (ours_stat.mean(), ref_stat.mean())
    def clumped(m):
        g = m.reshape(-1, *GRID)
        nb = np.zeros_like(g)
        nb[:, 1:] |= g[:, :-1]
        nb[:, :-1] |= g[:, 1:]
        nb[:, :, 1:] |= g[:, :, :-1]
        nb[:, :, :-1] |= g[:, :, 1:]
        return (g & nb).sum() / g.sum()
    assert clumped(ours) > 0.95 and abs(clumped(ours) - clumped(ref)) < 0.02


def test_ibot_block_masks_are_deterministic_per_rng(ibot_draws):
    ours, _, draw = ibot_draws
    np.testing.assert_array_equal(np.asarray(draw(jax.random.key(0))), ours)
    assert not np.array_equal(np.asarray(draw(jax.random.key(1))), ours)


def test_block_masks_respect_per_image_counts_and_max_block():
    counts = jnp.array([0.0, 10.0, 40.0])
    m = np.asarray(masks.block_masks(jax.random.key(2), counts, (8, 8), min_block_area=4, max_block_area=16))
    assert m.shape == (3, 64)
    assert m[0].sum() == 0 and 0 < m[1].sum() <= 10 and 16 < m[2].sum() <= 40


@pytest.fixture(scope="module")
def ijepa_draws():
    draw = jax.jit(lambda key: masks.multiblock_masks(key, 16, GRID))
    steps = [draw(jax.random.key(i)) for i in range(DRAWS // 16)]
    gen = np.random.default_rng(0)
    ref = [ijepa_reference_masks(gen, 16, GRID) for _ in range(DRAWS // 16)]
    return steps, ref, draw


def _dense(indices, valid, num):
    out = np.zeros(indices.shape[:-1] + (num,), bool)
    np.put_along_axis(out, np.where(valid, indices, 0), valid, axis=-1)
    return out


def test_multiblock_masks_static_shapes_and_structure(ijepa_draws):
    steps, _, _ = ijepa_draws
    num = GRID[0] * GRID[1]
    context_len = masks.max_block_area(GRID, (0.85, 1.0), (1.0, 1.0))
    target_len = masks.max_block_area(GRID, (0.15, 0.2), (0.75, 1.5))
    assert (context_len, target_len) == (13 * 13, 40)  # int(196 s) patches, sides < 14
    for out in steps:
        assert out.context.shape == (16, context_len) and out.targets.shape == (16, 4, target_len)
        ctx = np.asarray(out.context)
        ctx_valid, tgt_valid = np.asarray(out.context_valid), np.asarray(out.targets_valid)
        assert ctx_valid.sum(1).min() > 10  # min_keep
        sizes = tgt_valid.sum(-1)
        assert (sizes == sizes[0, 0]).all()  # one target size per step
        for b in range(16):  # valid indices first, in raster order, no duplicates
            n = ctx_valid[b].sum()
            assert ctx_valid[b, :n].all() and not ctx_valid[b, n:].any()
            assert (np.diff(ctx[b, :n]) > 0).all()
        dense_ctx = _dense(ctx, ctx_valid, num)
        dense_tgt = _dense(np.asarray(out.targets), tgt_valid, num)
        assert not (dense_ctx[:, None] & dense_tgt).any()  # context excludes every target here
        tgt_grid = dense_tgt.reshape(16, 4, *GRID)
        assert not tgt_grid[..., -1, :].any() and not tgt_grid[..., :, -1].any()  # top < H - h


def test_multiblock_masks_match_the_reference_statistics(ijepa_draws):
    steps, ref, draw = ijepa_draws
    target_sizes = np.array([np.asarray(o.targets_valid)[0, 0].sum() for o in steps])
    ref_target_sizes = np.array([r[1][0, 0].sum() for r in ref])
    context_sizes = np.concatenate([np.asarray(o.context_valid).sum(1) for o in steps])
    ref_context_sizes = np.concatenate([r[0].sum(1) for r in ref])
    assert set(target_sizes) <= set(range(25, 41))
    assert abs(target_sizes.mean() - ref_target_sizes.mean()) < 2.0, (target_sizes.mean(), ref_target_sizes.mean())
    se = math.sqrt(context_sizes.var() / len(context_sizes) + ref_context_sizes.var() / len(ref_context_sizes))
    assert abs(context_sizes.mean() - ref_context_sizes.mean()) < 4 * se + 3, (context_sizes.mean(),
                                                                               ref_context_sizes.mean())
    first = draw(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, first, steps[0])
