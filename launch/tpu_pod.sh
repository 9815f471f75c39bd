#!/usr/bin/env bash
# A Cloud TPU pod slice with gcloud: create it, set every worker up, run the same
# `python -m ssl_jax.main` command on all workers, stop it. On TPU VMs jax finds the
# coordinator, the process count and each worker's id itself, so the run command adds
# --config.distributed.auto=True and nothing else.
#
# Usage: launch/tpu_pod.sh create|setup|run|ssh|stop [ARGS...]
#   create          gcloud compute tpus tpu-vm create (TPU_NAME, ZONE, ACCELERATOR_TYPE, RUNTIME_VERSION)
#   setup           on every worker: clone REPO_URL (at REPO_REF) into ~/ssl_jax and pip install it with jax[tpu]
#   run ARGS...     on every worker: cd ~/ssl_jax && python3 -m ssl_jax.main ARGS... --config.distributed.auto=True
#                   (the workdir should be a gs:// path or a shared mount, so that every worker sees one checkpoint)
#   ssh [CMD]       a shell (or CMD) on worker 0
#   stop            gcloud compute tpus tpu-vm delete (asks gcloud's confirmation)
# Environment: TPU_NAME, ZONE (required); ACCELERATOR_TYPE (e.g. v4-32), RUNTIME_VERSION
#   (e.g. tpu-ubuntu2204-base) for create; REPO_URL, REPO_REF (default main) for setup; PROJECT
#   (default: gcloud's configured project). DRY_RUN=1 prints the gcloud commands without running them.
# Credentials are gcloud's own (gcloud auth login); none are read or stored here.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
need() {
  for name in "$@"; do
    [ -n "${!name:-}" ] || { echo "error: set $name (see: $0 --help)" >&2; exit 2; }
  done
}
run() {
  echo "+ $(quote "$@")"
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}
quote() { printf '%q ' "$@"; }

[ $# -ge 1 ] || usage
action=$1
shift
case $action in -h | --help) usage ;; esac
need TPU_NAME ZONE
if [ "${DRY_RUN:-0}" != 1 ]; then
  command -v gcloud >/dev/null || { echo "error: gcloud not found; install the Google Cloud SDK" >&2; exit 2; }
fi
project_flag=()
[ -z "${PROJECT:-}" ] || project_flag=(--project="$PROJECT")
tpu=(gcloud compute tpus tpu-vm)

case $action in
  create)
    need ACCELERATOR_TYPE RUNTIME_VERSION
    echo "tpu_pod: creating $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE"
    run "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" "${project_flag[@]}"
    ;;
  setup)
    need REPO_URL
    ref=${REPO_REF:-main}
    remote="rm -rf ~/ssl_jax && git clone --branch $(quote "$ref") $(quote "$REPO_URL") ~/ssl_jax && cd ~/ssl_jax"
    remote+=" && python3 -m pip install -q -e . 'jax[tpu]' google-cloud-storage -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    echo "tpu_pod: installing $REPO_URL@$ref on every worker of $TPU_NAME"
    run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=all --command="$remote"
    ;;
  run)
    [ $# -ge 1 ] || { echo "error: run needs the ssl_jax.main arguments (--config=... --workdir=...)" >&2; exit 2; }
    remote="cd ~/ssl_jax && python3 -m ssl_jax.main $(quote "$@")--config.distributed.auto=True"
    echo "tpu_pod: running on every worker of $TPU_NAME: $remote"
    run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=all --command="$remote"
    ;;
  ssh)
    echo "tpu_pod: ssh to worker 0 of $TPU_NAME"
    if [ $# -ge 1 ]; then
      run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=0 --command="$*"
    else
      run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=0
    fi
    ;;
  stop)
    echo "tpu_pod: deleting $TPU_NAME in $ZONE (checkpoints on its local disks are lost; use a gs:// workdir)"
    run "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}"
    ;;
  *)
    echo "error: unknown action '$action'" >&2
    usage
    ;;
esac
