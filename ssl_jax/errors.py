"""The one exception type for problems the user can fix.

Raise `UserError` with a single line that names the file, step or config key at fault
and what to do about it; `ssl_jax.main` prints it as `error: <message>` and exits 1,
without a traceback. Anything else reaching main is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A bad input, config, workdir or checkpoint, explained in one line."""
