"""Config files by name: `--config=dino_small[:preset]` as well as `--config=configs/dino_small.py:cifar10`.

The configs live in the repository's `configs/`; a (non-editable) install ships the same files
as the package `ssl_jax.configs` (setup.cfg's `package_dir`), so both places are searched.
"""
from __future__ import annotations

import os

PACKAGE = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIRS = (os.path.join(os.path.dirname(PACKAGE), "configs"), os.path.join(PACKAGE, "configs"))


def config_path(name: str) -> str:
    """An existing path as given, else `name` (`dino_small` or `dino_small.py`, no directory) in
    the configs directory; unchanged when neither exists (the caller's error names it)."""
    if os.path.exists(name) or os.sep in name:
        return name
    filename = name if name.endswith(".py") else f"{name}.py"
    return next((os.path.join(d, filename) for d in CONFIG_DIRS if os.path.isfile(os.path.join(d, filename))), name)


def resolve_flag(argv: list[str], flag: str = "config") -> list[str]:
    """argv with `--<flag>=NAME[:preset]` resolved by `config_path` (the preset kept)."""
    out = []
    for arg in argv:
        if arg.startswith(f"--{flag}="):
            value = arg[len(flag) + 3:]
            name, sep, preset = value.partition(":")
            arg = f"--{flag}={config_path(name)}{sep}{preset}"
        out.append(arg)
    return out
