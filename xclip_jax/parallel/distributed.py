"""Multi-process start-up: joining the processes of a run (TPU pod hosts, GPU cluster nodes)."""

import hashlib

from absl import app
from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np


def initialize(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None, heartbeat_timeout_seconds: int
) -> bool:
  """Joins the processes of a multi-process run; returns False for a single process without a cluster.

  With none of the three arguments, jax.distributed detects the cluster (Cloud TPU, SLURM, Open MPI); with all of
  them, they say it. Call it before anything uses a JAX device.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit) and None in explicit:
    raise app.UsageError("give all of --coordinator_address, --num_processes and --process_id, or none of them")
  if num_processes is not None and num_processes < 1:
    raise app.UsageError(f"--num_processes={num_processes} must be at least 1")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise app.UsageError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  if coordinator_address is not None and not _is_host_and_port(coordinator_address):
    # jax.distributed would crash the process (a port that is not a number) or wait for ever (one out of range).
    raise app.UsageError(f"--coordinator_address={coordinator_address} is not HOST:PORT (a port from 1 to 65535)")
  if heartbeat_timeout_seconds < 1:
    raise app.UsageError(f"--heartbeat_timeout_seconds={heartbeat_timeout_seconds} must be at least 1")
  # Processes on CPU exchange arrays over TCP (the default of this JAX, needed by older ones).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
      coordinator_address, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds
    )
  except ValueError as error:
    # Auto-detection that finds no cluster leaves the coordinator address unset, which jax refuses before it
    # starts anything: a single process on its own.
    if coordinator_address is not None or "coordinator_address" not in str(error):
      raise
    logging.info("No cluster found (Cloud TPU, SLURM, Open MPI): running as a single process.")
    return False
  return True


def _is_host_and_port(address: str) -> bool:
  host, _, port = address.rpartition(":")
  return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def check_same_config(config: ml_collections.ConfigDict):
  """Refuses a run whose processes were given different configs (another seed or list on one host would read other
  videos than its share, another lr drift its replicas apart), before any of them trains."""
  if jax.process_count() == 1:
    return
  text = config.to_json_best_effort(sort_keys=True)
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  differing = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
  if differing:
    raise ValueError(
      f"the processes were given different configs (process {differing[0]}'s differs from process 0's): give every "
      "process the same --config flags"
    )
