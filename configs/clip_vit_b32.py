"""CLIP ViT-B/32 (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021).

    python -m ssl_jax.main --config=configs/clip_vit_b32.py --workdir=DIR             # the paper's recipe (400M pairs)
    FLICKR8K_DIR=.../flickr8k python -m ssl_jax.main --config=configs/clip_vit_b32.py:flickr8k --workdir=DIR
    python -m ssl_jax.main --config=configs/clip_vit_b32.py:smoke --config.dataset.data_dir=.../flickr8k --workdir=DIR
    python -m ssl_jax.evaluate --workdir=DIR --eval=zeroshot,retrieval

OpenAI released the model (openai/CLIP `clip/model.py`), not its training code: the architecture and
initialisation are cited from `model.py`, the training hyper-parameters from the paper (Section 2.5,
Appendix F, Tables 19-20). The data (WIT, 400M pairs) is not public: `dataset` names an image-caption
folder. docs/FIDELITY.md (clip_vit_b32) lists every field and each deliberate difference.
"""
from __future__ import annotations

import ml_collections

from ssl_jax import config_base as base
from ssl_jax import config_image_text as it


def imagenet_config() -> ml_collections.ConfigDict:
    c = base.base_config()
    c.batch_size = 32768  # paper Table 19: minibatch size 32,768
    c.num_epochs = 32  # paper Section 2.5: "train all models for 32 epochs"
    it.use_image_text_data(c)
    # ViT-B/32 (model.py VisionTransformer); xavier-initialised attention as torch.nn.MultiheadAttention's
    c.model = base.vit_model("base", patch_size=32, img_size=224, init="mae")
    c.text = it.text_section(  # model.py build_model for ViT-B/32: context 77, vocab 49408, width 512, 8 heads, 12 layers
        style="clip", pool="eot", vocab_size=49408, max_len=77, width=512, depth=12, heads=8)
    c.method = ml_collections.ConfigDict()
    c.method.name = "clip"
    c.method.embed_dim = 512  # model.py: embed_dim of ViT-B/32 (text_projection [512, 512])
    c.method.logit_scale_init = 1 / 0.07  # model.py: logit_scale = log(1 / 0.07)
    c.method.max_logit_scale = 100.0  # paper Section 2.5: logits scaled by at most 100
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # paper Section 2.5: Adam with decoupled weight decay
    c.optim.lr = 5e-4  # Table 20: ViT-B/32 learning rate 5e-4
    c.optim.lr_reference_batch = 32768  # the paper's lr is for its batch: linear scaling from it
    c.optim.lr_scaling = "linear"
    c.optim.min_lr = 0.0  # Section 2.5: cosine schedule (to 0)
    c.optim.warmup_epochs = 2000 / (400_000_000 // 32768)  # Table 19: 2000 warm-up iterations
    c.optim.weight_decay = 0.2  # Table 20: weight decay 0.2
    c.optim.weight_decay_end = 0.2
    c.optim.b1 = 0.9  # Table 19: Adam beta1 0.9
    c.optim.b2 = 0.98  # Table 19: Adam beta2 0.98 (ViT)
    c.optim.eps = 1e-6  # Table 19: Adam epsilon 1e-6 (ViT)
    # Section 2.5: random square crops of resized images, the only augmentation; clip/clip.py Normalize.
    c.augment = it.image_text_augment(size=224, scale=(0.9, 1.0), mean=it.CLIP_MEAN, std=it.CLIP_STD)
    return it.image_text_eval(c)


def flickr8k_config() -> ml_collections.ConfigDict:
    c = it.use_flickr8k(imagenet_config())
    c.optim.lr_reference_batch = 64  # the paper's peak lr 5e-4 unscaled at batch 64 (scaled it would be 1e-6)
    return c


def smoke_config() -> ml_collections.ConfigDict:
    return it.use_smoke_image_text(flickr8k_config())


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """'' or 'imagenet', 'flickr8k' (= 'cifar10'), 'smoke': `config_image_text.select_preset`."""
    return it.select_preset(preset, imagenet_config, flickr8k_config, smoke_config, __file__)
