#!/usr/bin/env bash
# The GPU speed targets in one run: DINO ViT-S/16 and MAE ViT-B/16 at the papers' per-GPU batch
# (64: DINO's 1024 over 16 GPUs, MAE's 4096 over 64) in bfloat16 (the configs' compute dtype),
# ssl_jax's step beside the PyTorch reference under AMP when torch, timm and lightly are
# installed (`pip install -e '.[bench]'`), else ssl_jax alone. "of peak" is then the
# model-FLOPs utilisation against the bfloat16 matmul peak measured in the same process.
#
#     bash benchmarks/gpu_targets.sh [extra step_time flags, applied to both]
set -euo pipefail
cd "$(dirname "$0")/.."
reference=pytorch
python -c "import torch, timm, lightly" 2>/dev/null || { reference=none; echo "no torch/timm/lightly: ssl_jax alone"; }
python -c "import jax; print(jax.devices())"
python -m benchmarks.step_time --config=configs/dino_small.py --config.batch_size=64 --steps=20 \
    --reference="$reference" "$@"
python -m benchmarks.step_time --config=configs/mae_base.py --config.batch_size=64 --steps=20 \
    --reference="$reference" "$@"
