#!/usr/bin/env bash
# Trains on the GPUs of one machine: a single process that drives all of them.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
  cat <<'HELP'
Usage: launch/gpu_single_host.sh [options] -- MAIN_FLAGS...

Runs python -m xclip_jax.main MAIN_FLAGS as one process on the GPUs of this machine. One process drives all its
GPUs (config.mesh splits every batch over them), so no coordinator is needed; the terminal shows the progress and
results, WORKDIR/logs/process_0.log the full log. It may be run from any folder: MAIN_FLAGS' relative paths (the
config file too) are relative to the current one.

Options (--flag=value):
  --gpus=LIST       the GPUs to use, as CUDA_VISIBLE_DEVICES (default: all)
  --python=PATH     default: python3
  --install         first install requirements.txt with jax[cuda12] into that Python
  --dry-run         print the commands, run nothing
  --help            this text

Example:
  launch/gpu_single_host.sh --gpus=0,1,2,3 -- --config=configs/k400.py:arch=ViT-B/16,frames=8 \
      --workdir=runs/k400_16_8 --config.init.clip=ViT-B-16.pt --config.data.root=/data/k400/videos \
      --config.dtype=bfloat16
HELP
}

gpus="" python="python3" install=0 main_flags=()
while (($#)); do
  case $1 in
    --gpus=*) gpus=$(value_of "$1") ;;
    --python=*) python=$(value_of "$1") ;;
    --install) install=1 ;;
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
if ((install)); then
  jax_version=$(sed -n 's/^jax==//p' "$repo/requirements.txt")
  run "$python" -m pip install -r "$repo/requirements.txt" "jax[cuda12]==$jax_version"
fi
# From any folder: the package from this checkout; MAIN_FLAGS' relative paths stay relative to the current folder.
environment=(env PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}")
[[ -z $gpus ]] || environment+=(CUDA_VISIBLE_DEVICES="$gpus")
run "${environment[@]}" "$python" -m xclip_jax.main "${main_flags[@]}"
