"""MAE reconstructions of a frozen checkpoint: original / masked / reconstruction (/ reconstruction
with the visible patches pasted back), as in MAE's `demo/mae_visualize.ipynb`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def unpatchify(patches: np.ndarray, patch_size: int) -> np.ndarray:
    """[B, N, p*p*C] -> [B, H, W, C]: the inverse of `ssl_jax.models.vit.patchify` (square grid)."""
    batch, num, dim = patches.shape
    side, p = int(round(num**0.5)), patch_size
    channels = dim // (p * p)
    grid = np.asarray(patches).reshape(batch, side, side, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, side * p, side * p, channels)


def mae_reconstructions(method, params, inputs: np.ndarray, mean, std, seed: int = 0) -> dict[str, np.ndarray]:
    """Display images [B, H, W, 3] in [0, 1]: 'original', 'masked' (removed patches grey),
    'reconstruction' and 'visible + reconstruction', for an MAE `method` (ssl_jax.methods.mae)
    with params {'backbone', 'decoder'} on normalised inputs [B, H, W, 3], masks drawn from `seed`.

    A model trained with norm_pix_loss predicts each patch normalised by its own mean and
    std; those are taken from the original patch to show it (what MAE's visualisations of
    such models do), so only the patch's structure is the model's."""
    from ssl_jax.models.vit import patchify

    pred, m = jax.jit(lambda p, x: method.reconstruct(p, x, jax.random.key(seed)))(params, jnp.asarray(inputs))
    pred, mask = np.asarray(pred), np.asarray(m.mask)
    patches = np.asarray(patchify(jnp.asarray(inputs), method.patch_size))
    if method.norm_pix_loss:
        mu = patches.mean(-1, keepdims=True)
        sigma = np.sqrt(patches.var(-1, ddof=1, keepdims=True) + 1e-6)
        pred = pred * sigma + mu
    show = lambda x: np.clip(unpatchify(x, method.patch_size) * np.asarray(std) + np.asarray(mean), 0, 1)  # noqa: E731
    grey = (0.5 - np.asarray(mean)) / np.asarray(std)  # a grey patch in normalised space
    masked = np.where(mask[..., None], np.tile(grey, method.patch_size**2), patches)
    pasted = np.where(mask[..., None], pred, patches)
    return {"original": show(patches), "masked": show(masked), "reconstruction": show(pred),
            "visible + reconstruction": show(pasted)}
