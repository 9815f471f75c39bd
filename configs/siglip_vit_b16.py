"""SigLIP ViT-B/16 (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023).

    python -m ssl_jax.main --config=configs/siglip_vit_b16.py --workdir=DIR             # the paper's recipe
    FLICKR8K_DIR=.../flickr8k python -m ssl_jax.main --config=configs/siglip_vit_b16.py:flickr8k --workdir=DIR
    python -m ssl_jax.main --config=configs/siglip_vit_b16.py:smoke --config.dataset.data_dir=.../flickr8k --workdir=DIR

The official code is google-research/big_vision: `trainers/proj/image_text/siglip.py` (the loss),
`models/proj/image_text/two_towers.py` (t, b), `models/proj/image_text/text_transformer.py` (the text
tower), `configs/proj/image_text/siglip_lit_coco.py` (the released example config: token_len 16,
temperature_init 10, preprocessing). Values that big_vision does not ship a config for (WebLI
pretraining) are the paper's (Section 4). WebLI is not public: `dataset` names an image-caption folder.
docs/FIDELITY.md (siglip_vit_b16) lists every field and each deliberate difference.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base
from ssl_jax import config_image_text as it


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 32768  # paper Section 4: batch size 32k
    c.num_epochs = 1  # WebLI is not public: set the epochs of your data (the paper counts examples seen)
    it.use_image_text_data(c)
    c.model = base.vit_model("base", patch_size=16, img_size=224, init="mae")  # B/16; big_vision vit: xavier Dense
    c.text = it.text_section(  # text_transformer.py: B width 768, 12 layers, 12 heads; pool_type "last" (default)
        style="siglip", pool="last", vocab_size=32_000,  # text_transformer.py vocab_size=32_000 (c4_en sentencepiece)
        max_len=16, width=768, depth=12, heads=12,  # siglip_lit_coco.py token_len=16
        sticky_eos=True)  # big_vision ops_text tokenize(eos="sticky"): "last" pools an EOS
    c.method = ml_collections.ConfigDict()
    c.method.name = "siglip"
    c.method.embed_dim = 768  # two_towers.py out_dim: the image width for B
    c.method.temperature_init = 10.0  # paper Section 3.2: t' = log 10; siglip_lit_coco.py temperature_init=10.0
    c.method.bias_init = -10.0  # paper Section 3.2: b = -10
    c.method.chunked = True  # paper Section 3.3: the chunked implementation (siglip.py has the full matrix)
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # big_vision scale_by_adam + decoupled weight decay
    c.optim.lr = 1e-3  # paper Section 4: learning rate 1e-3
    c.optim.lr_reference_batch = 32768  # the paper's lr is for its batch: linear scaling from it
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0  # big_vision decay_type "cosine" (to 0)
    c.optim.warmup_epochs = 0.02  # not stated for WebLI; siglip_lit_coco.py warms up 3% of the steps
    c.optim.weight_decay = 1e-4  # paper Section 4: weight decay 1e-4
    c.optim.weight_decay_end = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95  # paper Section 4: beta2 = 0.95 for stability
    c.optim.eps = 1e-8  # optax scale_by_adam default
    c.optim.clip_grad = 1.0  # siglip_lit_coco.py grad_clip_norm = 1.0
    c.optim.clip_grad_scope = "global"
    # siglip_lit_coco.py evaluation: resize(224)|value_range(-1, 1): no crop, no augmentation in the paper's
    # WebLI runs (the example config's flip and RandAugment are for its 5k-step COCO fine-tune).
    c.augment = it.image_text_augment(size=224, scale=(1.0, 1.0), mean=it.MINUS_ONE_ONE[0], std=it.MINUS_ONE_ONE[1])
    return it.image_text_eval(c)


def flickr8k_config() -> ml_collections.ConfigDict:
    c = it.use_flickr8k(imagenet_config())
    c.optim.lr_reference_batch = 64  # the paper's peak lr 1e-3 unscaled at batch 64
    return c


def smoke_config() -> ml_collections.ConfigDict:
    return it.use_smoke_image_text(flickr8k_config())


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'flickr8k' (= 'cifar10'), 'smoke': `config_image_text.select_preset`."""
    return it.select_preset(preset, imagenet_config, flickr8k_config, smoke_config, __file__)
