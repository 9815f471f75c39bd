"""The training loop: mesh, state, data, step, log, evaluate, checkpoint.

`train_and_evaluate` reads top to bottom: set-up, restore, compile, loop (step, log,
checkpoint, evaluate); its bookkeeping (call sizes, timing, metric averaging) is in
`ssl_jax.loop_helpers`, and everything method-specific is behind `ssl_jax.methods`.
Restarting with the same workdir resumes from the latest checkpoint and, since
batches are a pure function of (seed, step), continues the very same run.
Reliability (README, "Reliability"): SIGTERM stops after the current step with a
checkpoint (`preemption`), a resumed run must use the saved config (`run_config`),
a damaged checkpoint is named and can be set aside (`checkpoint`), NaN/Inf is caught
on the step it happens (`nonfinite`), and a collapsing teacher is reported (`collapse`).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import NamedTuple

import jax
import numpy as np

from ssl_jax import paths, sharding
from ssl_jax.core.batch import batch_field_names, example_batch, field_shape, view_shapes
from ssl_jax.core.state import TrainState
from ssl_jax.core.step import jit_train_steps
from ssl_jax.errors import UserError, one_line
from ssl_jax.eval_record import merge_eval_results
from ssl_jax.guards import config_check, run_config
from ssl_jax.guards.checkpoint import Checkpointer, checkpoint_dir
from ssl_jax.guards.collapse import CollapseMonitor
from ssl_jax.guards.logger import MetricLogger, log_line, progress_line
from ssl_jax.guards.nonfinite import NonFiniteGuard
from ssl_jax.guards.preemption import SigtermWatcher
from ssl_jax.loop_helpers import IntervalTimer, MetricAverager, call_size, call_sizes, next_global_batch
from ssl_jax.methods import build_method
from ssl_jax.optim import build_optimizer, build_schedules
from ssl_jax.sharding import replicated


class Run(NamedTuple):
    """Everything derived from the config that the loop and the evaluators need."""

    method: object
    tx: object
    schedules: object
    mesh: object
    steps_per_epoch: int
    total_steps: int
    local_batch: int


def steps_per_epoch_of(config) -> int:
    """config.steps_per_epoch if set, else len(train split) // batch_size (drop_last, as DINO)."""
    if config.get("steps_per_epoch"):
        return config.steps_per_epoch
    from ssl_jax.data import pipeline  # tensorflow only when the dataset is read

    steps = pipeline.num_examples(config.dataset, config.dataset.train_split) // config.batch_size
    if steps == 0:
        raise UserError(f"batch_size={config.batch_size} is larger than the train split; lower --config.batch_size")
    return steps


def setup(config, steps_per_epoch: int | None = None) -> Run:
    """Builds mesh, method, schedules and optimiser (no arrays yet)."""
    mesh = sharding.make_mesh(config.get("parallel", {}).get("fsdp", 1))
    local_batch = sharding.check_global_batch(config.batch_size, mesh, accum_steps=config.get("accum_steps", 1))
    sharding.check_global_batch(config.eval.batch_size, mesh, field="eval.batch_size")  # fail before training
    steps_per_epoch = steps_per_epoch or steps_per_epoch_of(config)
    total_steps = config.num_epochs * steps_per_epoch
    method = build_method(config, steps_per_epoch)
    schedules = build_schedules(config.optim, total_steps, steps_per_epoch, config.batch_size)
    abstract = jax.eval_shape(method.init, jax.random.key(0), example_batch(config.augment, 1))
    tx = build_optimizer(config.optim, schedules, abstract.params, steps_per_epoch)
    return Run(method, tx, schedules, mesh, steps_per_epoch, total_steps, local_batch)


def init_state_fn(config, run: Run):
    """rng -> a fresh TrainState (traced under jit or eval_shape)."""

    def init(rng):
        init_rng, state_rng = jax.random.split(rng)
        variables = run.method.init(init_rng, example_batch(config.augment, 1))
        return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=variables.params,
                          opt_state=run.tx.init(variables.params), teacher=variables.teacher,
                          method_state=variables.method_state, model_state=variables.model_state, rng=state_rng)

    return init


def state_sharding(config, run: Run):
    """The TrainState's shardings on run.mesh: replicated, or sharded by config.parallel.rules
    when the mesh has an fsdp axis (`ssl_jax.sharding`)."""
    abstract = jax.eval_shape(init_state_fn(config, run), jax.random.key(0))
    return sharding.state_shardings(abstract, run.mesh, config.get("parallel", {}).get("rules", ()))


# XLA options for compiling the initialiser: it runs once per run, so optimisation passes only
# cost compile time (most of a `:smoke` run's start-up on 2 CPU cores) and speed up nothing.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def create_state(config, run: Run) -> TrainState:
    """A fresh TrainState, initialised under jit and laid out over the mesh (`state_sharding`)."""
    init = jax.jit(init_state_fn(config, run), out_shardings=state_sharding(config, run),
                   compiler_options=INIT_COMPILER_OPTIONS)
    return init(jax.random.key(config.seed))


def abstract_state(config, run: Run) -> TrainState:
    """The TrainState as ShapeDtypeStructs with their shardings: orbax's restore target, built
    without computing (or compiling) an initial state."""
    abstract = jax.eval_shape(init_state_fn(config, run), jax.random.key(0))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                        state_sharding(config, run))


def jit_step(config, run: Run, steps_per_call: int = 1):
    """The jitted train step for this config (the state's sharding and gradient accumulation),
    `steps_per_call` steps per call over stacked batches (`ssl_jax.core.step.jit_train_steps`)."""
    return jit_train_steps(run.method, run.tx, run.schedules, run.mesh, state_sharding=state_sharding(config, run),
                           accum_steps=config.get("accum_steps", 1), steps_per_call=steps_per_call)


def check_steps_per_call(config) -> int:
    """config.steps_per_call, after checking that every log/checkpoint/eval step ends a call
    (the loop only sees the state between calls)."""
    per_call = config.get("steps_per_call", 1)
    if per_call < 1:
        raise UserError(f"steps_per_call={per_call} must be at least 1; set --config.steps_per_call=1")
    for field, every in (("log_every_steps", config.log_every_steps), ("checkpoint.every_steps",
                         config.checkpoint.every_steps), ("eval.every_steps", config.eval.every_steps)):
        if every % per_call:
            raise UserError(f"{field}={every} is not a multiple of steps_per_call={per_call}: the loop sees the "
                            f"state only between calls; set --config.{field} to a multiple of {per_call} or "
                            f"--config.steps_per_call to a divisor of {every}")
    return per_call


def restore_or_create(config, run: Run, checkpointer: Checkpointer, step: int | None = None,
                      fallback: bool = False) -> TrainState:
    """The state at `step` (default: the newest restorable checkpoint), or a fresh one if there is none.

    With `fallback`, corrupt checkpoints are set aside until one restores (Checkpointer.restore_latest).
    """
    target = abstract_state(config, run)
    if step is not None:
        return checkpointer.restore(step, target)
    restored, _ = checkpointer.restore_latest(target, fallback, log_line)
    if restored is not None:
        return restored
    state = create_state(config, run)
    if config.get("init_from"):  # a fresh run starts from other weights (ssl_jax/init_from.py)
        from ssl_jax import init_from

        state = init_from.initialize(config, state, log_line)
    if config.get("teacher_init_from"):  # a frozen teacher's weights (ssl_jax/methods/frozen_teacher.py)
        from ssl_jax import init_from

        state = init_from.initialize_teacher(config, state, log_line)
    return state


def restore_saved(config, run: Run, workdir: str, step: int | None = None) -> tuple[TrainState, int]:
    """The state saved at `step` (default: the latest) in WORKDIR/checkpoints, and that step; one
    clear line when the run has no checkpoint."""
    with open_checkpointer(config, workdir) as checkpointer:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no checkpoint in {checkpointer.directory}; train first or pass the right --workdir")
        return restore_or_create(config, run, checkpointer, step), step


def gathered(state: TrainState, mesh) -> TrainState:
    """`state` whole on every device: a parameter-sharded (FSDP) state all-gathered for the evaluations."""
    if len(mesh.axis_names) == 1:
        return state
    return jax.jit(lambda s: s, out_shardings=replicated(mesh))(state)


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir (local or a URL, `ssl_jax.paths`) and checks that it is writable, before any work."""
    directory = paths.resolve(workdir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write_test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except paths.filesystem_errors() as e:  # anything else is a bug and keeps its traceback
        reason = getattr(e, "strerror", None) or one_line(e)
        raise UserError(f"cannot write to --workdir={workdir} ({reason}); pass a directory (or gs:// URL) "
                        f"you can create and write to") from None


def step_flops(compiled) -> float:
    """FLOPs of one call of a compiled function, from XLA's cost analysis (0 if unavailable)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float((analysis or {}).get("flops", 0.0))


def evaluate(config, run: Run, state: TrainState, logger: MetricLogger, step: int) -> dict:
    """kNN on the eval dataset's splits (`config.eval.dataset`, default the training dataset), and the linear
    segmentation probe when `config.eval.segmentation_dir` is set; logged and printed."""
    from ssl_jax.eval.knn_eval import evaluate_knn  # imports tensorflow

    start = time.time()
    state = gathered(state, run.mesh)
    results = evaluate_knn(config, run.method, state, run.mesh)
    if config.eval.get("segmentation_dir"):
        from ssl_jax.evaluate import load_protocol, segmentation_probe

        protocol = load_protocol(config.eval.segmentation_protocol)
        protocol.segmentation.data_dir = config.eval.segmentation_dir
        probe = segmentation_probe(config, run.method.eval_variables(state), protocol, printer=lambda *_: None)
        results.update({k: probe[k] for k in ("segmentation_mIoU", "segmentation_pixel_accuracy")})
    logger.write(step, results, prefix="eval")
    log_line(f"eval step {step}: " + " ".join(f"{k}={100 * v:.2f}%" for k, v in results.items())
             + f" ({time.time() - start:.0f}s)")
    return results


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False,
                       restore_fallback: bool = False) -> dict:
    """Trains config.num_epochs epochs (resuming from workdir), evaluating on the way.

    Nothing in the workdir is written before the config, the checkpoint and the dataset have
    been checked. Returns the last logged training metrics and the last evaluation results
    (plus `preempted_at` when SIGTERM stopped the run early).
    """
    # Set-up: the config is checked before anything is built.
    config_check.validate(config)
    per_call = check_steps_per_call(config)
    nonfinite = NonFiniteGuard(config.nonfinite, log_line)
    prepare_workdir(workdir)
    sharding.maybe_initialize_distributed(config)
    with SigtermWatcher() as sigterm, contextlib.ExitStack() as finish:  # SIGTERM now stops the run cleanly
        run = setup(config)
        checkpointer = finish.enter_context(open_checkpointer(config, workdir))
        # Restore: the newest checkpoint (of the same config) or a fresh state; then the data from its step.
        latest = checkpointer.latest_step()
        changes = {} if latest is None else run_config.check_resume(config, workdir, latest, allow_config_change)
        state = restore_or_create(config, run, checkpointer, fallback=restore_fallback)
        start_step = int(state.step)
        from ssl_jax.data import pipeline  # tensorflow: after the checks above, which need none

        batches = pipeline.train_batches(config, start_step, run.steps_per_epoch, run.local_batch, workdir)
        knn_off = pipeline.knn_off_reason(config)  # fails now on a bad eval dataset, not after training
        record_start(config, workdir, run, start_step, changes, knn_off)
        if sigterm.received and jax.process_count() == 1:
            log_line(f"SIGTERM before the first step: stopped at step {start_step}, nothing new to save")
            return {"preempted_at": start_step}
        # Compile every call size the run uses, before the clock of the first interval starts.
        compiled = compile_steps(config, run, state, call_sizes(start_step, run.total_steps, per_call))
        logger = finish.enter_context(contextlib.closing(MetricLogger(workdir)))
        collapse = CollapseMonitor(config.collapse.patience, config.collapse.tolerance, log_line)
        timer, averager = IntervalTimer(), MetricAverager(nonfinite)
        step, last_saved, last_scalars, results = start_step, start_step, {}, {}
        # Loop: step, log, checkpoint, evaluate; SIGTERM stops it after the call, with a checkpoint.
        while step < run.total_steps:
            n = call_size(step, run.total_steps, per_call)
            state, metrics = compiled[n](state, next_global_batch(batches, n, run.mesh))
            averager.add(step + 1, metrics, n)
            timer.count(n)
            step += n
            is_last = step == run.total_steps
            if (step % config.log_every_steps == 0 or is_last) and averager.per_step:
                last_scalars = log_interval(config, run, step, averager, timer, logger)
                collapse.update(step, last_scalars)
            if is_last or checkpointer.should_save(step):
                checkpointer.save(step, state, force=is_last)
                last_saved = step
            if not knn_off and (is_last or (config.eval.every_steps and step % config.eval.every_steps == 0)):
                with timer.paused():  # evaluation time is not training time
                    results = evaluate(config, run, state, logger, step)
            # Asked for each step of the call: in a multi-process run the agreed stop step may be any of them.
            if not is_last and any([sigterm.requested(s) for s in range(step - n + 1, step + 1)]):
                save_before_stopping(checkpointer, state, step, run.total_steps, saved=last_saved == step)
                return {**last_scalars, **results, "preempted_at": step}
        return {**last_scalars, **results}


@contextlib.contextmanager
def open_checkpointer(config, workdir: str):
    """The run's Checkpointer; however the run ends, a started save completes and the manager is closed."""
    checkpointer = Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.max_to_keep,
                                config.checkpoint.get("keep_period") or None)
    try:
        yield checkpointer
    finally:
        checkpointer.wait()
        checkpointer.close()


def save_before_stopping(checkpointer: Checkpointer, state: TrainState, step: int, total_steps: int,
                         saved: bool) -> None:
    """On SIGTERM: the state of `step` saved (unless it just was) and on disk before the run returns."""
    if not saved:
        checkpointer.save(step, state, force=True)
    checkpointer.wait()
    log_line(f"SIGTERM: stopped after step {step} of {total_steps} with a checkpoint in "
             f"{checkpointer.directory}/{step}; run the same command to resume from it")


def record_start(config, workdir: str, run: Run, start_step: int, changes: dict, knn_off: str | None) -> None:
    """Saves the config (process 0) and prints what the run will do."""
    if jax.process_index() == 0:
        run_config.save(config, workdir, start_step, changes)
    if changes:
        log_line(f"config changed at step {start_step} (--allow_config_change, recorded in "
                 f"{run_config.CHANGES_FILE}): {run_config.describe(changes)}")
    log_line(f"{config.method.name}: {run.total_steps} steps ({config.num_epochs} epochs x {run.steps_per_epoch}), "
             f"global batch {config.batch_size} on {sharding.describe_mesh(run.mesh)}"
             + (f" in {config.accum_steps} micro-batches" if config.get("accum_steps", 1) > 1 else "") + ", "
             + (f"resuming from step {start_step}" if start_step else "starting from scratch") + f"; workdir {workdir}")
    if knn_off:
        log_line(f"kNN evaluation is off: {knn_off}")


def abstract_batch(config, steps_per_call: int = 1) -> dict:
    """The global batch the step is compiled for, as ShapeDtypeStructs (`ssl_jax.core.batch`'s layout):
    [B, ...], or [steps_per_call, B, ...] when stacked."""
    lead, size = ((steps_per_call,) if steps_per_call > 1 else ()), config.batch_size
    views = {k: jax.ShapeDtypeStruct(lead + s, np.float32) for k, s in view_shapes(config.augment, size).items()}
    return {"views": views, **{f: jax.ShapeDtypeStruct(lead + (size,) + field_shape(config, f), np.int32)
                               for f in batch_field_names(config)}}


def compile_steps(config, run: Run, state: TrainState, sizes) -> dict:
    """{steps per call: the compiled train step} for each of `sizes`, each logged with its compile
    time and FLOPs (of a scan too: XLA's cost analysis counts a loop's body once, so per step)."""
    compiled = {}
    for n in sorted(sizes, reverse=True):
        start = time.time()
        compiled[n] = jit_step(config, run, n).lower(state, abstract_batch(config, n)).compile()
        per = f"{n} steps per call, " if n > 1 else ""
        log_line(f"compiled train step in {time.time() - start:.1f}s "
                 f"({per}{step_flops(compiled[n]) / 1e9:.1f} GFLOP per step by XLA's cost analysis)")
    return compiled


def log_interval(config, run: Run, step: int, averager: MetricAverager, timer: IntervalTimer,
                 logger: MetricLogger) -> dict:
    """Writes and prints the mean metrics of the interval ending at `step`, with its speed; returns them."""
    scalars, skipped = averager.pop_mean(step)
    seconds, steps = timer.lap()
    scalars.update(step_time=seconds / steps, epoch=step / run.steps_per_epoch,
                   images_per_sec=steps * config.batch_size / seconds, train_seconds=timer.total,
                   skipped_steps=skipped)
    logger.write(step, scalars)
    log_line(progress_line(step, run.total_steps, scalars, (run.total_steps - step) * scalars["step_time"]))
    return scalars


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
    """kNN of a saved checkpoint (latest by default); merges it into eval_<step>.json next to it."""
    sharding.maybe_initialize_distributed(config)
    from ssl_jax.data import pipeline  # imports tensorflow

    knn_off = pipeline.knn_off_reason(config)
    if knn_off:
        raise UserError(f"nothing to evaluate: {knn_off}")
    run = setup(config)
    state, step = restore_saved(config, run, workdir, step)
    logger = MetricLogger(workdir)
    results = evaluate(config, run, state, logger, step)
    logger.close()
    if jax.process_index() == 0:
        merge_eval_results(checkpoint_dir(workdir), step, results)
    return results
