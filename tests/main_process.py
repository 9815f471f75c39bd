"""`python -m ssl_jax.main ARGS` (or `ssl_jax.evaluate`, `ssl_jax.export`) processes without the ~7
CPU-seconds of imports each.

The tests start dozens of `ssl_jax.main` processes (smoke presets, resume, the fault campaign,
bad input). Each is a fresh OS process, as a user's run is, but forked from a server process
that has already imported what a run imports (jax, tensorflow, tfds, orbax and ssl_jax's
modules: `PRELOAD`), with multiprocessing's forkserver. The server never touches the XLA
backend or tensorflow's runtime, so each child initialises them itself, in its own process and
in the environment of the `start` call (XLA_FLAGS is read then; what the libraries read on
import comes from the environment the server started with). The child runs `ssl_jax.main` as
`python -m` does (runpy, as `__main__`), ends as an interpreter does (non-daemon threads
joined, atexit handlers run, streams flushed) and exits with the same code; signals reach it
as they would a Popen'ed process.

`start(args, module)` returns a `MainProcess`, used like `subprocess.Popen` with stdout and stderr
pipes; `run(args, module, timeout)` waits for it, like `subprocess.run(..., capture_output=True,
text=True)`.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import threading
from multiprocessing import reduction

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
# What a run imports (ssl_jax.main imports the rest inside main()); never an entry point that
# defines absl flags (ssl_jax.main itself, ssl_jax.evaluate, ssl_jax.export): the child defines them.
PRELOAD = ["main_process", "absl.app", "ml_collections.config_flags", "numpy", "jax", "tensorflow",
           "tensorflow_datasets", "orbax.checkpoint", "tensorboardX", "ssl_jax.guards.config_check", "ssl_jax.train",
           "ssl_jax.data.pipeline", "ssl_jax.eval.knn_eval"]

_context = None
_lock = threading.Lock()


def _forkserver():
    """The forkserver context, its server started with PRELOAD imported (once per test process)."""
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            # The server imports PRELOAD from this repository (not another installed ssl_jax).
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = os.pathsep.join([REPO, TESTS] + ([saved] if saved else []))
            try:
                from multiprocessing import forkserver
                forkserver.ensure_running()
            finally:
                if saved is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = saved
            _context = context
        return _context


class _Fd:
    """A file descriptor handed to the forkserver's child (duplicated into it, as multiprocessing
    hands over sockets)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _detach, (reduction.DupFd(self.fd),)


def _detach(dup_fd) -> int:
    return dup_fd.detach()


def _child(module: str, args: list[str], env: dict, stdout_fd: int, stderr_fd: int) -> None:
    """In the forked child: `python -m MODULE ARGS` in environment `env`, with stdout/stderr on the
    given pipes."""
    os.environ.clear()
    os.environ.update(env)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.close(stdout_fd)
    os.close(stderr_fd)
    # Python's own streams on pipes: stdout block-buffered, stderr line-buffered.
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    os.chdir(REPO)
    sys.path.insert(0, REPO)  # `python -m` puts the working directory first
    import ssl_jax  # preloaded by the server: it must be this repository's
    if os.path.dirname(os.path.dirname(os.path.abspath(ssl_jax.__file__))) != REPO:
        raise RuntimeError(f"the server imported ssl_jax from {ssl_jax.__file__}, not from {REPO}")
    sys.argv = ["-m", *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # noqa: SLF001 - the interpreter's exit: join non-daemon threads, then atexit
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class MainProcess:
    """A running `python -m MODULE ARGS` with stdout and stderr pipes (text): the parts of
    `subprocess.Popen`'s interface the tests use."""

    def __init__(self, args: list[str], module: str = "ssl_jax.main"):
        self.args = [sys.executable, "-m", module, *args]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._process = _forkserver().Process(target=_child, args=(module, list(args), dict(os.environ), _Fd(out_w),
                                                                   _Fd(err_w)))
        try:
            self._process.start()
        finally:
            os.close(out_w)
            os.close(err_w)
        self.pid = self._process.pid
        self.stdout = open(out_r, encoding="utf-8")
        self.stderr = open(err_r, encoding="utf-8")

    @property
    def returncode(self) -> int | None:
        """The exit code, -N for signal N, None while running."""
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signal_number: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signal_number)

    def kill(self) -> None:
        if self._process.exitcode is None:
            self._process.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """(stdout, stderr) once the process has ended; TimeoutExpired (it keeps running) after `timeout` s."""
        if not hasattr(self, "_readers"):
            self._output = {"stdout": [], "stderr": []}
            self._readers = [threading.Thread(target=lambda n=name: self._output[n].append(getattr(self, n).read()),
                                              daemon=True) for name in self._output]
            for reader in self._readers:
                reader.start()
        for reader in self._readers:
            reader.join(timeout)
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait()
        return "".join(self._output["stdout"]), "".join(self._output["stderr"])


def start(args: list[str], module: str = "ssl_jax.main") -> MainProcess:
    """Starts `python -m MODULE ARGS` (working directory: the repository)."""
    return MainProcess(args, module)


def run(args: list[str], module: str = "ssl_jax.main", timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` to its end: its exit code, stdout and stderr (text)."""
    process = start(args, module)
    try:
        stdout, stderr = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
