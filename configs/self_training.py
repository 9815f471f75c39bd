"""Self-training from a pretrained checkpoint (`python -m ssl_jax.self_train --config=configs/self_training.py`).

    teacher  = the checkpoint fine-tuned (protocol.finetune) on the labelled fraction of the train split
    selected = for each class, the top_k unlabelled images by the teacher's softmax score for that
               class, among the images that have the class in their top_p scores (Yalniz et al. 2019,
               Sec. 3.1 "Data selection and labelling"; an image can be selected for up to top_p classes,
               and then trains once under each)
    student  = trained on `selected` with their pseudo-labels (protocol.finetune with the `student`
               fields: Noisy Student's noise), then fine-tuned on the labelled images (protocol.finetune)

Yalniz et al. released no training code; Noisy Student's noise values are google-research/noisystudent's.
Presets: '' (the papers' values), 'cifar10' (CPU scale), 'smoke' (seconds).
"""
from __future__ import annotations

import ml_collections

from ssl_jax.config_base import select_preset


def imagenet() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # The labelled subset: `dataset.labelled_fraction`'s images (ssl_jax/data/pipeline.py `_labelled`, drawn
    # from the run's seed), 10 %: the semi-supervised ImageNet benchmark of SimCLR and Suave.
    c.labelled_fraction = 0.1
    c.top_k = 16_000  # Yalniz et al. Sec. 4.1: K = 16k images per class by default ...
    c.top_p = 10  # ... with P = 10 classes kept per image (recalled from the paper, not re-checked: docs/FIDELITY.md)
    # Yalniz et al. Sec. 3.1: the student is trained from scratch on the pseudo-labelled images;
    # noisystudent main.py: --init_model=False (the student is not initialised from the teacher).
    # 'pretrained': the checkpoint's backbone instead.
    c.student_init = "random"
    # Noisy Student's noise, fields of protocol.finetune that the student's training on pseudo-labels
    # overrides (0 / '' turns each off):
    c.student = ml_collections.ConfigDict()
    c.student.dropout = 0.5  # noisystudent efficientnet_builder.py: dropout_rate 0.5 (B7, L2) before the classifier
    c.student.drop_path = 0.2  # efficientnet_builder.efficientnet: stochastic_depth_rate=0.2 (survival 0.8 at the end)
    # noisystudent main.py --randaug_layer=2 --randaug_mag=27 (EfficientNet's level scale, beyond its
    # _MAX_LEVEL 10); timm's RandAugment clips magnitudes to [0, 10]: its strongest, m10 (docs/FIDELITY.md)
    c.student.randaugment = "rand-m10-n2-inc1"
    return c


def cifar10() -> ml_collections.ConfigDict:
    """CPU scale: 45,000 unlabelled images in 10 classes; the student starts from the checkpoint, since
    the protocol's single epoch does not train a ViT from scratch."""
    c = imagenet()
    c.top_k = 2000  # below the ~4,500 unlabelled images per class, so the teacher's ranking matters
    c.top_p = 1  # with 10 classes, P = 10 would keep every class of every image
    c.student_init = "pretrained"
    return c


def smoke() -> ml_collections.ConfigDict:
    c = cifar10()
    c.top_k = 20
    return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    return select_preset({"imagenet": imagenet, "cifar10": cifar10, "smoke": smoke}, preset, __file__)
