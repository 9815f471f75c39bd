"""The one exception type for problems the user can fix.

Raise `UserError` with a single line that names the file, step or config key at fault
and what to do about it; `ssl_jax.main` prints it as `error: <message>` and exits 1,
without a traceback. Anything else reaching main is a bug and keeps its traceback, so raise UserError at the
source of an expected bad input (a config value, a missing file), never a bare ValueError.
It subclasses ValueError: code that guards a bad value with `except ValueError` still sees it.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad input, config, workdir or checkpoint, explained in one line."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """'Type: first line of the message' (cut at `limit` characters): a caught exception named inside a UserError."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit] if lines else ''}"
