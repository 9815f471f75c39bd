"""Checkpoints with orbax's CheckpointManager under WORKDIR/checkpoints.

orbax writes each step into a temporary directory and renames it when complete, so
a crash mid-write (even `kill -9`) leaves the previous checkpoints intact; the
partial one is ignored on restore and its temporary directory removed when the next
run starts. Only whole TrainStates are saved: the data pipeline is a pure function
of (seed, step), so the step is all it needs to resume.

Restoring checks the checkpoint's recorded shapes against the config's state before
reading any array, so a changed config or a damaged checkpoint gives one line that
names the step and the problem (`CheckpointError`). With `fallback`, a checkpoint that
cannot be restored is moved (never deleted) to WORKDIR/corrupt_checkpoints/ and the
previous one is tried. The workdir may be a URL (gs://...): every path is an epath.Path
(`ssl_jax.paths`).
"""
from __future__ import annotations

from typing import Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from ssl_jax import paths
from ssl_jax.errors import UserError, one_line
from ssl_jax.tree_paths import path_parts

MAX_SHOWN = 3  # mismatching arrays named in an error


class CheckpointError(UserError):
    """A checkpoint that cannot be restored into the current config's state.

    `corrupt`: the checkpoint itself is damaged (falling back can help), as opposed to
    intact but written with another config (falling back cannot: every step has those shapes).
    """

    def __init__(self, message: str, corrupt: bool):
        super().__init__(message)
        self.corrupt = corrupt


def _leaf_shapes(tree) -> dict[tuple[str, ...], tuple | None]:
    """{path: shape} of the array leaves; None for PRNG keys, which are stored as raw key data."""
    return {path_parts(path): None if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _short(error: Exception) -> str:
    """`errors.one_line` of an exception, without TensorStore's multi-kilobyte spec dump."""
    return one_line(error, 300).split(" See full TensorStore details")[0]


def checkpoint_dir(workdir: str) -> epath.Path:
    """WORKDIR/checkpoints: the run's checkpoints and their eval_<step>.json."""
    return paths.resolve(workdir) / "checkpoints"


class Checkpointer:
    """Saves every `every_steps` steps (and when forced), keeps the last `max_to_keep`."""

    def __init__(self, workdir: str, every_steps: int, max_to_keep: int, keep_period: int | None = None):
        self.workdir = paths.resolve(workdir)
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=max_to_keep,
                                               keep_period=keep_period, create=True,
                                               cleanup_tmp_directories=True)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_handlers=ocp.StandardCheckpointHandler())
        except ImportError as e:  # orbax asks google-cloud-storage about a gs:// bucket's layout
            raise UserError(f"checkpoints in {self.directory} need a Python package that is not installed ({e}); "
                            f"pip install google-cloud-storage") from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would write (every_steps policy)."""
        return self.manager.should_save(step)

    def save(self, step: int, state, force: bool = False) -> bool:
        """Starts an (asynchronous) save of `state` as `step`; returns whether it saves."""
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def check_compatible(self, step: int, abstract_state) -> None:
        """Raises CheckpointError unless the checkpoint at `step` has the state's arrays and shapes."""
        where = self.directory / str(step)
        try:
            saved = _leaf_shapes(self.manager.item_metadata(step))
        except Exception as e:  # missing or damaged metadata files: orbax raises many types
            raise CheckpointError(f"checkpoint step {step} ({where}) is incomplete or corrupt: its metadata "
                                  f"cannot be read ({_short(e)})", corrupt=True) from None
        if not saved:
            raise CheckpointError(f"checkpoint step {step} ({where}) is incomplete or corrupt: it lists no arrays",
                                  corrupt=True)
        wanted = _leaf_shapes(abstract_state)
        problems = [f"{'/'.join(p)} missing" for p in sorted(set(wanted) - set(saved))]
        problems += [f"{'/'.join(p)} not in the config's state" for p in sorted(set(saved) - set(wanted))]
        problems += [f"{'/'.join(p)} has shape {saved[p]} in the checkpoint but {wanted[p]} in the config"
                     for p in sorted(set(saved) & set(wanted)) if wanted[p] is not None and saved[p] != wanted[p]]
        if problems:
            more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
            raise CheckpointError(f"checkpoint step {step} ({where}) does not fit the config: "
                                  f"{'; '.join(problems[:MAX_SHOWN])}{more}. Resume with the config it was "
                                  f"trained with (WORKDIR/config.json)", corrupt=False)

    def restore(self, step: int, abstract_state):
        """Restores `step` into the structure, shapes and shardings of `abstract_state`."""
        self.check_compatible(step, abstract_state)
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # truncated or missing array files: orbax/tensorstore raise many types
            raise CheckpointError(f"checkpoint step {step} ({self.directory / str(step)}) is "
                                  f"incomplete or corrupt: {_short(e)}", corrupt=True) from None

    def restore_latest(self, abstract_state, fallback: bool, log: Callable[[str], None]):
        """(state, step) of the newest restorable checkpoint, or (None, None) when there is none.

        Without `fallback` the newest checkpoint must restore, else CheckpointError (which
        says how to fall back). With it, each corrupt one is moved to
        WORKDIR/corrupt_checkpoints/ (kept for inspection, never deleted) and the next
        older one is tried. A checkpoint that is intact but does not fit the config is
        never moved: that is the config's fault, and every older step would fail too.
        """
        moved = []
        for step in reversed(self.all_steps()):
            try:
                return self.restore(step, abstract_state), step
            except CheckpointError as e:
                older = [s for s in self.all_steps() if s < step]
                if not e.corrupt:
                    raise
                if not fallback:
                    hint = (f"pass --restore_fallback to set it aside and resume from step {older[-1]}"
                            if older else "no older checkpoint to fall back to")
                    raise CheckpointError(f"{e}; {hint}", corrupt=True) from None
                moved.append(self.quarantine(step))
                log(f"{e}; moved to {moved[-1]}; " + (f"trying step {older[-1]}" if older else "none left"))
        if moved:
            raise CheckpointError(f"none of the checkpoints in {self.directory} could be restored (moved to "
                                  f"{self.quarantine_dir}); start a new --workdir, or restore a copy", corrupt=True)
        return None, None

    @property
    def quarantine_dir(self):
        return self.workdir / "corrupt_checkpoints"

    def quarantine(self, step: int):
        """Moves checkpoint `step` out of the manager's sight; returns where it went."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target, n = self.quarantine_dir / str(step), 1
        while target.exists():
            target, n = self.quarantine_dir / f"{step}.{n}", n + 1
        (self.directory / str(step)).rename(target)
        self.manager.reload()
        return target

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the manager's background work, then releases it. The constructor's removal of
        temporary directories left by an interrupted write runs in a background thread that
        orbax's close() does not wait for (orbax 0.12): a run that stops early, e.g. refusing a
        changed config, would otherwise exit with that thread still running and print its
        traceback after the one-line error."""
        self.manager._maybe_await_cleanup_tmp_directory()  # noqa: SLF001 - see the docstring
        self.manager.close()


def abstract_like(state):
    """ShapeDtypeStructs (with shardings) of a state pytree, the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
