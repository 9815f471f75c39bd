"""Checkpoints with orbax's CheckpointManager under WORKDIR/checkpoints.

orbax writes each step into a temporary directory and renames it when complete, so
a crash mid-write leaves the previous checkpoints intact and the partial one is
ignored on restore. Only whole TrainStates are saved: the data pipeline is a pure
function of (seed, step), so the step is all it needs to resume.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every `every_steps` steps (and when forced), keeps the last `max_to_keep`."""

    def __init__(self, workdir: str, every_steps: int, max_to_keep: int, keep_period: int | None = None):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=max_to_keep,
                                               keep_period=keep_period, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would write (every_steps policy)."""
        return self.manager.should_save(step)

    def save(self, step: int, state, force: bool = False) -> bool:
        """Starts an (asynchronous) save of `state` as `step`; returns whether it saves."""
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, step: int, abstract_state):
        """Restores `step` into the structure, shapes and shardings of `abstract_state`."""
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # orbax raises many types; name the checkpoint and the cause.
            raise RuntimeError(f"could not restore checkpoint step {step} from {self.directory}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. If the config "
                               f"changed since it was written, restore with the original config.") from e

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state):
    """ShapeDtypeStructs (with shardings) of a state pytree, the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
