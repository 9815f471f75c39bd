"""Semi-supervised learning with self-supervised clustering (Fini et al., "Semi-supervised Learning
Made Simple with Self-supervised Clustering", CVPR 2023): what Suave (`methods/suave.py`, built
from SwAV's functions) and Daino (`methods/daino.py`, from DINO's) share.

    the clustering method's prototypes become class prototypes: K = number of classes
    targets = one-hot(label)            for a labelled image            (batch["label"] >= 0)
            = the method's own targets  for an unlabelled one (SwAV: Sinkhorn codes, balanced over
                                        the unlabelled images only; DINO: the centred, sharpened teacher)
    loss = the method's one cross-entropy of every crop's prediction against those targets

So the labelled images train the prototypes as a classifier and the unlabelled ones cluster around
them, with a single loss. Labels come from the pipeline (`config.dataset.fields = ("label",)`);
`config.dataset.labelled_fraction` (e.g. 0.1) keeps a fixed subset of the split labelled and
gives every other image the label -1, which is never read (`losses.labelled_targets`). The
paper draws labelled and unlabelled images into separate batches; here they share one batch,
in proportion to the labelled fraction.

The trained prototypes are a classifier: `class_logits` scores eval images against them
(`python -m ssl_jax.evaluate --eval=classifier`, the paper's top-1). `dataset.labelled_only=True`
trains the same network, crops and loss on the labelled images alone: the supervised-only
baseline on the same labels.
"""
from __future__ import annotations

from ssl_jax.errors import UserError


def check_semi_supervised(config, num_prototypes: int, field: str) -> None:
    """Labels in the batch, and one prototype per class."""
    if "label" not in tuple(config.dataset.get("fields", ())):
        raise UserError("semi-supervised clustering needs the labels in the batch: "
                        "set config.dataset.fields = ('label',)")
    if num_prototypes != config.dataset.num_classes:
        raise UserError(f"the prototypes are class prototypes: set config.{field}={config.dataset.num_classes} "
                        f"(config.dataset.num_classes), got {num_prototypes}")
