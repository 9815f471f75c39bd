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

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_refs_numpy as ref
from ssl_jax import masks
from ssl_jax.core.batch import example_batch
from ssl_jax.methods import build_method, sit_distort

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
    rs = np.random.RandomState(seed)  # numpy: no per-shape compiles
    return jax.tree.map(lambda x: (np.asarray(x) + scale * rs.randn(*x.shape)).astype(x.dtype), tree)


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


def _vit_cls(backbone, params, images, mask=None, tokens=False):
    """[CLS] (or all tokens, with `tokens`; patches swapped for the mask token where mask [B V, N]
    is True) of a crop group [B, V, H, W, 3] -> [V, B, ...]."""
    b, n = images.shape[:2]
    flat = images.reshape((b * n,) + images.shape[2:])
    if tokens:
        embedded = backbone.apply({"params": params}, flat, mask, method="embed")
        out = backbone.apply({"params": params}, embedded, method="encode")
    else:
        out = backbone.apply({"params": params}, flat)
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
    student_temp, pairs of different crops, the EMA center. Daino: the one-hot label on labelled rows, the
    objective methods/semisup.py documents (one shared batch); pietroastolfi/suave-daino draws a separate
    labelled batch, so this is not a transcription of main_daino.py."""
    sizes = dict(DINO_SIZES)
    if config_name == "daino_small":  # class prototypes: out_dim = num_classes
        sizes.update({"method.out_dim": 10, "dataset.num_classes": 10})
    config = shrink(load(config_name), **sizes)
    cfg = config.method
    fields = tuple(config.dataset.get("fields", ()) or ())
    method, v, batch = build(config, fields)
    if "label" in fields:
        batch["label"] = np.array([3, -1, 5, -1, 0, 9, -1, 2], np.int32)
    teacher = perturbed(v.teacher, scale=1.0)  # a teacher far from uniform, so its temperature matters
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

    # the temperature after the warm-up (when the recipe warms up: Daino) and a doubled one (DINO's 0.04 throughout)
    wrong_temps = [reference(teacher_temp=t) for t in (cfg.teacher_temp, 2 * temp) if t != temp]
    check(loss, reference(), reference(student_temp=2 * cfg.student_temp), *wrong_temps, reference(c=0 * center))
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
    s_tokens = _vit_cls(method.backbone, params["backbone"], g, mask=flat_mask, tokens=True)
    s_local = _vit_cls(method.backbone, params["backbone"], batch["views"]["local"])
    t_tokens = _vit_cls(method.backbone, teacher["backbone"], g, tokens=True)
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


DINOV2_RECIPES = {
    "imagenet1k": {},  # the default preset: softmax centering, patches through dino_head
    # dinov2/configs/train/vitl14.yaml: train.centering sinkhorn_knopp, ibot.separate_head true
    "vitl14": {"method.centering": "sinkhorn_knopp", "method.separate_head": True},
}


@pytest.mark.parametrize("recipe", DINOV2_RECIPES)
def test_dinov2_against_ssl_meta_arch(recipe):
    """facebookresearch/dinov2 `dinov2/train/ssl_meta_arch.py` SSLMetaArch.forward_backward: teacher
    targets by train.centering, 'centering' (DINOLoss / iBOTPatchLoss.softmax_center_teacher with the
    centers, then update_center: the mean over every [CLS] / over the masked patches) or 'sinkhorn_knopp'
    (over the global batch's [CLS] and its masked patches, 3 iterations); one teacher temperature warmed
    up per iteration; the masked patches through dino_head, or ibot_head with ibot.separate_head;
    dino_loss_weight x DINO (the pair sum / (G (G - 1) + max(G L, 1)): the pair mean with local crops) +
    ibot_loss_weight x masked-patch CE (forward_masked: weights 1 / masked patches of the crop, / number
    of crops) + koleo_loss_weight x the sum over global crops of KoLeo on the student backbone's [CLS];
    masks on int(G B mask_sample_probability) crops."""
    config = shrink(load("dinov2_small"), **DINO_SIZES, **DINOV2_RECIPES[recipe],
                    **{"method.ibot_out_dim": 24, "method.ibot_head_hidden_dim": 32,
                       "method.ibot_head_bottleneck_dim": 16})
    cfg = config.method
    assert cfg.koleo_group_size >= config.batch_size  # one KoLeo group
    assert config.augment.local_crops.number > 0  # the DINO divisor is then the pair count
    method, v, batch = build(config)
    teacher = perturbed(v.teacher, scale=0.3)  # a teacher far from uniform, so its temperature matters
    # LayerScale 1e-5 makes every fresh [CLS] the same up to 1e-5 (KoLeo's duplicate regime): moved params.
    v = v._replace(params=perturbed(v.params, seed=2))
    rs = np.random.RandomState(4)
    state = {name: 0.05 * rs.randn(*np.shape(c)).astype(np.float32) for name, c in v.method_state.items()}
    loss, aux = method.loss(v.params, teacher, state, None, batch, LOSS_RNG, STEP)

    mask = np.asarray(method.sample_masks(jax.random.split(LOSS_RNG, 3)[0], 8, 2, STEP))  # [B, G, N]
    n = mask.shape[-1]
    assert mask.shape == (8, 2, (32 // 8) ** 2)
    assert np.any(mask, -1).sum() <= int(16 * cfg.mask_sample_probability) and mask.sum() > 0
    assert mask.sum(-1).max() <= int(cfg.mask_ratio_min_max[1] * n)
    s_cls_tok, s_patch_tok, t_cls_tok, t_patch_tok = _masked_student(method, v.params, teacher, batch, mask)
    dino = lambda p, x: np_(method.dino_head.apply({"params": p["dino_head"]}, x))  # noqa: E731
    patch_head = (method.ibot_head, "ibot_head") if cfg.separate_head else (method.dino_head, "dino_head")
    ibot = lambda p, x: np_(patch_head[0].apply({"params": p[patch_head[1]]}, x))  # noqa: E731
    s_cls, t_cls = dino(v.params, s_cls_tok), dino(teacher, t_cls_tok)  # [V, B, K], [G, B, K]
    m = mask.transpose(1, 0, 2)  # [G, B, N]
    s_patch, t_patch = ibot(v.params, s_patch_tok)[m], ibot(teacher, t_patch_tok)[m]  # masked patches [M, K]
    crop_of_patch = np.nonzero(m)  # (g, b, n) of each masked patch
    warmup = cfg.warmup_teacher_temp_epochs * STEPS_PER_EPOCH
    temp = np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warmup)[STEP]  # dinov2 CosineScheduler warm-up

    def reference(temp=temp, dino_w=cfg.dino_loss_weight, ibot_w=cfg.ibot_loss_weight, koleo_w=cfg.koleo_loss_weight,
                  centers=(state["center"], state["center2"])):
        if cfg.centering == "sinkhorn_knopp":
            q = ref.sinkhorn(t_cls.reshape(-1, t_cls.shape[-1]), temp, 3).reshape(t_cls.shape)
            q_patch = ref.sinkhorn(t_patch, temp, 3)
        else:
            q, q_patch = ref.softmax((t_cls - centers[0]) / temp), ref.softmax((t_patch - centers[1]) / temp)
        dino_term = ref.dino_loss_from_probs(s_cls, q, cfg.student_temp)
        ce = -np.sum(q_patch * ref.log_softmax(s_patch / cfg.student_temp), -1)
        weight = 1.0 / m.sum(-1)[crop_of_patch[:2]]  # masks_weight: 1 / (masked patches of its crop)
        ibot_term = np.sum(ce * weight) / m[..., 0].size  # / number of global crops in the batch
        koleo_term = sum(ref.koleo(np_(s_cls_tok[g])) for g in range(2))
        return dino_w * dino_term + ibot_w * ibot_term + koleo_w * koleo_term

    wrong = [reference(temp=cfg.teacher_temp), reference(dino_w=2 * cfg.dino_loss_weight),
             reference(ibot_w=2 * cfg.ibot_loss_weight), reference(koleo_w=2 * cfg.koleo_loss_weight)]
    if cfg.centering == "centering":
        wrong.append(reference(centers=(0 * state["center"], 0 * state["center2"])))
        m_c = cfg.center_momentum
        np.testing.assert_allclose(aux.method_state["center"], ref.dino_center(state["center"], t_cls, m_c),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(aux.method_state["center2"], ref.dino_center(state["center2"], t_patch, m_c),
                                   rtol=1e-5, atol=1e-6)
        everywhere = ibot(teacher, t_patch_tok)  # the center over all patches is not the reference's
        assert not np.allclose(aux.method_state["center2"], ref.dino_center(state["center2"], everywhere, m_c),
                               atol=1e-6)
    check(loss, reference(), *wrong)


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
    prototypes = np_(params["prototypes"]["kernel"])  # [D, K]
    return (ref.normalize(z) @ prototypes).reshape(-1, 8, prototypes.shape[1])


@pytest.mark.parametrize("config_name", ["swav_resnet50", "suave_resnet50"])
def test_swav_and_suave_against_main_swav(config_name):
    """facebookresearch/swav main_swav.py train(): Sinkhorn codes (epsilon, sinkhorn_iterations) of
    crops_for_assign, swapped prediction at `temperature` over all other crops; with a queue
    (--queue_length, here given full, so `use_the_queue`), the codes of crop i are
    distributed_sinkhorn(cat(queue[i] C, out))[-bs:]. Suave: codes balanced over the unlabelled images
    (and the queue) only and the one-hot label on the labelled ones, the objective methods/semisup.py
    documents; pietroastolfi/suave-daino main_suave.py instead adds CE(lab_output / T) of a separate
    labelled batch, weighted by batch shares, so this is not a transcription of it."""
    sizes = {"method.num_prototypes": 10, "dataset.num_classes": 10}
    config = shrink(load(config_name), **sizes)
    cfg = config.method
    fields = tuple(config.dataset.get("fields", ()) or ())
    method, v, batch = build(config, fields)
    labels = np.array([3, -1, 5, -1, 0, 9, -1, -1], np.int32)
    if "label" in fields:
        batch["label"] = labels
    state = v.method_state
    if cfg.queue_length:  # a full queue of unit embeddings [A, L, D]
        queue = ref.normalize(np.random.RandomState(7).randn(*state["queue"].shape)).astype(np.float32)
        state = {"queue": queue, "queue_filled": np.int32(cfg.queue_length)}
    loss = method.loss(v.params, None, state, v.model_state, batch, LOSS_RNG, 0)[0]
    scores = _swav_scores(method, v.params, v.model_state, batch)
    prototypes = np_(v.params["prototypes"]["kernel"])

    def reference(temperature=cfg.temperature, epsilon=cfg.epsilon, crops=tuple(cfg.crops_for_assign),
                  use_queue=bool(cfg.queue_length)):
        def sinkhorn(crop, rows):  # the batch's rows [b, K] -> their codes, balanced with the queue's rows
            queued = (np_(state["queue"][list(cfg.crops_for_assign).index(crop)]) @ prototypes if use_queue
                      else np.zeros((0, rows.shape[1])))
            return ref.sinkhorn(np.concatenate([queued, rows]), epsilon, cfg.sinkhorn_iterations)[len(queued):]

        def codes(crop, s):
            if "label" not in fields:
                return sinkhorn(crop, s[crop])
            q = np.eye(cfg.num_prototypes)[np.maximum(labels, 0)]
            q[labels < 0] = sinkhorn(crop, s[crop][labels < 0])
            return q
        return ref.swav_loss(scores, crops, temperature, epsilon, cfg.sinkhorn_iterations, codes)

    wrong = [reference(temperature=2 * cfg.temperature), reference(epsilon=2 * cfg.epsilon), reference(crops=(0,))]
    if cfg.queue_length:
        wrong.append(reference(use_queue=False))
    check(loss, reference(), *wrong)


# ----------------------------------------------------------------------------- MAE, SimMIM, I-JEPA


def _single_view(config_name, **sizes):
    config = shrink(load(config_name), **sizes)
    method, v, batch = build(config)
    return config, method, v, batch, batch["views"]["global"][:, 0]


def test_mae_masked_mse_on_normalised_patches():
    """facebookresearch/mae forward_loss: MSE on the masked patches only, targets normalised per patch with
    `norm_pix_loss`; random_masking keeps int(N (1 - mask_ratio)) patches of each image."""
    config, method, v, batch, images = _single_view("mae_base", **{"method.decoder_embed_dim": 16,
                                                                   "method.decoder_depth": 1,
                                                                   "method.decoder_num_heads": 2})
    cfg = config.method
    v = v._replace(params=perturbed(v.params, scale=0.3))  # predictions away from 0, so the mask matters
    loss = method.loss(v.params, None, None, None, batch, LOSS_RNG, 0)[0]
    n = (32 // 8) ** 2
    m = masks.random_masks(jax.random.split(LOSS_RNG)[0], 8, n, cfg.mask_ratio)
    np.testing.assert_array_equal(np.asarray(m.mask).sum(1), n - int(n * (1 - cfg.mask_ratio)))
    visible = jnp.take_along_axis(method.encoder.apply({"params": v.params["backbone"]}, images, method="embed"),
                                  m.keep[..., None], axis=1)  # [B, K, D]: the patch + position embeddings kept
    latent = method.encoder.apply({"params": v.params["backbone"]}, visible, method="encode")
    pred = method.decoder.apply({"params": v.params["decoder"]}, latent, m.restore)
    mask = np.asarray(m.mask, np.float64)
    check(loss, ref.mae_loss(images, pred, mask, 8, cfg.norm_pix_loss),
          ref.mae_loss(images, pred, mask, 8, not cfg.norm_pix_loss), ref.mae_loss(images, pred, 1 - mask, 8,
                                                                                    cfg.norm_pix_loss))


def _unpatchify(x, p):
    """[B, N, p p 3] (row-major patches, (row, column, channel) inside) -> [B, H, W, 3]."""
    b, n, _ = x.shape
    g = int(round(n ** 0.5))
    return np_(x).reshape(b, g, g, p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * p, g * p, 3)


def test_simmim_l1_on_masked_pixels():
    """microsoft/SimMIM SimMIM.forward: L1 on the masked pixels / (masked pixels + 1e-5) / 3; MaskGenerator
    masks ceil(mask_ratio x cells) of the mask_patch_size cells. Sizes: 64 px images, 16 px mask cells
    on 8 px patches (the recipe's 2 x 2 patches per cell)."""
    config, method, v, batch, images = _single_view("simmim_vit_base", **{"model.img_size": 64,
                                                                          "augment.global_crops.size": 64,
                                                                          "method.mask_patch_size": 16})
    cfg = config.method
    loss = method.loss(v.params, None, None, None, batch, LOSS_RNG, 0)[0]
    mask = masks.simmim_masks(jax.random.split(LOSS_RNG)[0], 8, 64, 16, 8, cfg.mask_ratio)
    cells = np.asarray(mask).reshape(8, 4, 2, 4, 2)[:, :, 0, :, 0]  # one flag per 16 px cell
    np.testing.assert_array_equal(cells.sum((1, 2)), int(np.ceil(cfg.mask_ratio * 16)))
    tokens = method.encoder.apply({"params": v.params["backbone"]},
                                  method.encoder.apply({"params": v.params["backbone"]}, images, mask, method="embed"),
                                  method="encode")
    pixels = _unpatchify(method.head.apply({"params": v.params["head"]}, tokens[:, 1:]), 8)
    patch_mask = np.asarray(mask).reshape(8, 8, 8)
    unmasked_tokens = method.encoder.apply({"params": v.params["backbone"]}, images, method="tokens")
    check(loss, ref.simmim_loss(images, pixels, patch_mask, 8), ref.simmim_loss(images, pixels, ~patch_mask, 8),
          ref.simmim_loss(images, _unpatchify(method.head.apply({"params": v.params["head"]}, unmasked_tokens[:, 1:]),
                                              8), patch_mask, 8))


def test_ijepa_smooth_l1_on_the_ema_targets():
    """facebookresearch/ijepa train.py: h = layer_norm(target_encoder(image)) at each of the num_targets
    blocks, z = predictor(encoder(context)), smooth_l1(z, h) (mean over every element: the blocks of a
    step share one size). Sizes: 32 px images on 4 px patches (an 8 x 8 grid the blocks fit)."""
    config, method, v, batch, images = _single_view("ijepa_small", **{"model.patch_size": 4,
                                                                      "method.predictor_embed_dim": 16,
                                                                      "method.predictor_depth": 1})
    cfg = config.method
    teacher = perturbed(v.teacher)
    loss = method.loss(v.params, teacher, None, None, batch, LOSS_RNG, 0)[0]
    m = method._masks(jax.random.split(LOSS_RNG)[0], 8)
    assert m.targets.shape[1] == cfg.num_targets
    valid = np.asarray(m.targets_valid)
    assert np.all(valid.sum(-1) == valid.sum(-1).flat[0])  # one target size per step
    context = jnp.take_along_axis(method.encoder.apply({"params": v.params["backbone"]}, images, method="embed"),
                                  m.context[..., None], axis=1)  # [B, Kc, D]
    z = method.encoder.apply({"params": v.params["backbone"]}, context, False, m.context_valid, method="encode")
    pred = np_(method.predictor.apply({"params": v.params["predictor"]}, z, m.context, m.context_valid, m.targets,
                                      m.targets_valid))[valid]
    targets = np.asarray(m.targets)

    def target_tokens(encoder_params, norm=True):
        h = np_(method.target_encoder.apply({"params": encoder_params}, images, method="tokens"))
        h = ref.layer_norm(h) if norm else h
        return np.stack([h[b][targets[b]] for b in range(8)])[valid]  # [valid tokens, D]

    check(loss, ref.smooth_l1(pred, target_tokens(teacher["backbone"])),
          ref.smooth_l1(pred, target_tokens(v.params["backbone"])),
          ref.smooth_l1(pred, target_tokens(teacher["backbone"], norm=False)))


# ----------------------------------------------------------------------------- classification pretexts


def _rotated(images):
    """[B, H, W, 3] -> the 4B rotated images, image-major, and their rotation targets [4B]."""
    x = np.stack([ref.rot90(np.asarray(images), k) for k in range(4)], axis=1)
    return x.reshape((-1,) + x.shape[2:]), np.tile(np.arange(4), len(images))


@pytest.mark.parametrize("config_name", ["rotation_resnet50", "sla_resnet"])
def test_rotnet_and_sla_cross_entropy(config_name):
    """gidariss/FeatureLearningRotNet: the four counter-clockwise rotations of every image in one batch,
    4-way cross-entropy x loss_scale; SLA (hankook/SLA, joint_labels): the joint class 4 y + r, labelled
    images only, x loss_scale (4: --with-large-loss)."""
    config = shrink(load(config_name), **{"dataset.num_classes": 10})
    cfg = config.method
    fields = ("label",) if cfg.joint_labels else ()
    method, v, batch = build(config, fields)
    labels = np.array([3, -1, 5, -1, 0, 9, -1, 2], np.int32)
    if cfg.joint_labels:
        batch["label"] = labels
    images = batch["views"]["global"][:, 0]
    loss = method.loss(v.params, None, None, v.model_state, batch, LOSS_RNG, 0)[0]
    x, r = _rotated(images)
    logits = np_(method.network.apply(v.params, v.model_state, jnp.asarray(x), train=True)[0])
    clockwise = (-r) % 4
    if cfg.joint_labels:
        y = np.repeat(labels, 4)
        w = (y >= 0).astype(np.float64)
        want, wrong = (ref.cross_entropy(logits, np.maximum(y, 0) * 4 + t, weights=w) for t in (r, clockwise))
    else:
        want, wrong = ref.cross_entropy(logits, r), ref.cross_entropy(logits, clockwise)
    check(loss, cfg.loss_scale * want, cfg.loss_scale * wrong, (cfg.loss_scale + 1) * want)


def test_mp3_position_cross_entropy_with_the_configured_context():
    """MP3 (Zhai et al. 2022): every token classifies its own position, cross-entropy over the N positions;
    the keys are a random (1 - mask_ratio) of the patches (context count int(N (1 - mask_ratio)))."""
    config = shrink(load("mp3_vit_small"))
    cfg = config.method
    method, v, batch = build(config)
    v = v._replace(params=perturbed(v.params, scale=0.3))  # attention away from uniform, so the keys matter
    images = batch["views"]["global"][:, 0]
    loss = method.loss(v.params, None, None, None, batch, LOSS_RNG, 0)[0]
    n = (32 // 8) ** 2
    context = ~np.asarray(masks.random_masks(jax.random.split(LOSS_RNG)[0], 8, n, cfg.mask_ratio).mask)
    np.testing.assert_array_equal(context.sum(1), int(n * (1 - cfg.mask_ratio)))
    positions = np.tile(np.arange(n), 8)

    def logits(ctx):
        return np_(method.position_logits(v.params, images, None if ctx is None else jnp.asarray(ctx))).reshape(-1, n)

    check(loss, ref.cross_entropy(logits(context), positions), ref.cross_entropy(logits(None), positions),
          ref.cross_entropy(logits(~context), positions))


def test_instance_discrimination_cutmix_cross_entropy():
    """CupidJay/Training-Vision-Transformers-with-only-2040-images `main_deit_instance_discrimination.py`
    train(): each crop classified as its image's index with nn.CrossEntropyLoss (no smoothing); the large
    crops as one batch and the small crops as a second, each through `cutmix_data` + `mixup_criterion`
    (method_refs_numpy.cutmix_data); loss = the sum over the two batches. The random draws (lam, the
    permutation, the box centre) are the method's, replayed here; rows are image-major (the reference
    concatenates crop-major: the same loss for a uniformly random permutation)."""
    config = shrink(load("instance_vit_tiny"), **{"method.num_instances": 64})
    cfg = config.method
    assert config.augment.local_crops.number > 0  # the second batch is part of the recipe
    method, v, batch = build(config, ("index",))
    batch["index"] = np.random.RandomState(6).randint(0, 64, 8).astype(np.int32)
    v = v._replace(params=perturbed(v.params, scale=0.5))  # logits far from uniform, so lam's weighting matters
    loss = method.loss(v.params, None, None, None, batch, LOSS_RNG, 0)[0]

    def logits(images):
        features = method.network.apply(v.params, {}, jnp.asarray(images, jnp.float32), train=True)[0]
        return np_(method.head.apply({"params": v.params["instances"]}, features))

    def reference(alpha=cfg.cutmix_alpha, smoothing=cfg.label_smoothing, groups=("global", "local")):
        total = 0.0
        for group, group_rng in zip(groups, jax.random.split(LOSS_RNG, 2)):
            mix_rng, box_rng, perm_rng, _ = jax.random.split(group_rng, 4)
            crops = np.asarray(batch["views"][group])
            images, targets = crops.reshape((-1,) + crops.shape[2:]), np.repeat(batch["index"], crops.shape[1])
            lam = float(jax.random.beta(mix_rng, alpha, alpha))
            partner = np.asarray(jax.random.permutation(perm_rng, len(images)))
            row_rng, col_rng = jax.random.split(box_rng)
            centre = (int(jax.random.randint(row_rng, (), 0, images.shape[1])),
                      int(jax.random.randint(col_rng, (), 0, images.shape[2])))
            mixed, lam = ref.cutmix_data(images, partner, max(lam, 1 - lam), centre)
            out = logits(mixed)
            total += (lam * ref.cross_entropy(out, targets, smoothing)
                      + (1 - lam) * ref.cross_entropy(out, targets[partner], smoothing))
        return total

    # alpha x 4: these keys' lam at alpha x 2 cuts the same boxes
    check(loss, reference(), reference(alpha=4 * cfg.cutmix_alpha), reference(smoothing=0.1),
          reference(groups=("global",)))


def test_sit_uncertainty_weighted_rotation_contrastive_and_reconstruction():
    """Sara-Ahmed/SiT `engine.py` train_SSL + `losses.py` MTLLOSS: for each of the two views, the image
    rotated by k (the dataset's rotation) then `distortImages`; CrossEntropyLoss of the rotation token
    over both views, ContrastiveLoss (temperature) of the two views' contrastive outputs, L1Loss of the
    pixels against the clean rotated views; each term `LearnedLoss.calculate_weighted_loss`:
    adj exp(-s) L + s / 2 (adj: the config's loss_scales). The random draws (k, the partner image) are
    the method's, replayed here; the corruption is the method's `distort` (tests/test_pretext.py)."""
    config = shrink(load("sit_vit_small"), **{"method.contrastive_dim": 16})
    cfg = config.method
    method, v, batch = build(config)
    s = {"reconstruction": 0.3, "rotation": 1.0, "contrastive": -0.4}  # learned log-variances, distinct
    params = perturbed(v.params, scale=0.3)  # outputs that depend on the input, so the corruption matters
    params["task_weights"] = {name: np.full((1,), x, np.float32) for name, x in s.items()}
    loss = method.loss(params, None, None, None, batch, LOSS_RNG, 0)[0]
    head = lambda name, x: np_(method.heads[name].apply({"params": params[name]}, x))  # noqa: E731
    distort = jax.vmap(functools.partial(sit_distort.distort, **dict(cfg.corruption)))

    def terms(temperature=cfg.temperature, corrupt=True, clockwise=False):
        recon, rot, z = [], [], []
        for view, view_rng in zip(views_of(batch), jax.random.split(LOSS_RNG, 2)):
            corrupt_rng, rotation_rng, _ = jax.random.split(view_rng, 3)
            k = np.asarray(jax.random.randint(rotation_rng, (8,), 0, 4))
            turns = (-k) % 4 if clockwise else k
            rotated = np.stack([ref.rot90(np.asarray(view)[b:b + 1], turns[b])[0] for b in range(8)])
            partner = np.asarray(jax.random.randint(jax.random.fold_in(corrupt_rng, 1), (8,), 0, 8))
            x = distort(jax.random.split(corrupt_rng, 8), rotated, rotated[partner], partner != np.arange(8))
            tokens = method.network.modules["backbone"].apply({"params": params["backbone"]},
                                                              x if corrupt else jnp.asarray(rotated),
                                                              method="tokens")
            pixels = _unpatchify(head("reconstruction", tokens[:, 2:]), 8)
            recon.append(np.mean(np.abs(pixels - rotated)))  # nn.L1Loss
            rot.append(ref.cross_entropy(head("rotation", tokens[:, 1]), k))
            z.append(head("contrastive", tokens[:, 0]))
        return {"reconstruction": np.mean(recon), "rotation": np.mean(rot),  # both views in one batch
                "contrastive": ref.sit_contrastive_loss(z[0], z[1], temperature)}

    def total(t, scales=cfg.loss_scales, weights=s):
        return sum(scales[n] * np.exp(-weights[n]) * value + 0.5 * weights[n] for n, value in t.items())

    want = terms()
    check(loss, total(want), total(terms(temperature=0.5 * cfg.temperature)), total(terms(corrupt=False)),
          total(terms(clockwise=True)), total(want, dict(cfg.loss_scales, reconstruction=1.0)),
          total(want, weights=dict.fromkeys(s, 0.0)))
