"""Config sections and presets the image-text configs (configs/clip_*, siglip_*, slip_*, lit_*) share.

`text_section` is `config.text` (the tokenizer and `ssl_jax.models.text.TextTower`); `use_flickr8k`
switches a recipe to the Flickr8k image-caption files (a CPU-hour run on 2 cores); `use_smoke_image_text`
shrinks it to seconds. Image-caption data is `config.dataset.name = "image_text"`
(`ssl_jax/data/image_text.py`); kNN, zero-shot and retrieval read `config.eval` (`ssl_jax/eval/`).
"""
from __future__ import annotations

import os

import ml_collections

from ssl_jax import config_base

# openai/CLIP `clip/clip.py` `_transform`: Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, ...)).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# big_vision `value_range(-1, 1)`: (x - 0.5) / 0.5.
MINUS_ONE_ONE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Flickr8k's README (shared/data/flickr8k): 6,000 / 1,000 / 1,000 images, 128 px, 5 captions each.
FLICKR8K_DIR = os.environ.get("FLICKR8K_DIR", "")


def text_section(*, style: str, pool: str, vocab_size: int, max_len: int, width: int, depth: int, heads: int,
                 sticky_eos: bool = False) -> ml_collections.ConfigDict:
    """`config.text`: tokenizer ("" = a SentencePiece model trained on the training captions, stored in the
    workdir), `sticky_eos` (pad with EOS), and the TextTower's fields (`ssl_jax.models.text`)."""
    return ml_collections.ConfigDict({"tokenizer": "", "vocab_size": vocab_size, "max_len": max_len,
                                      "sticky_eos": sticky_eos, "style": style, "pool": pool, "width": width,
                                      "depth": depth, "heads": heads})


def use_image_text_data(c: ml_collections.ConfigDict, *, data_dir: str = "",
                        tfds_name: str = "") -> ml_collections.ConfigDict:
    """config.dataset for image-caption pairs: a folder of img2dataset files or tar shards under data_dir,
    or the tfds dataset tfds_name (`ssl_jax/data/image_text.py`, which shuffles the whole split's indices
    each epoch: shuffle_buffer is not read)."""
    c.dataset.update({"name": "image_text", "data_dir": data_dir, "train_split": "train", "download": False})
    c.dataset.tfds_name = tfds_name
    return c


def image_text_augment(*, size: int, scale: tuple[float, float], mean, std, views: int = 1,
                       flip_prob: float = 0.0) -> ml_collections.ConfigDict:
    """`views` random-resized crops (bicubic) with an optional flip, no colour, normalised with mean/std."""
    a = config_base.single_view_augment(size=size, scale=scale, flip_prob=flip_prob)
    a.global_crops.number = views
    a.mean, a.std = mean, std
    return a


def image_text_eval(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.eval` fields of zero-shot (`ssl_jax/eval/zero_shot.py`) and retrieval (`eval/retrieval.py`)."""
    c.eval.zeroshot = ml_collections.ConfigDict({"classes": "cifar10", "split": "test"})
    c.eval.retrieval_split = "test"
    return c


def use_flickr8k(c: ml_collections.ConfigDict, *, image_views: int = 1) -> ml_collections.ConfigDict:
    """Flickr8k (`config.dataset.data_dir`, default $FLICKR8K_DIR) at 64 px with the CIFAR-10 ViT, a 2-block
    text tower of width 128 and a 4k-piece tokenizer; kNN and zero-shot on CIFAR-10 (tfds), retrieval on
    Flickr8k's test split. 10 epochs of 93 steps at batch 64. Returns `c`."""
    config_base.use_cifar10(c)
    use_image_text_data(c, data_dir=FLICKR8K_DIR)
    c.eval.dataset.name = "cifar10"
    c.eval.dataset.num_classes = 10
    c.eval.resize = c.eval.crop = 64
    c.eval.every_steps = 0
    c.batch_size = 64
    c.num_epochs = 10
    c.model = config_base.vit_model(patch_size=8, img_size=64, init=c.model.get("init", "dino"))
    c.model.update({**config_base.CIFAR10_VIT, "img_size": 64})
    c.text.update({"vocab_size": 4096, "max_len": 32, "width": 128, "depth": 2, "heads": 4})
    c.method.embed_dim = 128
    c.augment.global_crops.size = 64
    c.augment.global_crops.number = image_views
    c.optim.warmup_epochs = 1
    return image_text_eval(c)


def use_smoke_image_text(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`use_flickr8k` shrunk to seconds: 32 px, one-block towers of width 32, 64 training pairs. Returns `c`."""
    config_base.use_smoke(c)
    c.dataset.train_split = "train[:64]"
    c.eval.resize = c.eval.crop = 32
    c.eval.zeroshot.split = "test[:200]"
    c.eval.retrieval_split = "test[:40]"
    c.model.update({"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32})
    c.text.update({"vocab_size": 256, "max_len": 16, "width": 32, "depth": 1, "heads": 2})
    c.method.embed_dim = 32
    c.augment.global_crops.size = 32
    return c


def select_preset(preset: str, imagenet_config, flickr8k_config, smoke_config, config_file: str):
    """An image-text config's presets: '' or 'imagenet' (the paper's recipe), 'flickr8k' (a CPU hour; also
    under 'cifar10', the CPU preset's name in every config: it trains on Flickr8k and evaluates kNN and
    zero-shot on CIFAR-10), 'smoke' (seconds)."""
    presets = {"imagenet": imagenet_config, "flickr8k": flickr8k_config, "cifar10": flickr8k_config,
               "smoke": smoke_config}
    return config_base.select_preset(presets, preset, config_file)
