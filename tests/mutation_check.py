"""Plants single-line bugs, one at a time, in a temporary copy of the repository and reports which
the tests catch (killed) and which they miss (survived).

    python tests/mutation_check.py                 # every mutation, one after the other
    python tests/mutation_check.py --only simclr_temperature wd_on_biases
    python tests/mutation_check.py --list

Each mutation is (name, file, old snippet, new snippet, test targets). The old snippet must occur
exactly once in the file ("stale" otherwise: update the list). A target is a test file (or glob)
with an optional `::-k expression`; one whose file does not exist (e.g. a reference module another
branch adds) is left out, and a mutation with none left is "not run". Each mutation runs only
its targets (pytest -x) in its own copy, so the copy's tests import the mutated `ssl_jax`.
Run from anywhere; it needs the CIFAR-10 files (TFDS_DATA_DIR, as the tests) for end-to-end targets.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The method-level loss references other branches add; listed for the loss mutations.
METHOD_REFS = "tests/test_method_refs*.py"


class Mutation(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    targets: tuple[str, ...]


MUTATIONS = (
    Mutation("simclr_temperature", "ssl_jax/methods/simclr.py",
             "losses.nt_xent(queries, keys, self.config.temperature)", "losses.nt_xent(queries, keys, 0.5)",
             ("tests/test_contrastive.py::-k simclr and not smoke", METHOD_REFS)),
    Mutation("momentum_schedule_shift", "ssl_jax/core/step.py",
             'metrics["teacher_momentum"] = schedules.teacher_momentum(state.step)',
             'metrics["teacher_momentum"] = schedules.teacher_momentum(state.step + 1)',
             ("tests/test_step.py::-k ema or schedule",)),
    Mutation("resume_fresh_rng", "ssl_jax/train.py",
             "    if restored is not None:\n        return restored\n",
             "    if restored is not None:\n        return restored.replace(rng=create_state(config, run).rng)\n",
             ("tests/test_train.py::-k resume",)),
    Mutation("byol_predictor_skipped", "ssl_jax/methods/byol.py", "has_predictor = True", "has_predictor = False",
             ("tests/test_contrastive.py::-k byol and not smoke", METHOD_REFS)),
    Mutation("simsiam_no_stop_gradient", "ssl_jax/methods/simsiam.py", 'target = "stop_gradient"', 'target = "online"',
             ("tests/test_contrastive.py::-k simsiam and not smoke", METHOD_REFS)),
    Mutation("dino_center_momentum_ignored", "ssl_jax/methods/dino.py",
             "self.center_momentum = config.method.center_momentum", "self.center_momentum = 0.9",
             ("tests/test_models.py::-k center", "tests/test_losses.py", "tests/test_ibot_dinov2.py::-k not smoke",
              METHOD_REFS)),
    Mutation("mocov3_temperature_doubled", "ssl_jax/methods/mocov3.py",
             "losses.info_nce(queries, keys, self.config.temperature)",
             "losses.info_nce(queries, keys, 2 * self.config.temperature)",
             ("tests/test_contrastive.py::-k mocov3 and not smoke", METHOD_REFS)),
    Mutation("swav_sinkhorn_iterations_ignored", "ssl_jax/methods/swav.py",
             "self.settings.sinkhorn_iterations)", "1)",
             ("tests/test_clustering.py::-k not smoke", METHOD_REFS)),
    Mutation("rotnet_only_0_and_180", "ssl_jax/methods/rotation.py",
             "for k in range(NUM_ROTATIONS)], axis=1)", "for k in (0, 2, 0, 2)], axis=1)",
             ("tests/test_pretext.py::-k not smoke", METHOD_REFS)),
    Mutation("mae_mask_ratio_ignored", "ssl_jax/methods/mae.py",
             "m = masks.random_masks(rng, images.shape[0], self.num_patches, self.mask_ratio)",
             "m = masks.random_masks(rng, images.shape[0], self.num_patches, 0.5)",
             ("tests/test_mim.py::-k not smoke", METHOD_REFS)),
    Mutation("wd_on_biases", "ssl_jax/optim.py", "lambda p: p.ndim > 1, params)", "lambda p: p.ndim >= 1, params)",
             ("tests/test_optim.py",)),
    # Our own: the rest of the shared step, schedules, EMA and evaluation.
    Mutation("nonfinite_guard_off", "ssl_jax/core/step.py",
             "finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)", "finite = jnp.isfinite(loss) | True",
             ("tests/test_step.py::-k nonfinite",)),
    Mutation("ema_weights_swapped", "ssl_jax/core/state.py",
             "lambda t, s: t * momentum + (1.0 - momentum) * s.astype(t.dtype)",
             "lambda t, s: s.astype(t.dtype) * momentum + (1.0 - momentum) * t",
             ("tests/test_step.py::-k ema",)),
    Mutation("teacher_temp_warmup_per_step", "ssl_jax/optim.py",
             "        epoch = step // steps_per_epoch\n", "        epoch = step\n",
             ("tests/test_step.py::-k schedule",)),
    Mutation("lr_warmup_exclusive", "ssl_jax/optim.py",
             'ramp_steps = max(warmup_steps - 1, 1) if warmup_style == "linspace"',
             'ramp_steps = warmup_steps if warmup_style == "linspace"',
             ("tests/test_step.py::-k schedule",)),
    Mutation("sit_loss_weights_ignored", "ssl_jax/methods/sit.py",
             "loss = sum(self.loss_scales[name] * jnp.exp(-s[name]) * value",
             "loss = sum(jnp.exp(-s[name]) * value",
             ("tests/test_pretext.py::-k sit and not smoke", METHOD_REFS)),
    Mutation("sit_rotation_target_unturned", "ssl_jax/methods/sit.py",
             "target = patchify(rotated, self.patch)", "target = patchify(clean, self.patch)",
             ("tests/test_pretext.py::-k sit and not smoke", METHOD_REFS)),
    Mutation("knn_temperature_ignored", "ssl_jax/eval/knn.py",
             "weights = jnp.exp(top_sim / temperature)", "weights = jnp.exp(top_sim / 0.5)",
             ("tests/test_knn.py::-k numpy_reference",)),
    Mutation("miou_absent_class_as_zero", "ssl_jax/eval/segmentation.py",
             '"mIoU": float(np.nanmean(iou))', '"mIoU": float(np.mean(np.nan_to_num(iou)))',
             ("tests/test_segmentation.py::-k miou",)),
    Mutation("confusion_counts_void", "ssl_jax/eval/segmentation.py",
             "    valid = label != data.VOID\n    if np.any", "    valid = label >= 0\n    if np.any",
             ("tests/test_segmentation.py::-k miou",)),
    Mutation("bilinear_align_corners_true", "ssl_jax/eval/segmentation.py",
             "np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)",
             "np.arange(out_size) * (in_size - 1) / max(out_size - 1, 1)",
             ("tests/test_segmentation.py::-k bilinear or resizes",)),
    Mutation("seg_loss_over_labelled_pixels", "ssl_jax/eval/segmentation.py",
             "jnp.where(valid, picked, 0.0)) / labels.size", "jnp.where(valid, picked, 0.0)) / jnp.sum(valid)",
             ("tests/test_segmentation.py::-k loss",)),
    Mutation("seg_warmup_skipped", "ssl_jax/eval/segmentation.py",
             "jnp.where(t < cfg.warmup_steps, regular * warm, regular)", "regular",
             ("tests/test_segmentation.py::-k schedule",)),
    Mutation("seg_head_not_updated", "ssl_jax/eval/segmentation.py",
             "return (optax.apply_updates(params, updates), stats, opt_state), loss",
             "return (params, stats, opt_state), loss",
             ("tests/test_segmentation.py::-k probe",)),
    Mutation("pca_smallest_components", "ssl_jax/analysis/patch_pca.py",
             "np.argsort(values)[::-1][:k]", "np.argsort(values)[:k]",
             ("tests/test_segmentation.py::-k pca",)),
    Mutation("pca_keeps_larger_side", "ssl_jax/analysis/patch_pca.py",
             "np.sum(first > 0) > flat.shape[0] / 2", "np.sum(first > 0) < flat.shape[0] / 2",
             ("tests/test_segmentation.py::-k pca",)),
    Mutation("reduce_zero_label_kept", "ssl_jax/data/segmentation.py",
             "np.where((y == 0) | (y == VOID), VOID, y - 1)", "np.where(y == VOID, VOID, y)",
             ("tests/test_segmentation.py::-k reader",)),
)


def _targets(copy: str, targets) -> list[list[str]]:
    """pytest argument lists of the targets ("path-or-glob" or "path::-k expression") found in `copy`."""
    runs = []
    for target in targets:
        pattern, _, expression = target.partition("::-k ")
        for found in sorted(glob.glob(os.path.join(copy, pattern))):
            runs.append([os.path.relpath(found, copy)] + (["-k", expression] if expression else []))
    return runs


def run_one(mutation: Mutation, timeout: int) -> tuple[str, float, str]:
    """(outcome, seconds, detail) of one mutation in a fresh copy of the repository."""
    with tempfile.TemporaryDirectory(prefix=f"mutant_{mutation.name}_") as tmp:
        copy = os.path.join(tmp, "repo")
        shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info"))
        path = os.path.join(copy, mutation.file)
        with open(path) as f:
            text = f.read()
        if text.count(mutation.old) != 1:
            return "stale", 0.0, f"old snippet found {text.count(mutation.old)} times in {mutation.file}"
        with open(path, "w") as f:
            f.write(text.replace(mutation.old, mutation.new))
        runs = _targets(copy, mutation.targets)
        if not runs:
            return "not run", 0.0, "none of its test files exists: " + ", ".join(mutation.targets)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        # conftest's default TFDS_DATA_DIR is beside the repository; the copy is elsewhere.
        env.setdefault("TFDS_DATA_DIR", os.path.normpath(os.path.join(REPO, "..", "shared", "data", "tfds")))
        env.pop("CI", None)  # a skip is not a kill
        where = subprocess.run([sys.executable, "-c", "import ssl_jax; print(ssl_jax.__file__)"], cwd=copy, env=env,
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(copy):
            return "error", 0.0, f"the copy's tests would import ssl_jax from {where or '(nowhere)'}"
        start, failed, summaries = time.time(), [], []
        for args in runs:
            try:
                result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                         "-o", "addopts=", *args], cwd=copy, env=env, capture_output=True,
                                        text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return "timeout", time.time() - start, " ".join(args)
            summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
            summaries.append(f"{' '.join(args)}: {summary}")
            if result.returncode == 5:  # nothing collected: the -k expression matched no test
                return "error", time.time() - start, f"{' '.join(args)}: no test selected"
            if result.returncode != 0:
                failed.append(f"{' '.join(args)}: {summary}")
                break  # killed; the other targets need not run
        outcome = "killed" if failed else "survived"
        return outcome, time.time() - start, "; ".join(failed or summaries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutation names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    args = parser.parse_args()
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s) {sorted(unknown)}; --list shows them")
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.file}: {m.targets}")
        return 0
    print("| mutation | file | outcome | seconds | detail |\n|---|---|---|---|---|", flush=True)
    survived = 0
    for m in chosen:
        outcome, seconds, detail = run_one(m, args.timeout)
        survived += outcome != "killed"
        print(f"| {m.name} | {m.file} | {outcome} | {seconds:.0f} | {detail} |", flush=True)
    print(f"\n{len(chosen) - survived} of {len(chosen)} killed", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
