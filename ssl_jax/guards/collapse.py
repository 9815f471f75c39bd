"""Warns when a DINO-family teacher collapses (the "loss stuck at a constant" problem).

Reads two logged scalars, and does nothing for methods that do not log them:
  teacher_entropy     H(teacher distribution), between 0 and log K
  teacher_kl_uniform  KL(teacher || uniform) = log K - H
Their sum is log K, so no head size is needed. The teacher has collapsed to uniform
when the KL stays near 0 (entropy at its maximum: centering wins), and to one
prototype when the entropy stays near 0 (sharpening wins). "Near" is
`tolerance * log K`; "stays" is `patience` consecutive log steps (config.collapse).
"""
from __future__ import annotations

from typing import Callable

CAUSES = {
    "uniform": ("teacher entropy at its maximum (every image gets the same, flat target). Likely causes: "
                "teacher temperature too high (--config.method.teacher_temp; DINO: 0.04-0.07), centering "
                "momentum too low (--config.method.center_momentum; DINO: 0.9), or a batch too small for a "
                "stable center (--config.batch_size)."),
    "one-hot": ("teacher entropy at zero (every image is assigned to the same prototype). Likely causes: "
                "teacher temperature too low (--config.method.teacher_temp), centering momentum too high "
                "(--config.method.center_momentum, the center stops tracking the teacher), or a batch too "
                "small for a stable center (--config.batch_size)."),
}


class CollapseMonitor:
    """Feed it each log step's scalars; it warns once per collapse episode through `warn`."""

    def __init__(self, patience: int, tolerance: float, warn: Callable[[str], None]):
        self.patience = patience
        self.tolerance = tolerance
        self.warn = warn
        self.kind, self.count, self.warned = None, 0, False

    def classify(self, scalars: dict) -> str | None:
        """'uniform', 'one-hot' or None for one log step's scalars."""
        entropy, kl = scalars.get("teacher_entropy"), scalars.get("teacher_kl_uniform")
        if entropy is None or kl is None:
            return None
        max_entropy = entropy + kl  # log K
        if kl <= self.tolerance * max_entropy:
            return "uniform"
        if entropy <= self.tolerance * max_entropy:
            return "one-hot"
        return None

    def update(self, step: int, scalars: dict) -> str | None:
        """Counts consecutive collapsed log steps; warns when the count reaches `patience`.

        Returns the collapse kind while collapsed, else None.
        """
        kind = self.classify(scalars)
        if kind != self.kind:
            self.kind, self.count, self.warned = kind, 0, False
        if kind is None:
            return None
        self.count += 1
        if self.count >= self.patience and not self.warned:
            self.warned = True
            entropy, kl = scalars["teacher_entropy"], scalars["teacher_kl_uniform"]
            self.warn(f"WARNING: representation collapse at step {step}: {CAUSES[kind]} teacher_entropy="
                      f"{entropy:.4g}, teacher_kl_uniform={kl:.4g} (log K = {entropy + kl:.4g}) for "
                      f"{self.count} log steps in a row.")
        return kind
