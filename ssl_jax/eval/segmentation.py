"""Linear semantic segmentation on frozen patch features: DINOv2's "linear" and "+ms" protocols.

The reference is facebookresearch/dinov2 `dinov2/eval/segmentation/models/decode_heads/linear_head.py`
(`BNHead`) in mmsegmentation 0.x, with the released configs `dinov2_vit*14_ade20k_linear_config.py`
and `..._ms_config.py` (values: configs/eval_protocols.py, `segmentation`):

    tokens   = the frozen ViT's normed patch tokens of the last n blocks    [B, h, w, n * D]
               (n = 1: "linear", in_index=[3]; n = 4: "+ms", in_index=[0, 1, 2, 3], concatenated)
    logits   = Linear_1x1(SyncBatchNorm(tokens))                             [B, h, w, C]
    training : logits resized bilinearly (align_corners=False) to the label size, cross-entropy
               ignoring void (255), averaged over *all* pixels (mmseg's avg_non_ignore=False);
               AdamW, linear warm-up then poly decay, per iteration
    test     : logits -> input size -> stored label size (two bilinear resizes, mmseg's
               encode_decode then whole_inference), softmax, averaged over scales and flips (+ms),
               argmax; mIoU over the classes present (mmseg's mean_iou: a class with an empty
               union is NaN and left out), pixel accuracy (aAcc) and per-class IoU.

Deliberate differences (docs/FIDELITY.md, "Dense evaluation"): the training images are not
augmented (the reference: random rescale 0.5-2.0, 512 crops, flip, photometric distortion),
so the frozen features of the train split are computed once and the head trains on them (the
whole run is one jitted `lax.scan`); images are resized to the protocol's fixed size instead of
a kept aspect ratio with sliding-window 512 crops at test time.
"""
from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.data import segmentation as data
from ssl_jax.errors import UserError


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] weights of PyTorch's bilinear resize along one axis with align_corners=False:
    source coordinate (i + 0.5) * in / out - 0.5, clamped at 0, between its two neighbours."""
    source = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(int), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    weight = source - low
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.arange(out_size), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(out_size), high), weight)
    return matrix


@functools.lru_cache(maxsize=64)
def resize_matrices(sizes: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """The row and column matrices of successive bilinear resizes through sizes ((h, w), ..., (H, W))."""
    rows, cols = np.eye(sizes[0][0]), np.eye(sizes[0][1])
    for (h, w), (new_h, new_w) in zip(sizes, sizes[1:]):
        rows, cols = bilinear_matrix(new_h, h) @ rows, bilinear_matrix(new_w, w) @ cols
    return rows, cols


def resize_logits(logits, rows, cols):
    """logits [..., h, w, C] -> [..., H, W, C] with rows [H, h], cols [W, w] (jnp or np arrays)."""
    if isinstance(logits, jax.Array):
        return jnp.einsum("Hh,...hwc,Ww->...HWc", rows, logits, cols)
    return np.einsum("Hh,...hwc,Ww->...HWc", rows, logits, cols, optimize=True)


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, row = label, column = prediction, void (255) pixels left out."""
    valid = label != data.VOID
    if np.any(label[valid] >= num_classes):
        raise UserError(f"a label map holds class {int(label[valid].max())} but there are {num_classes} classes "
                        f"(void must be 255)")
    return np.bincount(label[valid].astype(np.int64) * num_classes + pred[valid],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_metrics(confusion: np.ndarray) -> dict[str, object]:
    """mmseg's `total_area_to_metrics` for mIoU: per-class IoU = intersection / union (NaN for a class
    neither labelled nor predicted), mIoU = their nan-mean, aAcc = correct / labelled pixels."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / union
    return {"mIoU": float(np.nanmean(iou)), "aAcc": float(intersection.sum() / confusion.sum()), "IoU": iou}


class BNHead(nn.Module):
    """DINOv2's BNHead: [B, h, w, F] -> logits [B, h, w, C]. SyncBatchNorm (torch defaults: affine,
    eps 1e-5, momentum 0.1 = flax 0.9; statistics over the whole batch), then mmseg's `conv_seg`,
    a 1x1 convolution (= a Linear over channels) initialised N(0, 0.01), bias 0 (`normal_init`);
    dropout_ratio=0."""

    num_classes: int
    init_std: float = 0.01

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(self.init_std))(x)


def poly_schedule(cfg) -> optax.Schedule:
    """mmcv's PolyLrUpdaterHook with linear warm-up, per iteration t: the poly lr
    (lr - min_lr) (1 - t / steps)^power + min_lr, times 1 - (1 - t / warmup)(1 - warmup_ratio)
    while t < warmup_steps."""
    def schedule(t):
        regular = (cfg.lr - cfg.min_lr) * (1.0 - t / cfg.steps) ** cfg.power + cfg.min_lr
        warm = 1.0 - (1.0 - t / max(cfg.warmup_steps, 1)) * (1.0 - cfg.warmup_ratio)
        return jnp.where(t < cfg.warmup_steps, regular * warm, regular)
    return schedule


def segmentation_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy of logits [B, H, W, C] against labels [B, H, W] with void (255) contributing 0,
    averaged over all B*H*W pixels (mmseg 0.x CrossEntropyLoss, avg_non_ignore=False)."""
    valid = labels != data.VOID
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_p, jnp.where(valid, labels, 0)[..., None].astype(jnp.int32), -1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / labels.size


def train_head(cfg, features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int):
    """Trains a BNHead on frozen features [N, h, w, F] with labels [N, H, W] at the input size:
    cfg.steps AdamW steps of cfg.batch_size examples (a fresh permutation each pass over the set),
    all in one jitted scan. Returns (head, variables, losses [steps])."""
    head = BNHead(num_classes, cfg.init_std)
    count, grid = features.shape[0], features.shape[1:3]
    rows, cols = (jnp.asarray(m, jnp.float32) for m in resize_matrices((tuple(grid), tuple(labels.shape[1:3]))))
    key_init, key_order = jax.random.split(jax.random.PRNGKey(seed))
    variables = head.init(key_init, jnp.zeros((1, *features.shape[1:]), jnp.float32))
    tx = optax.adamw(poly_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=1e-8, weight_decay=cfg.weight_decay)
    passes = -(-cfg.steps * cfg.batch_size // count)
    order = jnp.concatenate([jax.random.permutation(k, count) for k in jax.random.split(key_order, passes)])
    order = order[:cfg.steps * cfg.batch_size].reshape(cfg.steps, cfg.batch_size)

    @jax.jit
    def run(variables, x_all, y_all):
        def step(carry, idx):
            params, stats, opt_state = carry

            def loss_fn(p):
                logits, new = head.apply({"params": p, "batch_stats": stats}, x_all[idx], train=True,
                                         mutable=["batch_stats"])
                return segmentation_loss(resize_logits(logits, rows, cols), y_all[idx]), new["batch_stats"]

            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), loss

        carry = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
        (params, stats, _), losses = jax.lax.scan(step, carry, order)
        return {"params": params, "batch_stats": stats}, losses

    variables, losses = run(variables, jnp.asarray(features), jnp.asarray(labels))
    return head, variables, np.asarray(losses)


def patch_features_fn(module, n_last_blocks: int):
    """features(params, images [B, H, W, 3]) -> [B, H/p, W/p, n * D] of a VisionTransformer `module`:
    the final LayerNorm on each of the last n blocks' patch tokens (DINOv2's
    `get_intermediate_layers(n, reshape=True)`, norm=True), concatenated over blocks (BNHead's
    resize_concat at one resolution)."""
    def features(params, images):
        layers = module.apply({"params": params}, images, n_last_blocks, method="intermediate_layers")
        grid = (images.shape[1] // module.patch_size, images.shape[2] // module.patch_size)
        tokens = jnp.concatenate([x[:, module.num_prefix_tokens:] for x in layers], axis=-1)
        return tokens.reshape(images.shape[0], *grid, -1).astype(jnp.float32)

    return features


def pixel_features_fn(patch_size: int):
    """features(_, images [B, H, W, 3]) -> [B, H/p, W/p, p * p * 3]: each patch's normalised pixels
    (the raw-pixel baseline)."""
    from ssl_jax.models.vit import patchify

    def features(params, images):
        del params
        grid = (images.shape[1] // patch_size, images.shape[2] // patch_size)
        return patchify(images, patch_size).reshape(images.shape[0], *grid, -1)

    return features


def probabilities(logits: np.ndarray, input_hw, label_hw, flipped: bool = False) -> np.ndarray:
    """logits [B, h, w, C] of inputs of size input_hw -> softmax [B, H, W, C] at the label size
    (mmseg: resized to the input, then to the original shape), un-flipped when the input was."""
    up = resize_logits(logits, *resize_matrices((logits.shape[1:3], tuple(input_hw), tuple(label_hw))))
    p = np.exp(up - up.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p[:, :, ::-1] if flipped else p


def input_size(cfg, patch_size: int, scale: float = 1.0) -> tuple[int, int]:
    """The model's input (H, W) at `scale` x cfg.image_size, rounded to a multiple of the patch size."""
    return tuple(max(patch_size, int(round(s * scale / patch_size)) * patch_size) for s in cfg.image_size)


def evaluate(cfg, features_fn, params, patch_size: int, mean, std, seed: int = 0,
             printer=print) -> dict[str, float]:
    """The protocol `cfg` (configs/eval_protocols.py `segmentation`) on the folder cfg.data_dir with
    features_fn(params, images [B, H, W, 3] normalised by `mean`, `std` (the backbone's own, per channel
    of [0, 1] pixels)) -> [B, h, w, F]; input sizes are multiples of `patch_size`
    (`patch_features_fn`, or `pixel_features_fn` for the raw-pixel baseline): frozen features of the
    train split -> BNHead -> streamed test split, scored at each label's stored size. Returns
    segmentation_{mIoU, pixel_accuracy, IoU_<class>, final_loss}."""
    if not cfg.data_dir:
        raise UserError("--eval=segmentation needs a segmentation folder: --dataset=<DIR with <split>/images/ and "
                        "<split>/labels/> (or --protocol.segmentation.data_dir)")
    names = data.class_names(cfg.data_dir, cfg.num_classes)
    train, test = data.list_split(cfg.data_dir, cfg.train_split), data.list_split(cfg.data_dir, cfg.test_split)
    features_fn = jax.jit(features_fn)
    patch = patch_size
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    normalise = lambda images: (images.astype(np.float32) / 255.0 - mean) / std  # noqa: E731 (the backbone's own)

    start = time.time()
    size = input_size(cfg, patch)
    batches = [(np.asarray(features_fn(params, normalise(x))), y) for x, y, _ in
               data.pairs(train, size, cfg.extract_batch_size, cfg.max_train_images, cfg.reduce_zero_label)]
    features, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    if np.any(labels[labels != data.VOID] >= len(names)):
        top = labels[labels != data.VOID].max()
        raise UserError(f"{cfg.data_dir}/{cfg.train_split}: labels go up to {top} but there are {len(names)} "
                        f"classes (0..{len(names) - 1}, 255 = void); labels 1..C with 0 = other need "
                        f"--protocol.segmentation.reduce_zero_label=True")
    printer(f"segmentation: {len(features)} train features {features.shape[1:]} ({time.time() - start:.1f}s)")
    start = time.time()
    head, variables, losses = train_head(cfg, features, labels, len(names), seed)
    train_seconds = time.time() - start
    logits_fn = jax.jit(lambda v, x: head.apply(v, x))

    confusion = np.zeros((len(names),) * 2, np.int64)
    count = min(cfg.max_test_images, len(test.images)) if cfg.max_test_images else len(test.images)
    for start in range(0, count, cfg.extract_batch_size):
        batch = data.Split(test.images[start:start + cfg.extract_batch_size][:count - start],
                           test.labels[start:start + cfg.extract_batch_size][:count - start])
        probs = [0.0] * len(batch.images)
        for scale in cfg.test_scales:  # each scale resized from the stored image, as mmseg's MultiScaleFlipAug
            scaled = input_size(cfg, patch, scale)
            images, _, stored = next(data.pairs(batch, scaled, len(batch.images), 0, cfg.reduce_zero_label))
            for flip in (False, True) if cfg.test_flip else (False,):
                logits = logits_fn(variables, features_fn(params, normalise(images[:, :, ::-1] if flip else images)))
                logits = np.asarray(logits, np.float64)
                probs = [p + probabilities(logits[i:i + 1], scaled, y.shape, flip)[0]
                         for i, (p, y) in enumerate(zip(probs, stored))]
        for p, y in zip(probs, stored):
            confusion += confusion_matrix(p.argmax(-1), y, len(names))
    metrics = iou_metrics(confusion)
    results = {"segmentation_mIoU": metrics["mIoU"], "segmentation_pixel_accuracy": metrics["aAcc"]}
    results.update({f"segmentation_IoU_{name}": float(v) for name, v in zip(names, metrics["IoU"]) if np.isfinite(v)})
    printer(f"segmentation: head trained for {cfg.steps} steps ({train_seconds:.1f}s)")
    return {**results, "segmentation_final_loss": float(losses[-1])}
