#!/usr/bin/env bash
# Submits python -m xclip_jax.main as a multi-node GPU job to SLURM: one process per GPU.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
  cat <<'HELP'
Usage: launch/slurm_gpu.sh [options] -- MAIN_FLAGS...

Submits python -m xclip_jax.main MAIN_FLAGS as a SLURM batch job: --nodes nodes x --gpus-per-node tasks, one
process per GPU, started by srun from this checkout. jax.distributed reads everything from SLURM's environment:
the coordinator (the job's first node), the number of processes, each one's id and its GPU.
The job's output is LOGS/NAME-JOBID.out; each process's terminal goes to LOGS/NAME-JOBID-TASK.log (task 0: the
progress, results and summary; the others: their warnings and errors) and its full log to WORKDIR/logs/process_I.log.

Options (--flag=value):
  --nodes=N              default: 2
  --gpus-per-node=G      default: 8
  --cpus-per-gpu=C       CPU cores per process, for its input pipeline (default: 8)
  --time=LIMIT           default: 24:00:00
  --partition=P, --account=A    passed to sbatch when given
  --job-name=NAME        default: xclip-jax
  --python=PATH          the Python with the requirements and jax[cuda12] installed (default: python3)
  --logs=DIR             default: logs (in this checkout)
  --dry-run              print the commands, run nothing
  --help                 this text

Example:
  launch/slurm_gpu.sh --nodes=4 --gpus-per-node=8 --partition=gpu -- \
      --config=configs/k400.py:arch=ViT-L/14,frames=8 --workdir=/shared/runs/k400_l14 \
      --config.init.clip=/shared/clip/ViT-L-14.pt --config.data.root=/shared/k400/videos --config.dtype=bfloat16
HELP
}

nodes=2 gpus_per_node=8 cpus_per_gpu=8 time_limit="24:00:00" partition="" account="" job_name="xclip-jax"
python="python3" logs="logs" main_flags=()
while (($#)); do
  case $1 in
    --nodes=*) nodes=$(value_of "$1") ;;
    --gpus-per-node=*) gpus_per_node=$(value_of "$1") ;;
    --cpus-per-gpu=*) cpus_per_gpu=$(value_of "$1") ;;
    --time=*) time_limit=$(value_of "$1") ;;
    --partition=*) partition=$(value_of "$1") ;;
    --account=*) account=$(value_of "$1") ;;
    --job-name=*) job_name=$(value_of "$1") ;;
    --python=*) python=$(value_of "$1") ;;
    --logs=*) logs=$(value_of "$1") ;;
    --dry-run) dry_run=1 ;;
    --help | -h)
      usage
      exit 0
      ;;
    --)
      shift
      main_flags=("$@")
      break
      ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
((${#main_flags[@]})) || die "give the flags of xclip_jax.main after --, e.g. -- --config=... --workdir=..."

repo=$(cd "$(dirname "$0")/.." && pwd)
[[ $logs == /* ]] || logs="$repo/$logs"
options=(
  --job-name="$job_name" --nodes="$nodes" --ntasks-per-node="$gpus_per_node" --gpus-per-node="$gpus_per_node"
  --cpus-per-task="$cpus_per_gpu" --time="$time_limit" --chdir="$repo" --output="$logs/%x-%j.out"
)
[[ -z $partition ]] || options+=(--partition="$partition")
[[ -z $account ]] || options+=(--account="$account")
# Every task sees the node's GPUs; jax.distributed gives each process the GPU of its SLURM_LOCALID.
task=(srun --output="$logs/%x-%j-%t.log" "$python" -m xclip_jax.main "${main_flags[@]}")
run mkdir -p "$logs"
run sbatch "${options[@]}" --wrap="$(quote_all "${task[@]}")"
