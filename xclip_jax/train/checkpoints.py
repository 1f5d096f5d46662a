"""Checkpoints of a training run, and preemption: SIGTERM (or Ctrl-C) saves one between steps and stops.

A checkpoint holds the train state (step, parameters, optimiser state, rng) and the global data position with the
batch size it counts, so that a run resumes with any number of processes at the same place in the data. Class-text
features are not saved: they are recomputed from the class names. A run resumes from the newest checkpoint it can read,
setting newer, damaged ones aside (STEP.damaged).
"""

import logging
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from xclip_jax.train import step as step_lib
from xclip_jax.weights import native

# Checkpoints that cannot be read are renamed STEP.damaged: orbax lists only numbered folders.
DAMAGED_SUFFIX = ".damaged"


def make_manager(workdir, keep: int) -> ocp.CheckpointManager:
  """The run's checkpoints in `workdir/checkpoints`, the newest `keep` of them kept. For the run holding the workdir
  (run_lock): what an earlier run's unfinished saves left (a kill, a second Ctrl-C, a full disk) is removed, as no
  save of its step may ever come to replace it."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(workdir / native.WORKDIR_CHECKPOINTS, options=options)


def _arrays(state: step_lib.TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def save(manager: ocp.CheckpointManager, state: step_lib.TrainState, position: int, batch_size: int, force=False):
  """Saves `state` and the data position to resume from (asynchronously: `manager.wait_until_finished()`)."""
  saved = manager.save(
    int(state.step),
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(_arrays(state)),
      data=ocp.args.JsonSave({"data_position": position, "batch_size": batch_size}),
    ),
    force=force,
  )
  if saved:
    logging.info("Saved checkpoint at step %d.", int(state.step))


def check_saved(manager: ocp.CheckpointManager):
  """Raises the error of an asynchronous save that failed (a full disk) once it is known: orbax would raise it only at
  the next save, after checkpoint_every_steps more steps that no checkpoint keeps."""
  try:
    manager.check_for_errors()
  except Exception as error:
    raise OSError(f"a checkpoint could not be written: {native.one_line(error)}") from error


def restore(
  manager: ocp.CheckpointManager, state: step_lib.TrainState, mesh: jax.sharding.Mesh, batch_size: int
) -> tuple[step_lib.TrainState, int]:
  """The newest readable checkpoint laid out on `mesh` (written by any number of processes) and its data position.

  Newer checkpoints that cannot be read (a file cut short, a lost object) are set aside as STEP.damaged, which orbax
  does not list, with a warning. When none can be read nothing is set aside, as the run's config is then more likely
  at fault than every checkpoint: a ValueError names them.
  """
  target = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    _arrays(state),
    _arrays(step_lib.state_shardings(state, mesh)),
  )
  unreadable = {}
  for step in sorted(manager.all_steps(), reverse=True):
    restored, error = _read(manager.directory / str(step), target)
    if restored is None:
      unreadable[step] = error
      continue
    if unreadable:
      _set_aside(manager, unreadable, step)
    meta = restored["data"]
    if meta.get("batch_size") != batch_size:
      raise ValueError(
        f"the checkpoint at step {step} was written with batch_size={meta.get('batch_size')}, this run has "
        f"config.batch_size={batch_size}: its data position counts other batches (resume with the same batch size)"
      )
    arrays = restored["state"]
    logging.info("Resumed from the checkpoint at step %d (data position %d).", step, meta["data_position"])
    state = state.replace(
      step=arrays["step"], params=arrays["params"], opt_state=arrays["opt_state"], rng=arrays["rng"]
    )
    return state, int(meta["data_position"])
  tried = "; ".join(f"step {step}: {error}" for step, error in unreadable.items())
  raise ValueError(
    f"no checkpoint in {manager.directory} can be read ({tried}); none was set aside, as all failing may mean that "
    "this run's config differs from theirs: rerun with theirs, or move them away to start afresh"
  )


def _read(directory, target) -> tuple[ocp.args.Composite | None, str]:
  """The checkpoint in `directory`, or None and why some process could not read it (in one line).

  Every process reads its own part of the arrays, then all learn whether any failed, so that they resume from the
  same step. Read without orbax's Checkpointer, whose barrier after reading a failing process would never reach.
  """
  # Before reading: orbax's abandoned reads may report the moment a read fails, before the failure reaches here.
  native.quiet_abandoned_reads()
  try:
    restored = ocp.CompositeCheckpointHandler().restore(
      directory, ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    )
    error = ""
  except Exception as e:  # damage fails in tensorstore, json or orbax's metadata, with errors of many types
    restored, error = None, native.one_line(e)
  if jax.process_count() > 1:
    failed = multihost_utils.process_allgather(np.int32(restored is None))
    if failed.any() and restored is not None:
      restored, error = None, f"unreadable on process {int(np.argmax(failed))}"
  return restored, error


def _set_aside(manager: ocp.CheckpointManager, unreadable: dict, resumed_step: int):
  """Renames the unreadable checkpoints STEP.damaged (keeping their files), which orbax ignores; one warning each."""
  names = {}
  for step in unreadable:
    name, n = f"{step}{DAMAGED_SUFFIX}", 1
    while (manager.directory / name).exists():
      n += 1
      name = f"{step}{DAMAGED_SUFFIX}{n}"
    names[step] = name
  # Every process has chosen the names before process 0 renames, and waits for it before the manager lists steps.
  _sync("xclip_jax: damaged checkpoints named")
  if jax.process_index() == 0:
    for step, name in names.items():
      (manager.directory / str(step)).rename(manager.directory / name)
  _sync("xclip_jax: damaged checkpoints set aside")
  manager.reload()
  for step, error in unreadable.items():
    logging.warning(
      "The checkpoint at step %d cannot be read (%s): set aside as %s; resuming from step %d.",
      step,
      error,
      manager.directory / names[step],
      resumed_step,
    )


def _sync(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Preemption:
  """A SIGTERM (a preemption notice), or Ctrl-C in a single process, so that the loop can save and stop between steps.

  With several processes they must all stop after the same step, whichever of them got the signal: JAX's preemption
  sync (jax.distributed's own SIGTERM handler) tells them all and picks the step after the furthest one's, and a
  Python handler here would replace its handler. A second Ctrl-C stops at once (KeyboardInterrupt).
  """

  def __init__(self, first_step: int):
    self.received = "SIGTERM"  # the signal that stopped the run, once `requested` says so
    self._requested = False
    self._first_step = first_step
    self._multi_process = jax.process_count() > 1
    if not self._multi_process:
      self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    again = ""
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      again = " (Ctrl-C again: stop at once, losing the steps since the last checkpoint)"
    logging.warning("%s: saving a checkpoint after this step, then exiting%s.", self.received, again)
    self._requested = True

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step`; call it after every step."""
    if self._multi_process:
      # The sync counts the steps of this run (0 before the first), as the processes began together.
      return multihost_utils.reached_preemption_sync_point(step - self._first_step)
    return self._requested

  def restore_handler(self):
    if not self._multi_process:
      for signum, previous in self._previous.items():
        signal.signal(signum, previous)
