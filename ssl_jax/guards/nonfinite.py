"""What the loop does when a step's loss or gradient norm is NaN/Inf (config.nonfinite).

The train step already refused to apply such an update (it keeps the previous
params, optimiser, teacher and method state, and sets the metric `nonfinite`), so
the state in memory is the last good one either way. Then, per `policy`:
  "stop" (default): end the run with a message naming the step and the first
      offending metric; nothing is saved, so the last good checkpoint stays the latest.
  "skip": log the step as skipped and go on with the next batch; more than
      `max_consecutive_skips` in a row stop the run as "stop" would (a diverged run
      should not burn its allocation skipping every step).
"""
from __future__ import annotations

import math
from typing import Callable

from ssl_jax.errors import UserError

POLICIES = ("stop", "skip")
FIRST = ("loss", "grad_norm")  # reported first: what the policy acts on


class NonFiniteError(UserError):
    """A NaN or Inf stopped the run."""


def offending(scalars: dict) -> list[str]:
    """Names of the non-finite metrics, loss and grad_norm first."""
    names = [n for n in FIRST if n in scalars] + sorted(n for n in scalars if n not in FIRST and n != "nonfinite")
    return [n for n in names if not math.isfinite(scalars[n])]


class NonFiniteGuard:
    """Applies config.nonfinite to each step's host metrics."""

    def __init__(self, cfg, log: Callable[[str], None]):
        if cfg.policy not in POLICIES:
            raise UserError(f"config.nonfinite.policy={cfg.policy!r} is not one of {POLICIES}; "
                            f"set --config.nonfinite.policy=stop or =skip")
        self.policy, self.max_skips, self.log = cfg.policy, cfg.max_consecutive_skips, log
        self.consecutive = 0

    def _message(self, step: int, bad: list[str], scalars: dict) -> str:
        values = ", ".join(f"{n}={scalars[n]}" for n in bad)
        return f"non-finite {bad[0]} at step {step} ({values})"

    def skipped(self, step: int, scalars: dict) -> bool:
        """True when this step's update was dropped and the run goes on; raises when it must stop."""
        if not scalars.get("nonfinite"):
            self.consecutive = 0
            return False
        bad = offending(scalars) or ["loss"]
        message = self._message(step, bad, scalars)
        if self.policy == "stop":
            raise NonFiniteError(f"{message}; stopped without saving, so the last good checkpoint stays the "
                                 f"latest. Lower --config.optim.lr or check the input data; "
                                 f"--config.nonfinite.policy=skip skips such steps instead.")
        self.consecutive += 1
        if self.consecutive > self.max_skips:
            raise NonFiniteError(f"{message}: {self.consecutive} non-finite steps in a row, more than "
                                 f"config.nonfinite.max_consecutive_skips={self.max_skips}; the run has diverged. "
                                 f"The last good checkpoint stays the latest. Lower --config.optim.lr or check "
                                 f"the data.")
        self.log(f"{message}: update skipped (config.nonfinite.policy=skip, {self.consecutive} in a row)")
        return True

    def check_logged(self, step: int, scalars: dict) -> None:
        """Stops on a non-finite average of the other logged metrics (over non-skipped steps)."""
        bad = offending(scalars)
        if bad:
            raise NonFiniteError(f"{self._message(step, bad, scalars)} in the metrics averaged at this log step; "
                                 f"the last good checkpoint stays the latest. Lower --config.optim.lr or check "
                                 f"the input data.")
