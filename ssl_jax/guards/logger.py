"""Metrics to TensorBoard event files, a JSON-lines file and a readable line per log step.

Both files go through `ssl_jax.paths`, so WORKDIR may be a URL (gs://...): tensorboardX
writes the events (no tensorflow needed for local runs) and, for a URL, opens its file
through epath instead of its own GCS/S3 writers, which need google-cloud-storage / boto3.
"""
from __future__ import annotations

import json
import time

import jax

from ssl_jax import paths


class _EpathFiles:
    """tensorboardX's writer factory for a URL scheme: its event file opened through epath."""

    def open(self, path: str):
        return paths.resolve(path).open("wb")

    def directory_check(self, path: str) -> None:
        paths.resolve(path).mkdir(parents=True, exist_ok=True)


class MetricLogger:
    """Writes under WORKDIR/metrics: TensorBoard events and metrics.jsonl. Process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter, record_writer  # light: no tensorflow needed

        directory = paths.resolve(workdir) / "metrics"
        directory.mkdir(parents=True, exist_ok=True)
        if paths.is_url(directory):
            record_writer.register_writer_factory(str(directory).split(":")[0], _EpathFiles())
        self.writer = SummaryWriter(str(directory))
        self.jsonl = (directory / "metrics.jsonl").open("a")

    def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
        self.writer.flush()
        record = {"step": step, "split": prefix, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def format_duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '12s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(step: int, total: int, scalars: dict, eta_seconds: float) -> str:
    """One human-readable line: step, percent, ETA and the metrics."""
    shown = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
    return f"step {step}/{total} ({100 * step / total:.1f}%) eta {format_duration(eta_seconds)} | {shown}"


def log_line(line: str) -> None:
    """Prints a line from process 0."""
    if jax.process_index() == 0:
        print(line, flush=True)
