"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

Every method is a loss over views plugged into one pure train step
(`ssl_jax.step.train_step`); see docs/ARCHITECTURE.md.
"""
