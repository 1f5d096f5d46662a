#!/usr/bin/env bash
# Runs python -m xclip_jax.main on every worker (host) of a Cloud TPU VM slice, with gcloud.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
  cat <<'HELP'
Usage: launch/tpu_vm.sh [options] COMMAND... [-- MAIN_FLAGS...]

Runs python -m xclip_jax.main on every worker of a Cloud TPU VM (a single host or a pod slice). Commands run in
the order given, e.g. `create copy setup run`:

  create   create the TPU VM (with --queued, a queued resource that waits for capacity)
  copy     this checkout's committed files (git archive HEAD) to ~/xclip-jax on every worker
  setup    on every worker: a virtual environment ~/xclip-venv (uv fetches the Python) with the copied
           requirements.txt and jax[tpu]
  run      start python -m xclip_jax.main MAIN_FLAGS on every worker in the background, each logging to
           ~/xclip-jax-run.log on its own disk; jax.distributed finds the other workers by itself
  logs     the last --lines lines of every worker's ~/xclip-jax-run.log (worker 0: the progress and results;
           the others: warnings, each saying its process [process I/N]; full logs in WORKDIR/logs/)
  stop     SIGTERM the run on every worker: the processes agree on a step, save a checkpoint there and exit
           (`run` with the same flags resumes)
  delete   delete the TPU VM (or the queued resource and its TPU)

Options (--flag=value):
  --zone=ZONE                  required, e.g. us-central2-b
  --project=PROJECT            default: gcloud's configured project
  --name=NAME                  the TPU VM (default: xclip-jax)
  --accelerator-type=TYPE      default: v4-32 (4 hosts)
  --version=RUNTIME            TPU software version (default: tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite,
                               v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
  --queued                     create/delete a queued resource instead of a TPU VM
  --spot                       spot capacity (cheaper; may be preempted: rerun `run` to resume)
  --python=VERSION             Python of the virtual environment (default: 3.11)
  --lines=N                    lines per worker for `logs` (default: 20)
  --dry-run                    print the commands, run nothing
  --help                       this text

Keep data and the workdir on Cloud Storage (gs://...) that the TPU VM's service account can read and write.

Example:
  launch/tpu_vm.sh --zone=us-central2-b --accelerator-type=v4-32 create copy setup run -- \
      --config=configs/k400.py:arch=ViT-B/16,frames=8 --workdir=gs://BUCKET/runs/k400 \
      --config.init.clip=gs://BUCKET/clip/ViT-B-16.pt --config.data.tfds_dir=gs://BUCKET/k400_records \
      --config.data.label_list=gs://BUCKET/k400/labels.csv --config.dtype=bfloat16
HELP
}

zone="" project="" name="xclip-jax" accelerator_type="v4-32" version="tpu-ubuntu2204-base"
queued=0 spot=0 python_version="3.11" lines=20
commands=() main_flags=()
while (($#)); do
  case $1 in
    --zone=*) zone=$(value_of "$1") ;;
    --project=*) project=$(value_of "$1") ;;
    --name=*) name=$(value_of "$1") ;;
    --accelerator-type=*) accelerator_type=$(value_of "$1") ;;
    --version=*) version=$(value_of "$1") ;;
    --python=*) python_version=$(value_of "$1") ;;
    --lines=*) lines=$(value_of "$1") ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
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
    create | setup | copy | run | logs | stop | delete) commands+=("$1") ;;
    *) die "unknown command or option $1 (see --help)" ;;
  esac
  shift
done
((${#commands[@]})) || die "no command given (see --help)"
[[ -n $zone ]] || die "--zone=ZONE is required"
# Checked before any command runs: a mistake found at `run` would come after a billed `create`.
if [[ " ${commands[*]} " == *" run "* ]] && ! ((${#main_flags[@]})); then
  die "run needs the flags of xclip_jax.main after --, e.g. -- --config=... --workdir=gs://..."
fi
[[ $lines =~ ^[1-9][0-9]*$ ]] || die "--lines=$lines: a positive number of lines"
[[ $python_version =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] || die "--python=$python_version: a version such as 3.11"

repo=$(cd "$(dirname "$0")/.." && pwd)
archive="${TMPDIR:-/tmp}/xclip-jax-$name.tar.gz"
location=(--zone="$zone")
[[ -z $project ]] || location+=(--project="$project")
capacity=()
if ((spot)); then
  capacity=(--spot)
fi

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=all --command="$1"
}

for command in "${commands[@]}"; do
  case $command in
    create)
      if ((queued)); then
        run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${location[@]}" \
          --accelerator-type="$accelerator_type" --runtime-version="$version" "${capacity[@]}"
      else
        run gcloud compute tpus tpu-vm create "$name" "${location[@]}" \
          --accelerator-type="$accelerator_type" --version="$version" "${capacity[@]}"
      fi
      ;;
    setup)
      jax_version=$(sed -n 's/^jax==//p' "$repo/requirements.txt")
      on_all_workers "set -e; python3 -m pip install --user --quiet uv; \
python3 -m uv venv --allow-existing --python $python_version ~/xclip-venv; \
python3 -m uv pip install --python ~/xclip-venv/bin/python -r ~/xclip-jax/requirements.txt \"jax[tpu]==$jax_version\""
      ;;
    copy)
      run git -C "$repo" archive --format=tar.gz --output="$archive" HEAD
      run gcloud compute tpus tpu-vm scp "$archive" "$name:xclip-jax.tar.gz" "${location[@]}" --worker=all
      on_all_workers "rm -rf ~/xclip-jax && mkdir ~/xclip-jax && tar -xzf ~/xclip-jax.tar.gz -C ~/xclip-jax"
      ;;
    run)
      # Braces: `a && b &` would put the whole list in a subshell, and $! (what `stop` signals) would be that shell's.
      on_all_workers "cd ~/xclip-jax && { nohup ~/xclip-venv/bin/python -m xclip_jax.main $(quote_all "${main_flags[@]}") \
> ~/xclip-jax-run.log 2>&1 < /dev/null & echo \$! > ~/xclip-jax-run.pid; }"
      ;;
    logs)
      on_all_workers "tail -n $lines ~/xclip-jax-run.log"
      ;;
    stop)
      on_all_workers "kill -TERM \$(cat ~/xclip-jax-run.pid)"
      ;;
    delete)
      if ((queued)); then
        run gcloud compute tpus queued-resources delete "$name" "${location[@]}" --force --quiet
      else
        run gcloud compute tpus tpu-vm delete "$name" "${location[@]}" --quiet
      fi
      ;;
  esac
done
