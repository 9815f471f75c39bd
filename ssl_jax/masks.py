"""Patch masks for masked image modelling, drawn inside the jitted step from an explicit rng.

Every generator is pure jax.numpy (`jax.random`, `lax.while_loop`), so it runs in the
train step on the step's rng: no host-side collator, and a batch stays a pure function of
(seed, step). All outputs have shapes fixed by the config, never by the draw:

* `random_masks` (MAE; SimMIM on its coarse grid): a fixed number K = int(N (1 - ratio))
  of kept patches per image, so `keep` [B, K] is static and the encoder can gather them.
* `block_masks` / `ibot_block_masks` (BEiT / iBOT / DINOv2): the masked *fraction* is drawn
  per image, but the output is a boolean mask [B, N] of static shape; its consumer replaces
  masked tokens by a mask token and weights the loss with it, so a varying count costs no
  shape change.
* `multiblock_masks` (I-JEPA): context and target blocks have per-image (context) and
  per-step (target) sizes. The reference collator truncates every image's index list to the
  smallest count in the batch (`cm[:min_keep]`), a data-dependent shape. Here the index
  lists are padded to the largest count the config allows, computed in numpy when the
  method is built, with a validity mask: the encoder and predictor ignore padding keys
  (`kv_mask` in `ssl_jax.models.vit.Attention`) and the loss averages over valid targets
  only. No context token is dropped (the reference drops the surplus of the larger
  contexts); the price is encoder compute for the padded length.

Grids are row-major: patch (r, c) of an h x w grid is token r * w + c.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import UserError


class RandomMasks(NamedTuple):
    """keep [B, K] int32: kept (visible) patch indices, in shuffled order (MAE's ids_keep);
    mask [B, N] bool: True where the patch is removed; restore [B, N] int32: the inverse
    permutation (MAE's ids_restore): position of patch n in [keep, removed]."""

    keep: jax.Array
    mask: jax.Array
    restore: jax.Array


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """MAE's `len_keep = int(L * (1 - mask_ratio))`."""
    if not 0.0 <= mask_ratio < 1.0:
        raise UserError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def random_masks(rng: jax.Array, batch: int, num_patches: int, mask_ratio: float) -> RandomMasks:
    """MAE's per-sample `random_masking`: keep the K = int(N (1 - ratio)) patches with the
    smallest uniform noise. Every image keeps exactly K, so the shapes are static."""
    keep_count = num_kept(num_patches, mask_ratio)
    noise = jax.random.uniform(rng, (batch, num_patches))
    shuffle = jnp.argsort(noise, axis=1)
    restore = jnp.argsort(shuffle, axis=1)
    mask = restore >= keep_count  # patch n is removed iff its rank in the shuffle is >= K
    return RandomMasks(shuffle[:, :keep_count].astype(jnp.int32), mask, restore.astype(jnp.int32))


def simmim_masks(rng: jax.Array, batch: int, img_size: int, mask_patch_size: int, model_patch_size: int,
                 mask_ratio: float) -> jax.Array:
    """SimMIM's `MaskGenerator`: ceil(ratio * n^2) of the n x n coarse cells (n = img_size /
    mask_patch_size) masked uniformly at random, each cell upsampled to the (mask_patch_size /
    model_patch_size)^2 model patches it covers. Returns [B, N] bool on the model's patch grid."""
    if img_size % mask_patch_size or mask_patch_size % model_patch_size:
        raise UserError(f"SimMIM masks need img_size ({img_size}) divisible by mask_patch_size "
                        f"({mask_patch_size}) and mask_patch_size divisible by the patch size ({model_patch_size})")
    side, scale = img_size // mask_patch_size, mask_patch_size // model_patch_size
    count = int(math.ceil(side * side * mask_ratio))
    noise = jax.random.uniform(rng, (batch, side * side))
    coarse = jnp.argsort(jnp.argsort(noise, axis=1), axis=1) < count  # `count` random cells per image
    coarse = coarse.reshape(batch, side, 1, side, 1)
    fine = jnp.broadcast_to(coarse, (batch, side, scale, side, scale))
    return fine.reshape(batch, (side * scale) ** 2)


def _rect(grid_hw: tuple[int, int], top, left, height, width) -> jax.Array:
    """[H, W] bool: True on rows [top, top + height) and columns [left, left + width)."""
    rows = jnp.arange(grid_hw[0])[:, None]
    cols = jnp.arange(grid_hw[1])[None, :]
    return (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)


def _block_mask_one(rng: jax.Array, num_masked: jax.Array, grid_hw: tuple[int, int], min_block_area: float,
                    max_block_area: float, log_aspect: tuple[float, float], attempts: int) -> jax.Array:
    """One image of `block_masks`: [H, W] bool (see there)."""
    height, width = grid_hw

    def try_block(carry, key):
        mask, delta, budget = carry
        area_key, aspect_key, top_key, left_key = jax.random.split(key, 4)
        # random.uniform(a, b) = a + (b - a) u, also when b < a (budget below the minimum area).
        area = min_block_area + (budget - min_block_area) * jax.random.uniform(area_key)
        aspect = jnp.exp(jax.random.uniform(aspect_key, minval=log_aspect[0], maxval=log_aspect[1]))
        h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
        w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        fits = (w < width) & (h < height)
        top = jax.random.randint(top_key, (), 0, height - h + 1)  # random.randint: both ends inclusive
        left = jax.random.randint(left_key, (), 0, width - w + 1)
        new = _rect(grid_hw, top, left, h, w) & ~mask
        added = new.sum()
        accept = (delta == 0) & fits & (added > 0) & (added <= budget)  # `0 < h*w - num_masked <= max`
        return (mask | (new & accept), delta + jnp.where(accept, added, 0), budget), None

    def cond(state):
        _, count, stopped, _ = state
        return (count < num_masked) & ~stopped

    def body(state):
        mask, count, _, i = state
        budget = jnp.minimum(num_masked - count, max_block_area)
        keys = jax.random.split(jax.random.fold_in(rng, i), attempts)
        (mask, delta, _), _ = jax.lax.scan(try_block, (mask, jnp.int32(0), budget), keys)
        return mask, count + delta, delta == 0, i + 1

    init = (jnp.zeros(grid_hw, bool), jnp.int32(0), jnp.bool_(False), jnp.int32(0))
    return jax.lax.while_loop(cond, body, init)[0]


def block_masks(rng: jax.Array, num_masked: jax.Array, grid_hw: tuple[int, int], *, min_block_area: float,
                max_block_area: Optional[float] = None, aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
                attempts: int = 10) -> jax.Array:
    """BEiT's `MaskingGenerator` (as iBOT's `ImageFolderMask` and DINOv2 use it), batched.

    num_masked [B] (float): how many patches to mask in each image. Until an image has that
    many, rectangles are added: each of up to `attempts` tries draws an area uniform in
    [min_block_area, budget] (budget = the patches still to mask, capped at
    `max_block_area`), a log-uniform aspect ratio h/w in `aspect_ratio`, rounds
    h = sqrt(area * aspect), w = sqrt(area / aspect), and a uniform position; a rectangle
    strictly smaller than the grid that adds between 1 and `budget` new patches is kept. An
    image stops early when 10 tries in a row add nothing, so it can end slightly below its
    target. Returns [B, H*W] bool (True = masked): a static shape whatever the counts.
    """
    if max_block_area is None:
        max_block_area = float(grid_hw[0] * grid_hw[1])
    log_aspect = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
    keys = jax.random.split(rng, num_masked.shape[0])
    one = lambda key, n: _block_mask_one(key, n, grid_hw, min_block_area, max_block_area, log_aspect,  # noqa: E731
                                         attempts)
    masks = jax.vmap(one)(keys, jnp.asarray(num_masked, jnp.float32))
    return masks.reshape(num_masked.shape[0], -1)


def ibot_block_masks(rng: jax.Array, batch: int, grid_hw: tuple[int, int], *, pred_ratio: float = 0.3,
                     pred_ratio_var: float = 0.2, aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> jax.Array:
    """iBOT's block masks (`ImageFolderMask`, pred_shape='block'): [B, H*W] bool.

    Each image masks `high = r * H * W` patches with r ~ U[pred_ratio - var, pred_ratio + var]
    (--pred_ratio 0.3 --pred_ratio_var 0.2: r in [0.1, 0.5]) drawn per image, with
    blocks of at least (min(H, W) // 3)^2 patches (iBOT's `low`) and no upper block size.
    iBOT's `pred_start_epoch` (no masking before that epoch) is not modelled.
    """
    if not 0.0 <= pred_ratio_var <= pred_ratio:
        raise UserError(f"iBOT needs 0 <= pred_ratio_var <= pred_ratio, got {pred_ratio_var} and {pred_ratio}")
    ratio_key, mask_key = jax.random.split(rng)
    ratios = jax.random.uniform(ratio_key, (batch,), minval=pred_ratio - pred_ratio_var,
                                maxval=pred_ratio + pred_ratio_var)
    return block_masks(mask_key, ratios * (grid_hw[0] * grid_hw[1]), grid_hw,
                       min_block_area=float((min(grid_hw) // 3) ** 2), aspect_ratio=aspect_ratio)


class MultiBlockMasks(NamedTuple):
    """I-JEPA's masks with static shapes (see the module docstring).

    context [B, Kc] int32: context patch indices (raster order, padding after the valid ones);
    context_valid [B, Kc] bool; targets [B, M, Kt] int32: each target block's patch
    indices (raster order); targets_valid [B, M, Kt] bool (the same count for every block
    of a step, as the reference draws one target size per batch).
    """

    context: jax.Array
    context_valid: jax.Array
    targets: jax.Array
    targets_valid: jax.Array


def _block_size(u, grid_hw: tuple[int, int], scale: tuple[float, float], aspect_ratio: tuple[float, float], xp=jnp):
    """I-JEPA's `_sample_block_size` for a uniform draw u: (h, w).

    As the reference, one u sets both the scale and the aspect ratio; h and w are then
    reduced until they are smaller than the grid. `xp` is jnp (in the step) or np (sizes).
    """
    height, width = grid_hw
    area = xp.floor(height * width * (scale[0] + u * (scale[1] - scale[0])))  # int(H * W * mask_scale)
    aspect = aspect_ratio[0] + u * (aspect_ratio[1] - aspect_ratio[0])
    h = xp.minimum(xp.round(xp.sqrt(area * aspect)), height - 1).astype(xp.int32)
    w = xp.minimum(xp.round(xp.sqrt(area / aspect)), width - 1).astype(xp.int32)
    return h, w


def max_block_area(grid_hw: tuple[int, int], scale: tuple[float, float], aspect_ratio: tuple[float, float]) -> int:
    """The largest h * w `_block_size` can return (a dense sweep of u in [0, 1]): the static
    length of I-JEPA's padded index lists."""
    h, w = _block_size(np.linspace(0.0, 1.0, 100_001), grid_hw, scale, aspect_ratio, xp=np)
    return int((h * w).max())


def _raster_indices(mask: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """mask [..., N] bool -> (indices [..., length] of the True entries in raster order, padded
    with False entries' indices; valid [..., length] bool)."""
    order = jnp.argsort(~mask, axis=-1, stable=True)[..., :length]
    return order.astype(jnp.int32), jnp.take_along_axis(mask, order, axis=-1)


def multiblock_masks(rng: jax.Array, batch: int, grid_hw: tuple[int, int], *, context_scale=(0.85, 1.0),
                     target_scale=(0.15, 0.2), target_aspect_ratio=(0.75, 1.5), num_targets: int = 4,
                     min_keep: int = 10, tries_per_relaxation: int = 20) -> MultiBlockMasks:
    """I-JEPA's `MaskCollator` (src/masks/multiblock.py; allow_overlap=False, nenc=1).

    Per step (shared by the batch, as the reference seeds it per batch): one target block size
    (scale `target_scale`, aspect `target_aspect_ratio`) and one context block size (scale
    `context_scale`, aspect 1). Per image: `num_targets` target blocks at uniform positions
    (overlap allowed among them), then a context block at a uniform position minus every
    target block; a context with <= `min_keep` patches is redrawn, and after
    `tries_per_relaxation` failures the last remaining target stops constraining it (the
    reference's `tries`). Positions follow the reference's `torch.randint(0, H - h)`:
    top in [0, H - h), so a block never reaches the last row (or column).
    """
    height, width = grid_hw
    num = height * width
    size_key, target_key, context_key = jax.random.split(rng, 3)
    u_target, u_context = jax.random.uniform(size_key, (2,))  # one draw per `_sample_block_size` call
    th, tw = _block_size(u_target, grid_hw, target_scale, target_aspect_ratio)
    ch, cw = _block_size(u_context, grid_hw, context_scale, (1.0, 1.0))

    def place(key, h, w, count):
        """`count` blocks of h x w at positions [0, H - h) x [0, W - w): [count, H, W] bool."""
        top_key, left_key = jax.random.split(key)
        tops = jax.random.randint(top_key, (count,), 0, jnp.maximum(height - h, 1))
        lefts = jax.random.randint(left_key, (count,), 0, jnp.maximum(width - w, 1))
        return jax.vmap(lambda t, l: _rect(grid_hw, t, l, h, w))(tops, lefts)

    def one_image(t_key, c_key):
        targets = place(t_key, th, tw, num_targets)  # [M, H, W]
        relaxations = num_targets + 1  # constrained by all M targets, M-1, ..., none
        candidates = place(c_key, ch, cw, tries_per_relaxation * relaxations)  # [T, H, W]
        active = num_targets - jnp.arange(tries_per_relaxation * relaxations) // tries_per_relaxation  # [T]
        uses = jnp.arange(num_targets)[None, :] < active[:, None]  # [T, M]: target k constrains try t
        blocked = jnp.any(uses[:, :, None, None] & targets[None], axis=1)  # [T, H, W]
        contexts = candidates & ~blocked
        valid = contexts.reshape(len(active), -1).sum(-1) > min_keep
        first = jnp.argmax(valid)  # the first acceptable try (the last one if none is)
        first = jnp.where(valid.any(), first, len(active) - 1)
        return contexts[first].reshape(num), targets.reshape(num_targets, num)

    context, targets = jax.vmap(one_image)(jax.random.split(target_key, batch), jax.random.split(context_key, batch))
    context_len = max_block_area(grid_hw, context_scale, (1.0, 1.0))
    target_len = max_block_area(grid_hw, target_scale, target_aspect_ratio)
    context_idx, context_valid = _raster_indices(context, context_len)
    target_idx, target_valid = _raster_indices(targets, target_len)
    return MultiBlockMasks(context_idx, context_valid, target_idx, target_valid)
