"""Stopping cleanly on SIGTERM, the signal TPU/cloud preemption and SLURM send.

The handler only sets a flag; the train loop asks `requested(step)` after each step,
and when it says yes the loop writes a checkpoint and returns, so the process exits
0 and the same command resumes. In a multi-process run every process must stop at the
same step, so there the decision is jax's preemption sync point
(`multihost_utils.reached_preemption_sync_point`: the coordination service catches
the signal on any host and agrees on a step); single-process runs use the flag.
"""
from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class SigtermWatcher:
    """Context manager: while inside, SIGTERM asks the loop to stop after the current step.

    The previous handler is restored on exit, so library and test callers keep theirs.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        self._multiprocess = jax.process_count() > 1

    def __enter__(self) -> "SigtermWatcher":
        if not self._multiprocess:  # jax's coordination service owns SIGTERM in multi-process runs
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.received = True

    def requested(self, step: int) -> bool:
        """Whether to stop after `step` (the same answer on every process)."""
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received
