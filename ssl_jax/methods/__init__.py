"""Method registry: config.method.name -> the class implementing `ssl_jax.methods.base.Method`."""
from __future__ import annotations

from ssl_jax.errors import UserError
from ssl_jax.methods.attention_transfer import AttentionTransfer
from ssl_jax.methods.byol import BYOL
from ssl_jax.methods.clip import CLIP
from ssl_jax.methods.daino import Daino
from ssl_jax.methods.deit import DeiT
from ssl_jax.methods.dino import DINO
from ssl_jax.methods.dinov2 import DINOv2
from ssl_jax.methods.ibot import IBOT
from ssl_jax.methods.ijepa import IJEPA
from ssl_jax.methods.instance import InstanceDiscrimination
from ssl_jax.methods.lit import LiT
from ssl_jax.methods.mae import MAE
from ssl_jax.methods.mocov3 import MoCoV3
from ssl_jax.methods.mp3 import MP3
from ssl_jax.methods.simmim import SimMIM
from ssl_jax.methods.simclr import SimCLR
from ssl_jax.methods.rotation import Rotation
from ssl_jax.methods.siglip import SigLIP
from ssl_jax.methods.simsiam import SimSiam
from ssl_jax.methods.sit import SiT
from ssl_jax.methods.slip import SLIP
from ssl_jax.methods.suave import Suave
from ssl_jax.methods.swav import SwAV
from ssl_jax.methods.unic import UNIC

METHODS = {"dino": DINO, "simclr": SimCLR, "byol": BYOL, "mocov3": MoCoV3, "simsiam": SimSiam, "ibot": IBOT,
           "dinov2": DINOv2}

# Masked image modelling: one view, masks drawn inside the step (ssl_jax/masks.py).
METHODS.update({"mae": MAE, "simmim": SimMIM, "ijepa": IJEPA})

# Clustering, pretext tasks and semi-supervised clustering.
METHODS.update({"swav": SwAV, "rotation": Rotation, "mp3": MP3,
                "instance": InstanceDiscrimination, "suave": Suave, "daino": Daino,
                "sit": SiT})

# Distillation from frozen teachers (ssl_jax/methods/frozen_teacher.py).
METHODS.update({"deit": DeiT, "attention_transfer": AttentionTransfer, "unic": UNIC})
# Language supervision: image-caption batches (ssl_jax/data/image_text.py), two towers (methods/image_text.py).
METHODS.update({"clip": CLIP, "siglip": SigLIP, "slip": SLIP, "lit": LiT})


def build_method(config, steps_per_epoch: int):
    """Instantiates the method named by config.method.name."""
    name = config.method.name
    if name not in METHODS:
        raise UserError(f"unknown method {name!r} (config.method.name); available: {sorted(METHODS)}")
    return METHODS[name](config, steps_per_epoch)
