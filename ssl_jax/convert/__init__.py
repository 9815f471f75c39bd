"""Official PyTorch checkpoints -> ssl_jax parameters: reading and unwrapping files, the ViT's
architecture from its shapes (`pytorch.py`), and the name mapping of every layout (`names.py`)."""
