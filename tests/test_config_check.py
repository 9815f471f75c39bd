"""Bad configs end in one line naming the field and a valid value, before anything is built
(ssl_jax/guards/config_check.py), as a new user would meet them.

Most cases call `config_check.validate` in-process on the tiny DINO smoke config, which is what
`ssl_jax.main` runs first and prints as `error: <message>`; three go through the real command
line (a process each, conftest.start_config's): a missing config file, an unknown preset, a negative batch size.
"""
from __future__ import annotations

import glob
import os
import subprocess

import pytest

import main_process
from conftest import CONFIG_FILE, REPO, finish, make_smoke_config
from ssl_jax.errors import UserError
from ssl_jax.guards import config_check
from test_contract import load_config

# (overrides of the DINO smoke config, the field the one line must name)
BAD_VALUES = [
    ({"batch_size": -5}, "batch_size"),
    ({"augment.local_crops.number": -1}, "augment.local_crops.number"),
    ({"num_epochs": 0}, "num_epochs"),
    ({"log_every_steps": 0}, "log_every_steps"),
    ({"eval.batch_size": 0}, "eval.batch_size"),
    ({"augment.flip_prob": 1.5}, "augment.flip_prob"),
    ({"augment.blur_prob": (1.0, 0.1, -0.5)}, "augment.blur_prob"),
    ({"augment.global_crops.scale": (0.5, 0.2)}, "augment.global_crops.scale"),
    ({"optim.teacher_momentum": 1.2}, "optim.teacher_momentum"),
    ({"accum_steps": 3}, "accum_steps"),  # 16 does not split into 3 micro-batches
    ({"method.name": "dinoo"}, "method.name"),
    ({"model.name": "vitt"}, "model.name"),
    ({"optim.name": "adam"}, "optim.name"),
    ({"compute_dtype": "float16"}, "compute_dtype"),
    ({"dataset.name": "cifar100000"}, "dataset.name"),
]


@pytest.mark.parametrize("overrides,field", BAD_VALUES, ids=[field for _, field in BAD_VALUES])
def test_bad_value_is_one_line_naming_the_field(overrides, field):
    config = make_smoke_config(**overrides)
    with pytest.raises(UserError) as error:
        config_check.validate(config)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"config.{field}=") and f"--config.{field}=" in message, message


def test_teacher_momentum_is_required_exactly_for_an_ema_teacher():
    dino = make_smoke_config(**{"optim.teacher_momentum": None})
    with pytest.raises(UserError, match=r"^config.optim.teacher_momentum is not set, but method 'dino' updates "
                                         r"an EMA teacher"):
        config_check.validate(dino)
    simclr = load_config("simclr_resnet50", "smoke")
    simclr.optim.teacher_momentum = 0.99
    with pytest.raises(UserError, match=r"^config.optim.teacher_momentum=0.99 is set, but method 'simclr' has no "
                                        r"EMA teacher"):
        config_check.validate(simclr)


def test_unknown_mlp_init_names_its_section():
    simclr = load_config("simclr_resnet50", "smoke")
    simclr.method.projector.init = "kaiming"
    with pytest.raises(UserError, match=r"^config.method.projector.init='kaiming' is not one of .* set e.g. "
                                        r"--config.method.projector.init="):
        config_check.validate(simclr)


def test_every_preset_validates():
    presets = {"": None, "cifar10": None, "smoke": None}
    for path in glob.glob(os.path.join(REPO, "configs", "*.py")):
        name = os.path.basename(path)[:-3]
        for preset in presets:
            config = load_config(name, preset)
            if "method" in config:  # a training config (eval_protocols.py and self_training.py configure tools)
                config_check.validate(config)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match=r"unknown preset 'nope' for dino_small.py; choose one of"):
        load_config("dino_small", "nope")


def _main(config_spec: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m ssl_jax.main --config=CONFIG_SPEC --workdir=/nonexistent/unused ARGS`, run to its end."""
    return finish(main_process.start([f"--config={config_spec}", "--workdir=/nonexistent/unused", *args]), timeout=300)


@pytest.mark.parametrize("spec,args,line", [
    ("configs/nope.py", (), "error: config file 'configs/nope.py' does not exist (--config); pass e.g. "
                            "--config=configs/dino_small.py:cifar10"),
    (f"{CONFIG_FILE}:nope", (), "error: unknown preset 'nope' for dino_small.py; choose one of "
                                "['cifar10', 'imagenet', 'smoke']"),
    (f"{CONFIG_FILE}:smoke", ("--config.batch_size=-5",), "error: config.batch_size=-5 must be at least 1; set "
                                                          "e.g. --config.batch_size=1"),
], ids=["missing_file", "unknown_preset", "negative_batch"])
def test_command_line_gives_one_line(spec, args, line):
    result = _main(spec, *args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == line, result.stderr
