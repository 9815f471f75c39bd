"""launch/: the scripts parse (bash -n), pass shellcheck, check their inputs and say what they do.

shellcheck is Debian's package (`.ci/run` installs it when it can); without it that test is
skipped with the reason, and `bash -n` still runs. Nothing here starts a cloud machine:
tpu_pod.sh runs with DRY_RUN=1, which prints the gcloud commands instead of running them.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) + glob.glob(os.path.join(REPO, "launch", "*.sbatch")))


def _run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_all_three_scripts_exist():
    names = {os.path.basename(s) for s in SCRIPTS}
    assert {"tpu_pod.sh", "slurm_gpu.sbatch", "local_multiprocess.sh"} <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
    result = _run("bash", "-n", script)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (Debian package `shellcheck`; .ci/run installs it as root)")
@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
    result = _run("shellcheck", "--shell=bash", script)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("bad", [[], ["2"], ["zero", "--workdir=x"], ["0", "--workdir=x"]])
def test_local_multiprocess_checks_its_arguments(bad):
    result = _run("bash", "launch/local_multiprocess.sh", *bad)
    assert result.returncode == 2 and "usage:" in result.stderr, result.stderr


def test_tpu_pod_prints_the_same_command_for_every_worker():
    result = _run("bash", "launch/tpu_pod.sh", "run", "--config=configs/dino_small.py", "--workdir=gs://bucket/run",
                  env={"DRY_RUN": "1", "TPU_NAME": "pod", "ZONE": "us-central2-b"})
    assert result.returncode == 0, result.stderr
    assert "gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all" in result.stdout
    assert "python3 -m ssl_jax.main --config=configs/dino_small.py --workdir=gs://bucket/run " \
           "--config.distributed.auto=True" in result.stdout


def test_tpu_pod_names_missing_settings():
    result = _run("bash", "launch/tpu_pod.sh", "create", env={"DRY_RUN": "1", "TPU_NAME": "pod", "ZONE": "z",
                                                               "ACCELERATOR_TYPE": ""})
    assert result.returncode == 2 and "set ACCELERATOR_TYPE" in result.stderr, result.stderr


def test_slurm_script_refuses_to_run_outside_sbatch():
    result = _run("bash", "launch/slurm_gpu.sbatch", "--config=configs/dino_small.py", "--workdir=/tmp/x",
                  env={"SLURM_JOB_ID": ""})
    assert result.returncode == 2 and "submit this with sbatch" in result.stderr, result.stderr
