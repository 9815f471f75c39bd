"""The training loop's bookkeeping, kept out of its body (`ssl_jax.train.train_and_evaluate`).

    call_size(step, total, per_call)   # steps the next compiled call runs
    call_sizes(start, total, per_call) # every call size a run from `start` uses (compiled up front)
    next_global_batch(batches, n, mesh)
    timer = IntervalTimer()            # seconds per log interval, evaluation left out
    averager = MetricAverager(guard)   # per-step metrics of the interval, the non-finite guard applied
"""
from __future__ import annotations

import contextlib
import time

import jax
import numpy as np

from ssl_jax import sharding


def call_size(step: int, total: int, per_call: int) -> int:
    """Steps of the call that starts after `step`: a whole call of `per_call` steps from a multiple of
    `per_call` when that many remain, else one step (the rest of the run, and up to the next multiple
    when resumed elsewhere), so that every log, checkpoint and eval step ends a call."""
    return per_call if step % per_call == 0 and total - step >= per_call else 1


def call_sizes(start: int, total: int, per_call: int) -> set[int]:
    """The call sizes (`call_size`) a run from step `start` to `total` uses."""
    if start >= total:
        return set()
    first_whole = -(-start // per_call) * per_call  # the first multiple of per_call at or after start
    sizes = {per_call} if first_whole + per_call <= total else set()
    return sizes | ({1} if start % per_call or total % per_call or not sizes else set())


def next_global_batch(batches, n: int, mesh) -> dict:
    """The next `n` per-process batches as one global batch: [B, ...], or [n, B, ...] stacked when n > 1."""
    local = [next(batches) for _ in range(n)]
    return sharding.to_global_batch(local[0], mesh) if n == 1 else sharding.to_global_batches(local, mesh)


class IntervalTimer:
    """Wall-clock seconds and steps of the current log interval, less the time spent under
    `paused()` (evaluation), and the run's total training seconds."""

    def __init__(self):
        self.start, self.steps, self.total = time.time(), 0, 0.0

    def count(self, steps: int) -> None:
        self.steps += steps

    @contextlib.contextmanager
    def paused(self):
        """Time spent in the block is not training time."""
        start = time.time()
        try:
            yield
        finally:
            self.start += time.time() - start

    def lap(self) -> tuple[float, int]:
        """(seconds, steps) of the interval that ends now; the next one starts now."""
        now = time.time()
        seconds, steps = now - self.start, self.steps
        self.start, self.steps, self.total = now, 0, self.total + seconds
        return seconds, steps


def mean_metrics(per_step: list[dict]) -> dict[str, float]:
    """Averages a list of per-step scalar metric dicts into floats."""
    return {name: float(np.mean([scalars[name] for scalars in per_step])) for name in per_step[0]}


class MetricAverager:
    """The per-step scalar metrics of the current log interval. Each step passes the non-finite
    guard (`ssl_jax.guards.nonfinite.NonFiniteGuard`): a skipped step is counted, not averaged."""

    def __init__(self, guard):
        self.guard, self.per_step, self.skipped = guard, [], 0

    def add(self, first_step: int, metrics: dict, n: int) -> None:
        """Adds one call's metrics ({name: [n] or scalar array}) for steps first_step..first_step+n-1
        (1-based, as logged): one host sync per call, a NaN reported on the step where it happened."""
        host = {k: np.reshape(v, (n,)) for k, v in jax.device_get(metrics).items()}
        for i in range(n):
            scalars = {k: float(v[i]) for k, v in host.items()}
            if self.guard.skipped(first_step + i, scalars):
                self.skipped += 1
            else:
                self.per_step.append(scalars)

    def pop_mean(self, step: int) -> tuple[dict[str, float], int]:
        """(the interval's mean metrics, its skipped-step count), checked by the guard at `step`; starts
        the next interval. `nonfinite` is dropped: 0 for every averaged step. Needs an averaged step."""
        scalars = mean_metrics(self.per_step)
        del scalars["nonfinite"]
        self.guard.check_logged(step, scalars)
        skipped, self.per_step, self.skipped = self.skipped, [], 0
        return scalars, skipped
