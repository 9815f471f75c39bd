"""Every config file's `:smoke` preset is run from the command line by a test in CI's command.

The runs live beside each family's other tests (one module per family, so pytest-xdist spreads
them over its workers); this module checks that no config is missing from them or left out of
CI's `-m 'not slow'` selection.
"""
from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys

from conftest import REPO

# config file -> the test that runs its `:smoke` preset with `python -m ssl_jax.main`.
SMOKE_TESTS = {
    "byol_resnet50": "test_contrastive.py::test_smoke_preset_end_to_end[byol]",
    "mocov3_vit_small": "test_contrastive.py::test_smoke_preset_end_to_end[mocov3]",
    "simclr_resnet50": "test_contrastive.py::test_smoke_preset_end_to_end[simclr]",
    "simsiam_resnet50": "test_contrastive.py::test_smoke_preset_end_to_end[simsiam]",
    "swav_resnet50": "test_clustering.py::test_smoke_preset_end_to_end[swav_resnet50]",
    "suave_resnet50": "test_clustering.py::test_smoke_preset_end_to_end[suave_resnet50]",
    "daino_small": "test_clustering.py::test_smoke_preset_end_to_end[daino_small]",
    "rotation_resnet50": "test_pretext.py::test_smoke_preset_end_to_end[rotation_resnet50]",
    "sla_resnet": "test_pretext.py::test_smoke_preset_end_to_end[sla_resnet]",
    "mp3_vit_small": "test_pretext.py::test_smoke_preset_end_to_end[mp3_vit_small]",
    "instance_vit_tiny": "test_pretext.py::test_smoke_preset_end_to_end[instance_vit_tiny]",
    "sit_vit_small": "test_pretext.py::test_smoke_preset_end_to_end[sit_vit_small]",
    "mae_base": "test_mim.py::test_smoke_preset_end_to_end[mae]",
    "simmim_vit_base": "test_mim.py::test_smoke_preset_end_to_end[simmim]",
    "ijepa_small": "test_mim.py::test_smoke_preset_end_to_end[ijepa]",
    "ibot_small": "test_ibot_dinov2.py::test_smoke_preset_end_to_end[ibot]",
    "dinov2_small": "test_ibot_dinov2.py::test_smoke_preset_end_to_end[dinov2]",
    "deit_small": "test_distillation.py::test_smoke_preset_end_to_end[deit_small]",
    "attention_transfer_vit_large": "test_distillation.py::test_smoke_preset_end_to_end[attention_transfer_vit_large]",
    "unic_vit_base": "test_distillation.py::test_smoke_preset_end_to_end[unic_vit_base]",
    "clip_vit_b32": "test_image_text.py::test_smoke_preset_end_to_end[clip_vit_b32]",
    "siglip_vit_b16": "test_image_text.py::test_smoke_preset_end_to_end[siglip_vit_b16]",
    "slip_vit_b16": "test_image_text.py::test_smoke_preset_end_to_end[slip_vit_b16]",
    "lit_vit_b16": "test_image_text.py::test_smoke_preset_end_to_end[lit_vit_b16]",
    # conftest.TINY_OVERRIDES shrink it further (compile time); the tiny run is the same program.
    "dino_small": "test_train.py::test_smoke_main_end_to_end",
}
# Configs whose `:smoke` preset is another config's, field for field (checked below).
SAME_SMOKE_AS = {"mae_small": "mae_base"}


def _smoke_config(name: str):
    return importlib.import_module(f"configs.{name}").get_config("smoke")


def test_every_training_config_has_a_smoke_test():
    """Each configs/*.py that trains (has a `method`) is in SMOKE_TESTS or SAME_SMOKE_AS."""
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py")))
    training = [n for n in names if "method" in _smoke_config(n)]
    assert sorted(training) == sorted({**SMOKE_TESTS, **SAME_SMOKE_AS})
    for name, same in SAME_SMOKE_AS.items():
        assert _smoke_config(name).to_dict() == _smoke_config(same).to_dict(), name


def test_every_smoke_test_is_collected_by_ci_selection(request):
    """CI's selection (`-m 'not slow'`) collects each test of SMOKE_TESTS. Under CI's command this
    session's own selection is checked; a session that did not collect the smoke modules with
    `-m 'not slow'` (e.g. this file alone) collects them in a subprocess."""
    modules = sorted({os.path.join("tests", test.split("::")[0]) for test in SMOKE_TESTS.values()})
    session = {item.nodeid for item in request.session.items}
    if request.config.getoption("markexpr") == "not slow" and all(
            any(node.startswith(module + "::") for node in session) for module in modules):
        collected = session
    else:
        result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                 "-m", "not slow", *modules], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        collected = {line.strip() for line in result.stdout.splitlines()}
    missing = [test for test in SMOKE_TESTS.values() if f"tests/{test}" not in collected]
    assert not missing, f"not collected with -m 'not slow': {missing}"
