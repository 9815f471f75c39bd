"""SLIP ViT-B/16 (Mu, Kirillov, Wagner & Xie, "SLIP: Self-supervision meets Language-Image Pre-training", 2022).

    python -m ssl_jax.main --config=configs/slip_vit_b16.py --workdir=DIR             # the paper's recipe (YFCC15M)
    FLICKR8K_DIR=.../flickr8k python -m ssl_jax.main --config=configs/slip_vit_b16.py:flickr8k --workdir=DIR
    python -m ssl_jax.main --config=configs/slip_vit_b16.py:smoke --config.dataset.data_dir=.../flickr8k --workdir=DIR

Defaults are facebookresearch/SLIP's: `main.py` flags (cited as `--flag`), `models.py` (`SLIP_VITB16`,
`SLIP.__init__`, `_build_mlp`), `losses.py` (`SLIPLoss`). docs/FIDELITY.md (slip_vit_b16) lists every
field and each deliberate difference (one augmentation recipe for all three views).
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base
from ssl_jax import config_image_text as it


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 4096  # README: ViT-B 64 GPUs x --batch-size 64
    c.num_epochs = 25  # --epochs 25
    it.use_image_text_data(c)
    c.model = base.vit_model("base", patch_size=16, img_size=224, init="dino")  # models.py: timm vit_base_patch16_224
    c.text = it.text_section(  # models.py SLIP_VITB16: context 77, vocab 49408, width 512, 12 layers, 8 heads
        style="clip", pool="eot", vocab_size=49408, max_len=77, width=512, depth=12, heads=8)
    c.method = ml_collections.ConfigDict()
    c.method.name = "slip"
    c.method.embed_dim = 512  # models.py SLIP_VITB16: embed_dim=512
    c.method.logit_scale_init = 1 / 0.07  # models.py CLIP.__init__: logit_scale = log(1 / 0.07)
    c.method.max_logit_scale = 100.0  # main.py: logit_scale.data.clamp_(0, 4.6052)
    # --ssl-mlp-dim 4096, --ssl-emb-dim 256; _build_mlp: Linear-SyncBN-ReLU-Linear-SyncBN-ReLU-Linear
    c.method.ssl_mlp = base.mlp(4096, 256, 3, last_bias=True, init="torch")
    c.method.ssl_scale = 1.0  # --ssl-scale 1.0
    c.method.ssl_temperature = 0.1  # --ssl-temp 0.1
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # main.py: torch.optim.AdamW
    c.optim.lr = 3e-3  # --lr 3e-3 (not scaled with the batch)
    c.optim.lr_reference_batch = 4096
    c.optim.lr_scaling = "linear"
    c.optim.warmup_lr = 1e-6  # --lr-start 1e-6
    c.optim.min_lr = 1e-5  # --lr-end 1e-5
    c.optim.warmup_epochs = 1  # --warmup-epochs 1
    c.optim.weight_decay = 0.1  # --wd 0.1 (main.py: biases and norms excluded)
    c.optim.weight_decay_end = 0.1
    c.optim.b1 = 0.9  # --betas 0.9 0.98
    c.optim.b2 = 0.98
    c.optim.eps = 1e-8  # --eps 1e-8
    # main.py: view 0 (CLIP) RandomResizedCrop(224, scale=(0.5, 1.0)); views 1, 2 SimCLR's augmentation.
    # Deliberate: all three views take the SimCLR recipe (one augmentation per crop group here).
    c.augment = base.two_view_augment(size=224, scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.4,
                                      hue=0.1, blur_prob=(0.5, 0.5), solarize_prob=(0.0, 0.0))
    c.augment.global_crops.number = 3  # two_view_augment normalises with ImageNet statistics, as main.py
    return it.image_text_eval(c)


def flickr8k_config() -> ml_collections.ConfigDict:
    c = it.use_flickr8k(imagenet_config(), image_views=3)
    c.augment.blur_prob = (0.0, 0.0, 0.0)  # no blur at 64 px, as the CIFAR-10 presets
    c.method.ssl_mlp = base.mlp(512, 128, 3, last_bias=True, init="torch")
    c.optim.lr = 5e-4  # the CLIP preset's rate at batch 64 (3e-3 is for batch 4096)
    c.optim.lr_reference_batch = 64
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = it.use_smoke_image_text(flickr8k_config())
    c.method.ssl_mlp = base.mlp(32, 16, 3, last_bias=True, init="torch")
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'flickr8k' (= 'cifar10'), 'smoke': `config_image_text.select_preset`."""
    return it.select_preset(preset, imagenet_config, flickr8k_config, smoke_config, __file__)
