"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

Every method is a loss over views plugged into one pure train step
(`ssl_jax.core.step.train_step`); see docs/ARCHITECTURE.md.

    model = ssl_jax.load(path)        # a workdir, a checkpoint step or a weights file (ssl_jax/api.py)
    features = model.embed(images)    # [B, D]
"""


def __getattr__(name):
    """`ssl_jax.load` (ssl_jax/api.py), imported on first use so that `import ssl_jax` stays cheap."""
    if name == "load":
        from ssl_jax.api import load

        return load
    raise AttributeError(f"module 'ssl_jax' has no attribute {name!r}")
