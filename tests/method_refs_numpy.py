"""Float64 numpy transcriptions of the official objectives, for tests/test_method_refs.py.

Each function takes network outputs (numpy arrays) and the hyper-parameters as plain
arguments, so the test passes the *config's* values; nothing here imports ssl_jax. The
source of each transcription is named in its docstring (repository, file, function).
"""
from __future__ import annotations

import numpy as np


def f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def normalize(x, eps: float = 1e-12):
    """torch.nn.functional.normalize(x, dim=-1)."""
    x = f64(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def log_softmax(x):
    x = f64(x)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


def softmax(x):
    return np.exp(log_softmax(x))


# ----------------------------------------------------------------------------- two views


def simclr_loss(z1, z2, temperature):
    """google-research/simclr `objective.add_contrastive_loss` (one device): hidden1, hidden2 L2-normalised;
    logits_aa = h1 h1^T / t - 1e9 I, logits_ab = h1 h2^T / t; loss_a = CE([ab, aa], labels = i),
    loss_b = CE([ba, bb], i); returns loss_a + loss_b (each a mean over the B anchors)."""
    h1, h2 = normalize(z1), normalize(z2)
    eye = np.eye(len(h1)) * 1e9
    total = 0.0
    for a, b in ((h1, h2), (h2, h1)):
        logits = np.concatenate([a @ b.T / temperature, a @ a.T / temperature - eye], axis=1)
        total += -np.mean(np.diagonal(log_softmax(logits)[:, :len(a)]))
    return total


def sit_contrastive_loss(z1, z2, temperature):
    """Sara-Ahmed/SiT `losses.py` ContrastiveLoss.forward: NT-Xent over the 2B anchors of [z1; z2]
    (positive: the other view; denominator: every row but itself), summed and / (2 B)."""
    z = normalize(np.concatenate([z1, z2]))
    b = len(z1)
    sim = z @ z.T / temperature
    np.fill_diagonal(sim, -np.inf)
    positives = np.concatenate([np.diagonal(sim, b), np.diagonal(sim, -b)])
    return np.mean(np.log(np.sum(np.exp(sim), axis=1)) - positives)


def moco_v3_loss(q1, q2, k1, k2, temperature):
    """facebookresearch/moco-v3 `moco/builder.py` MoCo.forward: ctr(q1, k2) + ctr(q2, k1), where
    `contrastive_loss` = CE(normalize(q) normalize(k)^T / T, arange) * 2T."""
    def ctr(q, k):
        logits = normalize(q) @ normalize(k).T / temperature
        return -np.mean(np.diagonal(log_softmax(logits))) * 2 * temperature
    return ctr(q1, k2) + ctr(q2, k1)


def byol_loss(p1, p2, t1, t2):
    """deepmind/deepmind-research `byol/byol_experiment.py` `_loss_fn`: regression_loss(online_pred_view1,
    sg target_proj_view2) + regression_loss(online_pred_view2, sg target_proj_view1), each the batch
    mean of ||normalize(x) - normalize(y)||^2 (`byol/utils/helpers.py` regression_loss)."""
    def reg(x, y):
        return np.mean(np.sum((normalize(x) - normalize(y)) ** 2, axis=-1))
    return reg(p1, t2) + reg(p2, t1)


def simsiam_loss(p1, p2, z1, z2):
    """facebookresearch/simsiam `main_simsiam.py` train(): loss = -(criterion(p1, z2).mean()
    + criterion(p2, z1).mean()) * 0.5 with criterion = nn.CosineSimilarity(dim=1)."""
    def cos(x, y):
        return np.mean(np.sum(normalize(x) * normalize(y), axis=-1))
    return -(cos(p1, z2) + cos(p2, z1)) * 0.5


# ----------------------------------------------------------------------------- DINO family


def dino_loss(student, teacher, center, student_temp, teacher_temp):
    """facebookresearch/dino `main_dino.py` DINOLoss.forward. student [V_s, B, K] (crops, global
    first), teacher [V_t, B, K] raw teacher outputs; returns (loss, teacher probabilities [V_t, B, K])."""
    q = softmax((f64(teacher) - f64(center)) / teacher_temp)
    return dino_loss_from_probs(student, q, student_temp), q


def dino_loss_from_probs(student, q, student_temp):
    """DINOLoss.forward's double loop with the teacher probabilities q [V_t, B, K] given:
    mean over (iq, v != iq) of the batch mean of -sum q_iq log_softmax(s_v / tau_s)."""
    log_p = log_softmax(f64(student) / student_temp)
    total, terms = 0.0, 0
    for iq in range(len(q)):
        for v in range(len(log_p)):
            if v == iq:
                continue
            total += np.mean(-np.sum(q[iq] * log_p[v], axis=-1))
            terms += 1
    return total / terms


def dino_center(center, teacher, momentum):
    """DINOLoss.update_center: c * m + mean over every teacher row * (1 - m). teacher [..., K]."""
    teacher = f64(teacher)
    return f64(center) * momentum + teacher.reshape(-1, teacher.shape[-1]).mean(0) * (1 - momentum)


def per_epoch_warmup(warmup_value, value, warmup_epochs, epoch):
    """DINO / iBOT `teacher_temp_schedule`: np.linspace(warmup, value, warmup_epochs) indexed by epoch,
    then constant."""
    return np.linspace(warmup_value, value, warmup_epochs)[epoch] if epoch < warmup_epochs else value


def ibot_patch_temp(cfg, epoch):
    """bytedance/ibot `main_ibot.py` iBOTLoss.teacher_temp2_schedule: warmup_teacher_patch_temp for
    pred_start_epoch epochs, then the per-epoch linear warm-up to teacher_patch_temp."""
    if epoch < cfg.pred_start_epoch:
        return cfg.warmup_teacher_patch_temp
    return per_epoch_warmup(cfg.warmup_teacher_patch_temp, cfg.teacher_patch_temp, cfg.warmup_teacher_temp_epochs,
                            epoch - cfg.pred_start_epoch)


def ibot_loss(s_cls, s_patch, t_cls, t_patch, mask, center, center2, cfg, temp, temp2):
    """bytedance/ibot `main_ibot.py` iBOTLoss.forward. s_cls [V_s, B, K], s_patch [G, B, N, K],
    t_cls [G, B, K], t_patch [G, B, N, K], mask [G, B, N] bool. Returns (loss, center, center2):
    loss1 (patch) = mean over crops of sum(CE * mask) / max(sum(mask), 1), on the same crop;
    loss2 (cls) = DINO's pairs of different crops; lambda1 * loss2 + lambda2 * loss1."""
    q_cls = softmax((f64(t_cls) - f64(center)) / temp)
    q_patch = softmax((f64(t_patch) - f64(center2)) / temp2)
    log_patch = log_softmax(f64(s_patch) / cfg.student_temp)
    patch_terms = []
    for g in range(len(q_patch)):
        ce = -np.sum(q_patch[g] * log_patch[g], axis=-1)  # [B, N]
        m = f64(mask[g])
        patch_terms.append(np.mean(np.sum(ce * m, -1) / np.maximum(m.sum(-1), 1.0)))
    loss1 = np.mean(patch_terms)
    loss2 = dino_loss_from_probs(s_cls, q_cls, cfg.student_temp)
    new_center = dino_center(center, t_cls, cfg.center_momentum)
    t_patch = f64(t_patch)
    new_center2 = f64(center2) * cfg.center_momentum + t_patch.reshape(-1, t_patch.shape[-1]).mean(0) * (
        1 - cfg.center_momentum)
    return cfg.lambda1 * loss2 + cfg.lambda2 * loss1, new_center, new_center2


def sinkhorn(scores, epsilon, iterations):
    """facebookresearch/swav `main_swav.py` distributed_sinkhorn (= dinov2 `sinkhorn_knopp_teacher`):
    Q = exp(scores / eps)^T [K, B], Q /= sum Q; iterations x (rows /= row sums, /= K; columns /= column
    sums, /= B); return (Q * B)^T [B, K]."""
    q = np.exp(f64(scores) / epsilon).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def swav_loss(scores, crops_for_assign, temperature, epsilon, iterations, codes_fn=None):
    """facebookresearch/swav `main_swav.py` train() (no queue): scores [V, B, K] = z_v C of every crop;
    for each crop_id in crops_for_assign: q = sinkhorn(scores[crop_id]) (or codes_fn(crop_id, scores));
    subloss = sum over v != crop_id of -mean(sum(q log_softmax(scores[v] / T))); loss += subloss /
    (V - 1); loss /= len(crops_for_assign)."""
    scores = f64(scores)
    loss = 0.0
    for crop_id in crops_for_assign:
        q = codes_fn(crop_id, scores) if codes_fn else sinkhorn(scores[crop_id], epsilon, iterations)
        subloss = 0.0
        for v in [v for v in range(len(scores)) if v != crop_id]:
            subloss -= np.mean(np.sum(q * log_softmax(scores[v] / temperature), axis=1))
        loss += subloss / (len(scores) - 1)
    return loss / len(crops_for_assign)


def koleo(x, eps=1e-8):
    """facebookresearch/dinov2 `dinov2/loss/koleo_loss.py` KoLeoLoss.forward: normalize (eps 1e-8),
    nearest neighbour by inner product (self excluded), d = ||x - x_nn + eps||, -mean log(d + eps)."""
    x = f64(x)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    dots = x @ x.T
    np.fill_diagonal(dots, -1)
    nn = x[np.argmax(dots, axis=1)]
    return -np.mean(np.log(np.linalg.norm(x - nn + eps, axis=-1) + eps))


# ----------------------------------------------------------------------------- masked image modelling


def patchify(images, p):
    """facebookresearch/mae `models_mae.py` MaskedAutoencoderViT.patchify on NHWC:
    einsum('nchpwq->nhwpqc') -> [B, h w, p p C]."""
    b, hh, ww, c = images.shape
    x = f64(images).reshape(b, hh // p, p, ww // p, p, c)
    return np.einsum("nhpwqc->nhwpqc", x).reshape(b, (hh // p) * (ww // p), p * p * c)


def mae_loss(images, pred, mask, patch, norm_pix_loss):
    """MaskedAutoencoderViT.forward_loss: target = patchify(imgs), per patch (x - mean) / (var + 1e-6)**.5
    with torch's unbiased var when norm_pix_loss; loss = ((pred - target)**2).mean(-1);
    (loss * mask).sum() / mask.sum()."""
    target = patchify(images, patch)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdims=True)) / (target.var(-1, ddof=1, keepdims=True) + 1e-6) ** 0.5
    per_patch = ((f64(pred) - target) ** 2).mean(-1)
    return np.sum(per_patch * mask) / np.sum(mask)


def simmim_loss(images, pixel_pred, patch_mask, patch):
    """microsoft/SimMIM `models/simmim.py` SimMIM.forward on NHWC pixels: the patch mask repeated
    patch x patch (repeat_interleave), loss_recon = |x - x_rec|, (loss_recon * mask).sum() /
    (mask.sum() + 1e-5) / in_chans (mask: one channel)."""
    m = np.repeat(np.repeat(f64(patch_mask), patch, axis=1), patch, axis=2)[..., None]  # [B, H, W, 1]
    return np.sum(np.abs(f64(images) - f64(pixel_pred)) * m) / (m.sum() + 1e-5) / images.shape[-1]


def smooth_l1(pred, target):
    """F.smooth_l1_loss(z, h) (beta 1, mean over every element): facebookresearch/ijepa `src/train.py`."""
    d = np.abs(f64(pred) - f64(target))
    return np.mean(np.where(d < 1.0, 0.5 * d * d, d - 0.5))


def layer_norm(x, eps=1e-5):
    """F.layer_norm(h, (h.size(-1),)) without affine parameters."""
    x = f64(x)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


# ----------------------------------------------------------------------------- classification pretexts


def cross_entropy(logits, labels, label_smoothing=0.0, weights=None):
    """torch F.cross_entropy(logits, labels, label_smoothing=s): (1 - s) NLL + s mean_c(-log p_c), mean
    over rows (over the rows with weight 1 when `weights` is given)."""
    log_p = log_softmax(logits)
    nll = -np.take_along_axis(log_p, np.asarray(labels)[..., None], axis=-1)[..., 0]
    per_row = (1 - label_smoothing) * nll - label_smoothing * log_p.mean(-1)
    if weights is None:
        return per_row.mean()
    return np.sum(per_row * weights) / np.sum(weights)


def cutmix_data(images, index, lam, centre):
    """CupidJay/Training-Vision-Transformers-with-only-2040-images `utils/mixup_utils.py` cutmix_data with
    its draws given: lam (already max(lam, 1 - lam)), index (torch.randperm), centre (rand_bbox's
    np.random.randint of the first and second image axes). rand_bbox: sides int(side sqrt(1 - lam)),
    corners clip(centre -+ side // 2); the box of images[index] pasted; lam = 1 - box area / image area.
    images [B, H, W, C] (torch's size[2], size[3] = H, W here) -> (mixed images, lam)."""
    rows, cols = images.shape[1:3]
    cut = np.sqrt(1.0 - lam)
    cut_r, cut_c = int(rows * cut), int(cols * cut)
    r1, r2 = np.clip(centre[0] - cut_r // 2, 0, rows), np.clip(centre[0] + cut_r // 2, 0, rows)
    c1, c2 = np.clip(centre[1] - cut_c // 2, 0, cols), np.clip(centre[1] + cut_c // 2, 0, cols)
    mixed = f64(images).copy()
    mixed[:, r1:r2, c1:c2] = f64(images)[index, r1:r2, c1:c2]
    return mixed, 1.0 - (r2 - r1) * (c2 - c1) / (rows * cols)


def rot90(images, k):
    """gidariss/FeatureLearningRotNet `dataloader.py` rotate_img on HWC: 90 = flipud(transpose),
    180 = fliplr(flipud), 270 = transpose(flipud); images [B, H, W, C], counter-clockwise."""
    images = np.asarray(images)
    out = images
    for _ in range(k):
        out = np.flip(np.swapaxes(out, 1, 2), axis=1)  # per image: flipud(transpose(img))
    return out
