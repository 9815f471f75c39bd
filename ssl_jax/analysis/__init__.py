"""Analyses of frozen ViTs (Park et al. 2023, "What Do Self-Supervised Vision Transformers Learn?")
and their pictures: pure functions in `metrics.py`, matplotlib figures in `figures.py`."""
