"""Every method's loss against an independent float64 reference that reads the config.

Each test builds the method from its config file's default preset (the paper's recipe), shrunk in
sizes only (`shrink`: a 1-block 16-wide ViT or a width-8 ResNet-10, 32 px crops, batch 8, small heads,
2 local crops; float32; no stochastic depth, so the forward is a function of the params), runs
`method.loss` on fixed random views and params, and recomputes the objective in float64 numpy
(`tests/method_refs_numpy.py`, transcriptions of the official code) from the network outputs of each
view, obtained with the method's own Flax modules. The reference takes every hyper-parameter from
the config (temperatures, loss weights, targets, masks' ratios, centering momentum, label
smoothing, ...), and each test also checks the reference with one such value changed does NOT
match, so the suite proves it would catch a method that ignores or misreads it.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_refs_numpy as ref
from ssl_jax import masks
from ssl_jax.batch import example_batch
from ssl_jax.methods import build_method

RTOL = 2e-4  # float32 forward and loss vs the float64 reference
STEPS_PER_EPOCH = 2
LOSS_RNG = jax.random.key(5)


def load(config_name: str, preset: str = ""):
    return importlib.import_module(f"configs.{config_name}").get_config(preset)


def shrink(config, **overrides):
    """Sizes only: model depth/width, image and crop sizes, batch, head widths, number of local crops.
    `overrides` (dotted keys) are further sizes a method needs."""
    config.compute_dtype = "float32"
    config.batch_size = 8
    model = config.model
    if model.name == "vit":
        model.update(size="custom", embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=32,
                     drop_path_rate=0.0)
    else:
        model.update(depth=10, width=8)
    config.augment.global_crops.size = 32
    config.augment.local_crops.size = 16
    config.augment.local_crops.number = min(config.augment.local_crops.number, 2)
    for name in ("projector", "predictor"):
        if name in config.method:
            config.method[name].update(hidden_dim=32, out_dim=16)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def build(config, fields=()):
    """(method, variables, batch) with fixed random params and standard-normal views."""
    method = build_method(config, STEPS_PER_EPOCH)
    batch = example_batch(config.augment, config.batch_size, jax.random.key(1), fields=fields)
    return method, method.init(jax.random.key(0), batch), batch


def perturbed(tree, scale=0.05, seed=3):
    """A copy of `tree` with every leaf moved by scale x N(0, 1): a teacher that differs from the student."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def check(got, want, *wrong):
    """`got` equals the reference `want` and none of the references `wrong` (a changed hyper-parameter)."""
    np.testing.assert_allclose(float(got), want, rtol=RTOL)
    for w in wrong:
        assert abs(float(got) - w) > 3 * RTOL * abs(want), (float(got), want, w)


def views_of(batch, group="global"):
    """[B, V, H, W, 3] -> the list of V views [B, H, W, 3]."""
    v = batch["views"][group]
    return [v[:, i] for i in range(v.shape[1])]


def np_(x):
    return np.asarray(x, np.float64)


# ----------------------------------------------------------------------------- two views


def _two_view(config_name):
    config = shrink(load(config_name))
    method, variables, batch = build(config)
    return config, method, variables, batch


def _project(method, params, stats, x):
    return np_(method.network.apply(params, stats, x, train=True, upto="projector")[0])


def _predict(method, params, stats, x):
    z, _ = method.network.apply(params, stats, x, train=True, upto="projector")
    return np_(method.network.apply(params, stats, z, train=True, start="predictor")[0])


def test_simclr_nt_xent_with_the_configured_temperature():
    """google-research/simclr: both views through the network as one batch of 2B (BatchNorm over both),
    NT-Xent both ways at `method.temperature` (0.1)."""
    config, method, v, batch = _two_view("simclr_resnet50")
    x1, x2 = views_of(batch)
    z = _project(method, v.params, v.model_state, jnp.concatenate([x1, x2]))
    z1, z2 = z[:8], z[8:]
    loss = method.loss(v.params, None, None, v.model_state, batch, LOSS_RNG, 0)[0]
    t = config.method.temperature
    separate = (_project(method, v.params, v.model_state, x1), _project(method, v.params, v.model_state, x2))
    check(loss, ref.simclr_loss(z1, z2, t), ref.simclr_loss(z1, z2, 1.5 * t), ref.simclr_loss(*separate, t))


def test_byol_regression_on_the_ema_target():
    """deepmind byol: predictor(online) of each view against the EMA target's projection of the other."""
    config, method, v, batch = _two_view("byol_resnet50")
    teacher = perturbed(v.teacher)
    x1, x2 = views_of(batch)
    s = v.model_state
    p1, p2 = _predict(method, v.params, s, x1), _predict(method, v.params, s, x2)
    t1, t2 = _project(method, teacher, s, x1), _project(method, teacher, s, x2)
    o1, o2 = _project(method, v.params, s, x1), _project(method, v.params, s, x2)
    loss = method.loss(v.params, teacher, None, s, batch, LOSS_RNG, 0)[0]
    check(loss, ref.byol_loss(p1, p2, t1, t2), ref.byol_loss(p1, p2, o1, o2), ref.byol_loss(p1, p2, t2, t1))


def test_mocov3_contrastive_loss_with_the_configured_temperature():
    """facebookresearch/moco-v3: ctr(q1, k2) + ctr(q2, k1), momentum-encoder keys, `method.temperature` (0.2)."""
    config, method, v, batch = _two_view("mocov3_vit_small")
    teacher = perturbed(v.teacher)
    x1, x2 = views_of(batch)
    s = v.model_state
    q1, q2 = _predict(method, v.params, s, x1), _predict(method, v.params, s, x2)
    k1, k2 = _project(method, teacher, s, x1), _project(method, teacher, s, x2)
    loss = method.loss(v.params, teacher, None, s, batch, LOSS_RNG, 0)[0]
    t = config.method.temperature
    check(loss, ref.moco_v3_loss(q1, q2, k1, k2, t), ref.moco_v3_loss(q1, q2, k1, k2, 0.5 * t),
          ref.moco_v3_loss(q1, q2, *(_project(method, v.params, s, x) for x in (x1, x2)), t))


def test_simsiam_negative_cosine_on_the_online_projection():
    """facebookresearch/simsiam: -(cos(p1, z2) + cos(p2, z1)) / 2 with z the online projection (no
    teacher: the method must have none)."""
    config, method, v, batch = _two_view("simsiam_resnet50")
    assert v.teacher is None
    x1, x2 = views_of(batch)
    s = v.model_state
    p1, p2 = _predict(method, v.params, s, x1), _predict(method, v.params, s, x2)
    z1, z2 = _project(method, v.params, s, x1), _project(method, v.params, s, x2)
    loss = method.loss(v.params, None, None, s, batch, LOSS_RNG, 0)[0]
    want = ref.simsiam_loss(p1, p2, z1, z2)
    check(loss, want, 2 * want, ref.simsiam_loss(p1, p2, z2, z1))


# ----------------------------------------------------------------------------- DINO, Daino, iBOT, DINOv2

DINO_SIZES = {"method.out_dim": 32, "method.head_hidden_dim": 32, "method.head_bottleneck_dim": 16}
STEP = 5  # epoch 2 of STEPS_PER_EPOCH = 2: inside every teacher-temperature warm-up


def _vit_cls(backbone, params, images, **kwargs):
    """[CLS] (or all tokens with return_tokens) of a crop group [B, V, H, W, 3] -> [V, B, ...]."""
    b, n = images.shape[:2]
    out = backbone.apply({"params": params}, images.reshape((b * n,) + images.shape[2:]), **kwargs)
    return jnp.swapaxes(out.reshape((b, n) + out.shape[1:]), 0, 1)


def _dino_outputs(method, params, teacher, batch):
    """Student head outputs of every crop [V, B, K] (global first) and the teacher's of the global crops."""
    groups = [batch["views"]["global"], batch["views"]["local"]]
    student = jnp.concatenate([method.head.apply({"params": params["head"]},
                                                 _vit_cls(method.backbone, params["backbone"], g)) for g in groups])
    t = method.head.apply({"params": teacher["head"]}, _vit_cls(method.backbone, teacher["backbone"], groups[0]))
    return np_(student), np_(t)


@pytest.mark.parametrize("config_name", ["dino_small", "daino_small"])
def test_dino_and_daino_against_dino_loss(config_name):
    """facebookresearch/dino DINOLoss: teacher softmax((t - c) / tau_t(epoch)) with the per-epoch warm-up,
    student_temp, pairs of different crops, the EMA center; Daino puts the one-hot label on labelled rows."""
    sizes = dict(DINO_SIZES)
    if config_name == "daino_small":  # class prototypes: out_dim = num_classes
        sizes.update({"method.out_dim": 10, "dataset.num_classes": 10})
    config = shrink(load(config_name), **sizes)
    cfg = config.method
    fields = tuple(config.dataset.get("fields", ()) or ())
    method, v, batch = build(config, fields)
    if "label" in fields:
        batch["label"] = np.array([3, -1, 5, -1, 0, 9, -1, 2], np.int32)
    teacher = perturbed(v.teacher, scale=0.3)  # a teacher far from uniform, so its temperature matters
    center = 0.02 * np.asarray(jax.random.normal(jax.random.key(4), (cfg.out_dim,)), np.float32)
    loss, aux = method.loss(v.params, teacher, {"center": center}, None, batch, LOSS_RNG, STEP)
    student, t = _dino_outputs(method, v.params, teacher, batch)
    temp = ref.per_epoch_warmup(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs,
                                STEP // STEPS_PER_EPOCH)

    def reference(student_temp=cfg.student_temp, teacher_temp=temp, c=center):
        q = ref.softmax((t - c) / teacher_temp)
        if "label" in fields:
            labelled = batch["label"] >= 0
            q[:, labelled] = np.eye(cfg.out_dim)[batch["label"][labelled]]
        return ref.dino_loss_from_probs(student, q, student_temp)

    check(loss, reference(), reference(student_temp=2 * cfg.student_temp), reference(teacher_temp=cfg.teacher_temp),
          reference(c=0 * center))
    np.testing.assert_allclose(aux.method_state["center"], ref.dino_center(center, t, cfg.center_momentum),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(aux.method_state["center"], ref.dino_center(center, t, 0.5 * cfg.center_momentum),
                           atol=1e-3)


def _masked_student(method, params, teacher, batch, mask):
    """Backbone tokens ([CLS] [V, B, D], patches [G, B, N, D]) of the student on the masked global crops,
    its local crops' [CLS], and the teacher's unmasked global tokens."""
    g = batch["views"]["global"]
    b, n = g.shape[:2]
    flat_mask = jnp.asarray(mask).reshape(b * n, -1)
    s_tokens = _vit_cls(method.backbone, params["backbone"], g, mask=flat_mask, return_tokens=True)
    s_local = _vit_cls(method.backbone, params["backbone"], batch["views"]["local"])
    t_tokens = _vit_cls(method.backbone, teacher["backbone"], g, return_tokens=True)
    return (jnp.concatenate([s_tokens[:, :, 0], s_local]), s_tokens[:, :, 1:], t_tokens[:, :, 0],
            t_tokens[:, :, 1:])


def test_ibot_against_ibot_loss():
    """bytedance/ibot iBOTLoss: lambda1 x DINO on [CLS] (center, teacher_temp schedule) + lambda2 x the
    masked-patch CE on the same crop (center2, teacher_temp2 schedule delayed by pred_start_epoch); the
    student sees the masked global crops, the teacher the unmasked ones; masks by the config's pred_ratio."""
    config = shrink(load("ibot_small"), **DINO_SIZES, **{"method.patch_out_dim": 32})
    cfg = config.method
    method, v, batch = build(config)
    teacher = perturbed(v.teacher, scale=0.3)
    rs = np.random.RandomState(4)
    center, center2 = 0.02 * rs.randn(2, cfg.out_dim).astype(np.float32)
    state = {"center": center, "center2": center2}
    loss, aux = method.loss(v.params, teacher, state, None, batch, LOSS_RNG, STEP)

    mask = np.asarray(method.sample_masks(jax.random.split(LOSS_RNG, 3)[0], 8, 2, STEP))  # [B, G, N]
    n = (32 // 8) ** 2
    assert mask.shape == (8, 2, n)
    max_ratio = max(r + var for r, var in zip(cfg.pred_ratio, cfg.pred_ratio_var))
    assert 0 < mask.sum() and mask.sum(-1).max() <= int(max_ratio * n)
    s_cls, s_patch, t_cls, t_patch = _masked_student(method, v.params, teacher, batch, mask)
    head = lambda p, module, c, x: module.apply({"params": p["head"]}, c, x)  # noqa: E731
    s_cls, s_patch = head(v.params, method.student_head, s_cls, s_patch)
    t_cls, t_patch = head(teacher, method.teacher_head, t_cls, t_patch)
    epoch = STEP // STEPS_PER_EPOCH
    temp = ref.per_epoch_warmup(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs, epoch)
    args = (np_(s_cls), np_(s_patch), np_(t_cls), np_(t_patch), mask.transpose(1, 0, 2), center, center2)
    want, want_c, want_c2 = ref.ibot_loss(*args, cfg, temp, ref.ibot_patch_temp(cfg, epoch))
    wrong_weights = cfg.copy_and_resolve_references()
    wrong_weights.lambda2 = 2 * cfg.lambda2
    check(loss, want, ref.ibot_loss(*args, cfg, temp, cfg.teacher_patch_temp)[0],
          ref.ibot_loss(*args, wrong_weights, temp, ref.ibot_patch_temp(cfg, epoch))[0],
          ref.ibot_loss(*args[:4], np.zeros_like(mask.transpose(1, 0, 2)), *args[5:], cfg, temp,
                        ref.ibot_patch_temp(cfg, epoch))[0])
    np.testing.assert_allclose(aux.method_state["center"], want_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux.method_state["center2"], want_c2, rtol=1e-5, atol=1e-6)


def test_dinov2_against_ssl_meta_arch():
    """facebookresearch/dinov2 SSLMetaArch.forward_backward (centering 'sinkhorn_knopp'): Sinkhorn-Knopp
    teacher targets over the global batch's [CLS] and over its masked patches (3 iterations, the
    per-iteration teacher_temp warm-up), dino_loss_weight x DINO (pairs of different crops) +
    ibot_loss_weight x masked-patch CE (per crop, / number of crops) + koleo_loss_weight x the sum over
    global crops of KoLeo on the student backbone's [CLS]; masks on int(G B mask_sample_probability) crops."""
    config = shrink(load("dinov2_small"), **DINO_SIZES,
                    **{"method.ibot_out_dim": 24, "method.ibot_head_hidden_dim": 32,
                       "method.ibot_head_bottleneck_dim": 16})
    cfg = config.method
    assert cfg.centering == "sinkhorn_knopp" and cfg.koleo_group_size >= config.batch_size  # one KoLeo group
    method, v, batch = build(config)
    teacher = perturbed(v.teacher, scale=0.3)  # a teacher far from uniform, so its temperature matters
    # LayerScale 1e-5 makes every fresh [CLS] the same up to 1e-5 (KoLeo's duplicate regime): moved params.
    v = v._replace(params=perturbed(v.params, seed=2))
    loss = method.loss(v.params, teacher, v.method_state, None, batch, LOSS_RNG, STEP)[0]

    mask = np.asarray(method.sample_masks(jax.random.split(LOSS_RNG, 3)[0], 8, 2, STEP))  # [B, G, N]
    n = mask.shape[-1]
    assert mask.shape == (8, 2, (32 // 8) ** 2)
    assert np.any(mask, -1).sum() <= int(16 * cfg.mask_sample_probability) and mask.sum() > 0
    assert mask.sum(-1).max() <= int(cfg.mask_ratio_min_max[1] * n)
    s_cls_tok, s_patch_tok, t_cls_tok, t_patch_tok = _masked_student(method, v.params, teacher, batch, mask)
    dino = lambda p, x: np_(method.dino_head.apply({"params": p["dino_head"]}, x))  # noqa: E731
    ibot = lambda p, x: np_(method.ibot_head.apply({"params": p["ibot_head"]}, x))  # noqa: E731
    s_cls, t_cls = dino(v.params, s_cls_tok), dino(teacher, t_cls_tok)  # [V, B, K], [G, B, K]
    m = mask.transpose(1, 0, 2)  # [G, B, N]
    s_patch, t_patch = ibot(v.params, s_patch_tok)[m], ibot(teacher, t_patch_tok)[m]  # masked patches [M, K]
    crop_of_patch = np.nonzero(m)  # (g, b, n) of each masked patch
    warmup = cfg.warmup_teacher_temp_epochs * STEPS_PER_EPOCH
    temp = np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warmup)[STEP]  # dinov2 CosineScheduler warm-up

    def reference(temp=temp, dino_w=cfg.dino_loss_weight, ibot_w=cfg.ibot_loss_weight, koleo_w=cfg.koleo_loss_weight):
        q = ref.sinkhorn(t_cls.reshape(-1, t_cls.shape[-1]), temp, 3).reshape(t_cls.shape)
        dino_term = ref.dino_loss_from_probs(s_cls, q, cfg.student_temp)
        q_patch = ref.sinkhorn(t_patch, temp, 3)
        ce = -np.sum(q_patch * ref.log_softmax(s_patch / cfg.student_temp), -1)
        weight = 1.0 / m.sum(-1)[crop_of_patch[:2]]  # masks_weight: 1 / (masked patches of its crop)
        ibot_term = np.sum(ce * weight) / m[..., 0].size  # / number of global crops in the batch
        koleo_term = sum(ref.koleo(np_(s_cls_tok[g])) for g in range(2))
        return dino_w * dino_term + ibot_w * ibot_term + koleo_w * koleo_term

    check(loss, reference(), reference(temp=cfg.teacher_temp), reference(dino_w=2 * cfg.dino_loss_weight),
          reference(ibot_w=2 * cfg.ibot_loss_weight), reference(koleo_w=2 * cfg.koleo_loss_weight))


# ----------------------------------------------------------------------------- SwAV, Suave


def _swav_scores(method, params, stats, batch):
    """Normalised projections of every crop times the prototypes [V, B, K]: the backbone once per crop
    size, the projector once on all crops (BatchNorm statistics as main_swav.py)."""
    net = method.network
    feats = []
    for group in (batch["views"]["global"], batch["views"]["local"]):
        b, n = group.shape[:2]
        f, _ = net.apply(params, stats, jnp.swapaxes(group, 0, 1).reshape((b * n,) + group.shape[2:]), train=True,
                         upto="backbone")
        feats.append(f)
    z, _ = net.apply(params, stats, jnp.concatenate(feats), train=True, start="projector")
    return (ref.normalize(z) @ np_(params["prototypes"]["kernel"])).reshape(-1, 8, params["prototypes"]["kernel"].shape[1])


@pytest.mark.parametrize("config_name", ["swav_resnet50", "suave_resnet50"])
def test_swav_and_suave_against_main_swav(config_name):
    """facebookresearch/swav main_swav.py train(): Sinkhorn codes (epsilon, sinkhorn_iterations) of
    crops_for_assign, swapped prediction at `temperature` over all other crops; Suave: codes balanced over
    the unlabelled images only and the one-hot label on the labelled ones."""
    sizes = {"method.num_prototypes": 10, "dataset.num_classes": 10}
    config = shrink(load(config_name), **sizes)
    cfg = config.method
    assert not cfg.queue_length  # the default recipe: no queue
    fields = tuple(config.dataset.get("fields", ()) or ())
    method, v, batch = build(config, fields)
    labels = np.array([3, -1, 5, -1, 0, 9, -1, -1], np.int32)
    if "label" in fields:
        batch["label"] = labels
    loss = method.loss(v.params, None, v.method_state, v.model_state, batch, LOSS_RNG, 0)[0]
    scores = _swav_scores(method, v.params, v.model_state, batch)

    def reference(temperature=cfg.temperature, epsilon=cfg.epsilon, crops=tuple(cfg.crops_for_assign)):
        def codes(crop, s):
            if "label" not in fields:
                return ref.sinkhorn(s[crop], epsilon, cfg.sinkhorn_iterations)
            q = np.eye(cfg.num_prototypes)[np.maximum(labels, 0)]
            q[labels < 0] = ref.sinkhorn(s[crop][labels < 0], epsilon, cfg.sinkhorn_iterations)
            return q
        return ref.swav_loss(scores, crops, temperature, epsilon, cfg.sinkhorn_iterations, codes)

    check(loss, reference(), reference(temperature=2 * cfg.temperature), reference(epsilon=2 * cfg.epsilon),
          reference(crops=(0,)))
