r"""Fine-tunes and evaluates X-CLIP.

  python -m xclip_jax.main --config=configs/k400.py:arch=ViT-B/16,frames=8 --workdir=DIR \
      --config.init.clip=ViT-B-16.pt --config.data.root=/data/k400/videos
  python -m xclip_jax.main --config=configs/k400.py --workdir=DIR --config.mode=eval \
      --config.init.checkpoint=k400_32_8.pth

Rerunning a training command with the same workdir resumes it.

Several processes (TPU pod hosts, GPU cluster nodes) run the same command, one per host or GPU. On Cloud TPU, under
SLURM or Open MPI, jax.distributed finds the others by itself; elsewhere give every process
`--coordinator_address=HOST:PORT` (process 0's host) `--num_processes=N --process_id=I`. Alone, without a cluster,
the command runs as a single process.

The terminal shows what the run is, its progress, validation results, warnings and the final summary; the full log of
every library goes to WORKDIR/logs/process_I.log, and --verbosity=0 (or 1, with DEBUG) shows it on the terminal too.
"""

import os
import sys

from xclip_jax import host_memory

if __name__ == "__main__":  # first: glibc reads its tunables when a process starts, and the imports below take seconds
  host_memory.restart_with_huge_pages()

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from xclip_jax import compilation_cache
from xclip_jax import console
from xclip_jax.parallel import distributed

with console.native_start_up():  # TensorFlow's C++ start-up lines go to the log, not the terminal
  from xclip_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/k400.py:arch=ViT-B/16.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and eval_results.json go (may be gs://).")
_CACHE_DIR = compilation_cache.define_flag()
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0, for a multi-process run that is not detected by itself."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process, 0..num_processes-1 (with --coordinator_address).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
  "heartbeat_timeout_seconds",
  100,
  "With several processes: a process that stops answering for this long (killed, crashed, unreachable) makes all "
  "the others stop.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.setup()
  compilation_cache.enable(_CACHE_DIR.value)
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _HEARTBEAT_TIMEOUT.value)
  multi_process = jax.process_count() > 1
  console.open_log(_WORKDIR.value, jax.process_index(), jax.process_count())
  logging.info("Command line: %s", " ".join(sys.argv))
  if multi_process:
    logging.info(
      "A process that stops (killed, crashed, unreachable) makes the others stop within %d s "
      "(--heartbeat_timeout_seconds).",
      _HEARTBEAT_TIMEOUT.value,
    )
  logging.info("Host memory: %s", host_memory.status())
  logging.info("JAX: %d processes, %d devices (%s)", jax.process_count(), jax.device_count(), jax.devices()[0].platform)
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except Exception:
    if not multi_process:
      raise
    # An orderly exit would wait at jax.distributed's shutdown barrier for processes that wait for this one; exiting
    # at once lets their heartbeat check stop them, saying that another process died.
    logging.exception("Process %d of %d failed; stopping it.", jax.process_index(), jax.process_count())
    console.flush()
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
  app.run(main)
