#!/usr/bin/env bash
# Starts N local processes of `python -m ssl_jax.main ARGS...` that form one run through
# jax.distributed: process 0 is the coordinator on 127.0.0.1:PORT, each process gets
# SSL_JAX_COORDINATOR / SSL_JAX_NUM_PROCESSES / SSL_JAX_PROCESS_ID (read by
# ssl_jax/sharding.py), so all of them run the same command line. CPU collectives use gloo.
# This is how multi-host code is tested on one machine; it is not faster than one process.
#
# Usage: launch/local_multiprocess.sh N ARGS...
#   e.g. launch/local_multiprocess.sh 2 --config=configs/dino_small.py:smoke --workdir=runs/smoke2
# Environment: PYTHON (default: python3), SSL_JAX_PORT (default: a free port),
#   XLA_FLAGS as usual (e.g. --xla_force_host_platform_device_count=2 for 2 CPU devices each).
# JAX's persistent compilation cache is off in multi-process CPU runs (ssl_jax/sharding.py):
# steps loaded from it aborted in gloo with a "collective mismatch".
# Exit status: the first failing process's (the others are then stopped), else 0.
set -euo pipefail

usage() { echo "usage: $0 N ARGS...   (N >= 1 local processes of: python -m ssl_jax.main ARGS...)" >&2; exit 2; }
[ $# -ge 2 ] || usage
num_processes=$1
shift
[[ $num_processes =~ ^[1-9][0-9]*$ ]] || { echo "error: N must be a positive integer, got '$num_processes'" >&2; usage; }
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "error: $python not found; activate the venv or set PYTHON" >&2; exit 2; }
"$python" -c 'import ssl_jax' 2>/dev/null || { echo "error: $python cannot import ssl_jax; pip install -e . (or run from the repository root)" >&2; exit 2; }

port=${SSL_JAX_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
[[ $port =~ ^[0-9]+$ ]] || { echo "error: SSL_JAX_PORT must be a port number, got '$port'" >&2; exit 2; }

echo "local_multiprocess: starting $num_processes process(es) of: $python -m ssl_jax.main $*"
echo "local_multiprocess: coordinator 127.0.0.1:$port, JAX_PLATFORMS=cpu, CPU collectives: gloo"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 143' INT TERM
for ((i = 0; i < num_processes; i++)); do
  SSL_JAX_COORDINATOR="127.0.0.1:$port" SSL_JAX_NUM_PROCESSES="$num_processes" SSL_JAX_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu "$python" -m ssl_jax.main "$@" &
  pids+=("$!")
done

# A process that fails leaves the others blocked in a collective: stop them at once.
status=0
for ((i = 0; i < num_processes; i++)); do
  if wait -n; then
    continue
  else
    status=$?
    echo "local_multiprocess: a process exited with status $status; stopping the others" >&2
    stop_all
    wait || true
    break
  fi
done
exit "$status"
