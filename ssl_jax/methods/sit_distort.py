"""SiT's image corruption, `distortImages` of Sara-Ahmed/SiT `engine.py`, on one image in jax.numpy:
a grey rectangle, a Gaussian-blurred rectangle, blocks of noise, then blocks of another image of
the batch (`methods/sit.py` vmaps it over the batch inside the step).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _randint(rng: jax.Array, low, high) -> jax.Array:
    """numpy's randint(low, high): uniform on {low, ..., high - 1} (high > low assumed, as the reference)."""
    return jax.random.randint(rng, (), low, jnp.maximum(high, low + 1))


def _rectangle(rng: jax.Array, size: tuple[int, int], min_side: tuple[int, int], max_side: tuple[int, int]):
    """engine.py's random block: top ~ U{0..H - t_h - 1}, bottom = min(top + U{t_h..max_h - 1}, H), same for
    columns -> [H, W] bool, True inside."""
    (height, width), keys = size, jax.random.split(rng, 4)
    top, left = _randint(keys[0], 0, height - min_side[0]), _randint(keys[1], 0, width - min_side[1])
    bottom = jnp.minimum(_randint(keys[2], min_side[0], max_side[0]) + top, height)
    right = jnp.minimum(_randint(keys[3], min_side[1], max_side[1]) + left, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right), (top, bottom, left, right)


def _blur_inside(image: jax.Array, box, kernel_size: jax.Array, sigma: jax.Array, max_kernel: int) -> jax.Array:
    """kornia GaussianBlur2d((k, k), (sigma, sigma)) of the crop image[top:bottom, left:right] (reflect
    padding at the crop's own edges), written back; separable, taps beyond k // 2 weighted 0."""
    top, bottom, left, right = box
    offsets = jnp.arange(-(max_kernel // 2), max_kernel // 2 + 1)
    weights = jnp.where(jnp.abs(offsets) <= kernel_size // 2, jnp.exp(-offsets**2 / (2.0 * sigma**2)), 0.0)
    weights = weights / weights.sum()

    def reflect(index, low, high):  # torch's 'reflect' padding into [low, high - 1]
        index = jnp.where(index < low, 2 * low - index, index)
        return jnp.clip(jnp.where(index > high - 1, 2 * (high - 1) - index, index), low, high - 1)

    height, width = image.shape[:2]
    rows = reflect(jnp.arange(height)[:, None] + offsets, top, bottom)  # [H, K]
    blurred = jnp.einsum("hkwc,k->hwc", image[rows], weights)
    cols = reflect(jnp.arange(width)[:, None] + offsets, left, right)  # [W, K]
    return jnp.einsum("hwkc,k->hwc", blurred[:, cols], weights)


def distort(rng: jax.Array, image: jax.Array, partner: jax.Array, use_partner: jax.Array, *, max_drop: float = 0.3,
            max_block: float = 0.25, min_block: float = 0.05, max_kernel: int = 15, max_sigma: float = 5.0,
            max_rectangles: int = 256) -> jax.Array:
    """SiT's `distortImages` on one image [H, W, C] (engine.py): a random rectangle to its channel mean
    (`rgb2gray_patch`), a random rectangle Gaussian-blurred (`smooth_patch`: odd kernel 3..max_kernel,
    sigma U(0.1, 0.1 + max_sigma)), random blocks of N(0, 1) noise until their summed area reaches
    U(0, max_drop) of the image (`drop_rand_patches`), then, if `use_partner`, blocks of `partner`'s
    pixels the same way. Blocks have sides from min_block to max_block of the image's."""
    height, width, _ = image.shape
    tolr = (int(min_block * height), int(min_block * width))
    keys = jax.random.split(rng, 7)
    gray, _ = _rectangle(keys[0], (height, width), tolr, (height, width))
    image = jnp.where(gray[..., None], jnp.mean(image, axis=-1, keepdims=True), image)
    smooth, box = _rectangle(keys[1], (height, width), tolr, (height, width))
    kernel_size = 2 * (_randint(keys[2], 3, max_kernel + 1) // 2) + 1
    sigma = jax.random.uniform(keys[3]) * max_sigma + 0.1
    image = jnp.where(smooth[..., None], _blur_inside(image, box, kernel_size, sigma, max_kernel), image)

    def drop(rng, image, fill):
        target_rng, rng = jax.random.split(rng)
        target = jax.random.uniform(target_rng) * max_drop * height * width
        block = (int(height * max_block), int(width * max_block))

        def body(state):
            total, count, mask, rng = state
            rng, rect_rng = jax.random.split(rng)
            rect, (top, bottom, left, right) = _rectangle(rect_rng, (height, width), tolr, block)
            return total + (bottom - top) * (right - left), count + 1, mask | rect, rng

        _, _, mask, _ = jax.lax.while_loop(lambda s: (s[0] < target) & (s[1] < max_rectangles), body,
                                           (0.0, 0, jnp.zeros((height, width), bool), rng))
        return jnp.where(mask[..., None], fill, image)

    image = drop(keys[4], image, jax.random.normal(keys[5], image.shape, image.dtype))
    return jnp.where(use_partner, drop(keys[6], image, partner), image)
