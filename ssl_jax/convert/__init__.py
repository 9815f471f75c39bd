"""Loading official PyTorch checkpoints into ssl_jax's ViT (`pytorch.py`)."""
