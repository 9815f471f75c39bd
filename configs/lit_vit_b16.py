"""LiT ViT-B/16 (Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", 2022).

    python -m ssl_jax.main --config=configs/lit_vit_b16.py --config.init_from=IMAGE_TOWER --workdir=DIR
    FLICKR8K_DIR=.../flickr8k python -m ssl_jax.main --config=configs/lit_vit_b16.py:flickr8k \
        --config.init_from=DINO_CIFAR10_WORKDIR --workdir=DIR
    python -m ssl_jax.main --config=configs/lit_vit_b16.py:smoke --config.dataset.data_dir=.../flickr8k --workdir=DIR

Defaults are google-research/big_vision `configs/proj/image_text/lit_coco.py` (the released LiT recipe on
COCO captions; `trainers/proj/image_text/contrastive.py`): the image tower is locked (`schedule`
('img/.*', None)) and has no head (`img_head=False`), the text tower maps to its width. IMAGE_TOWER is
any weights `ssl_jax/init_from.py` reads for `config.model` (an ssl_jax workdir, e.g. DINO's, whose
teacher is taken; an official ViT-B/16 checkpoint). docs/FIDELITY.md (lit_vit_b16) lists every field.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base
from ssl_jax import config_image_text as it


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 4096  # lit_coco.py batch_size = 4096
    c.num_epochs = 173  # lit_coco.py total_steps 5_000 x 4096 / 118,287 COCO train images
    it.use_image_text_data(c, tfds_name="coco_captions")  # lit_coco.py dataset
    c.init_from = ""  # lit_coco.py model_init: the image tower's weights (required: see the docstring)
    c.init_from_strict = False  # the text tower starts fresh ...
    c.init_from_required = "teacher/backbone/"  # ... the locked image tower must load
    c.model = base.vit_model("base", patch_size=16, img_size=224)  # lit_coco.py img='B/16', pool_type 'tok'
    c.text = it.text_section(  # lit_coco.py txt='bert_base': BERT-base sizes (768 wide, 12 layers, 12 heads)
        style="siglip", pool="last", vocab_size=32_000, max_len=16, width=768, depth=12, heads=12,  # token_len=16
        sticky_eos=True)
    c.method = ml_collections.ConfigDict()
    c.method.name = "lit"
    c.method.embed_dim = 768  # lit_coco.py out_dim (None, 768): the text head maps to the B/16 width
    c.method.temperature_init = 10.0  # lit_coco.py temperature_init = 10.0
    c.method.allow_random_tower = False  # True only in :smoke (no pretrained tower there)
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # lit_coco.py optax_name scale_by_adam, wd 0.01
    c.optim.lr = 1e-3  # lit_coco.py lr = 0.001
    c.optim.lr_reference_batch = 4096
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0  # decay_type "cosine"
    c.optim.warmup_epochs = 150 / (118_287 // 4096)  # warmup_steps = max(0.03 * 5000, 100) = 150
    c.optim.weight_decay = 0.01  # lit_coco.py wd = 0.01
    c.optim.weight_decay_end = 0.01
    c.optim.b1 = 0.9  # optax scale_by_adam defaults
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_grad = 1.0  # lit_coco.py grad_clip_norm = 1.0
    c.optim.clip_grad_scope = "global"
    # lit_coco.py pp_train: resize(224)|flip_lr|randaug(2,10)|value_range(-1,1); RandAugment left out (deliberate).
    c.augment = it.image_text_augment(size=224, scale=(1.0, 1.0), mean=it.MINUS_ONE_ONE[0], std=it.MINUS_ONE_ONE[1],
                                      flip_prob=0.5)
    return it.image_text_eval(c)


def flickr8k_config() -> ml_collections.ConfigDict:
    c = it.use_flickr8k(imagenet_config())
    c.dataset.tfds_name = ""
    c.model.init = "dino"
    c.augment.mean, c.augment.std = base.CIFAR10_MEAN, base.CIFAR10_STD  # the tower of dino_small.py:cifar10
    c.optim.lr_reference_batch = 64  # lit_coco.py's peak lr 1e-3 unscaled at batch 64
    return c


def smoke_config() -> ml_collections.ConfigDict:
    c = it.use_smoke_image_text(flickr8k_config())
    c.method.allow_random_tower = True
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'flickr8k' (= 'cifar10'), 'smoke': `config_image_text.select_preset`."""
    return it.select_preset(preset, imagenet_config, flickr8k_config, smoke_config, __file__)
