"""xclip-jax's own checkpoints: converted models and the final model of a training workdir.

A converted checkpoint (`XCLIPModel.save`, `python -m xclip_jax.convert`) is a directory holding `xclip_config.json`
(the architecture, with the format's name and version) and an orbax checkpoint of the Flax parameters in `params/`.
A training workdir (`python -m xclip_jax.main`, see xclip_jax.train.trainer) holds orbax checkpoints of the train state
in `checkpoints/STEP/state` and the best model as a converted checkpoint in `best/`.

Both are checked against their config, name by name and shape by shape from orbax's metadata, before any array is
read: a checkpoint of another architecture is a CheckpointMismatchError naming the first parameter that differs.
"""

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import re
import sys
import time
import traceback

from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from xclip_jax import paths
from xclip_jax.model import config as model_config
from xclip_jax.weights import official

CONFIG_FILE = "xclip_config.json"
PARAMS_DIR = "params"
FORMAT_NAME = "xclip-jax"
# 2: Linear and conv weights in PyTorch's layout (`weight`); version 1 (no version field) stored Flax `kernel`s.
FORMAT_VERSION = 2
WORKDIR_CHECKPOINTS = "checkpoints"
WORKDIR_BEST = "best"
# Whether the X-CLIP modules (message tokens, MIT, prompts) were trained, in xclip_config.json; absent (checkpoints
# written before it was recorded) reads as trained.
TRAINED_FIELD = "xclip_modules_trained"
# The trainer's record of a run: {"config": the run's config, "architecture": its model's XCLIPConfig.architecture()}.
WORKDIR_RECORD = "config.json"


def write_checkpoint(
  directory, config: model_config.XCLIPConfig, params, *, xclip_modules_trained: bool = True
) -> epath.Path:
  """Writes a converted checkpoint: `xclip_config.json` and an orbax checkpoint of the params.

  `xclip_modules_trained` False (a model started from CLIP) is recorded in the config, so that the checkpoint read
  back is still known to be a start for training (`modules_trained`).

  `directory` may be on cloud storage (gs://...). With several processes, every process calls this (the params may be
  sharded over all of them); process 0 writes the config, after the params: the config makes the directory a
  checkpoint (`is_checkpoint`), so a first write that fails leaves none that describes params it lacks (a rewrite,
  as of a workdir's `best/`, deletes the old params first and keeps the old config until the new one replaces it).
  `directory` must be new, empty, or such a checkpoint (which is replaced): anything else there is refused. A write
  that fails (a full disk) is an OSError of one line (`_save_params`).
  """
  directory = paths.absolute(directory)
  if directory.exists() and not _new_or_checkpoint(directory):
    raise ValueError(
      f"{directory} exists and is neither an empty directory nor an xclip-jax checkpoint; save to a new directory"
    )
  if jax.process_index() == 0 and directory.exists():
    for unfinished in _unfinished_writes(directory):  # of a write that was killed or ran out of disk
      unfinished.rmtree()
  if jax.process_count() > 1:  # every process has looked before any writes
    multihost_utils.sync_global_devices("checkpoint directory checked")
  directory.mkdir(parents=True, exist_ok=True)
  _save_params(directory, params)
  meta = {
    "format": FORMAT_NAME,
    "version": FORMAT_VERSION,
    "config": config.architecture(),
    TRAINED_FIELD: bool(xclip_modules_trained),
  }
  if jax.process_index() == 0:
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  return directory


# How TensorStore's errors begin, as orbax raises them (a ValueError): an absl status code ("RESOURCE_EXHAUSTED: Error
# writing local file ..."); and the errno it found, where the system gave one ("... [os_error_code='28']").
_TENSORSTORE_ERROR = re.compile(r"[A-Z_]+: ")
_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")


def _save_params(directory: epath.Path, params):
  """orbax's write of `params` to `directory`/params; OSError where it cannot write them, one line: the system's error
  ("[Errno 28] No space left on device", as Python writes it) where TensorStore names one, else TensorStore's.

  orbax meets the failure in its background threads, which log it with a traceback (several times, some 300 lines in
  all), and raises it as a ValueError: the raised error reaches the user, so those records go to the log as INFO.
  """
  checkpointer = ocp.StandardCheckpointer()
  try:
    with _errors_logged_as_info():
      try:
        checkpointer.save(directory / PARAMS_DIR, params, force=True)
        checkpointer.wait_until_finished()
      except Exception:
        _wait_until_still(directory)
        raise
  except ValueError as error:
    message = one_line(error)
    if not _TENSORSTORE_ERROR.match(message):
      raise  # not a write that failed: a mistake, with its traceback
    if code := _OS_ERROR_CODE.search(str(error)):  # at the end of a message that one_line may cut
      raise OSError(int(code[1]), os.strerror(int(code[1]))) from error
    raise OSError(message) from error


@contextlib.contextmanager
def _errors_logged_as_info():
  """Meanwhile (in any thread: orbax logs from its own, through absl's logger), orbax's records of errors are logged
  as INFO: the log file keeps them with their tracebacks, the terminal shows the one line of the error raised."""

  def as_info(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
      record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
    return True

  logger = logging.getLogger("absl")
  logger.addFilter(as_info)
  try:
    yield
  finally:
    logger.removeFilter(as_info)


# How long the files of a failed save must stay as they are before it is told (`_wait_until_still`), and at most.
_STILL_SECONDS, _STILL_TIMEOUT_SECONDS = 0.25, 10.0


def _wait_until_still(directory: epath.Path):
  """Returns once the local `directory` has stayed the same for `_STILL_SECONDS` (or after `_STILL_TIMEOUT_SECONDS`).

  orbax raises the first error of a save while TensorStore still runs the save's other writes (in
  params.orbax-checkpoint-tmp), which create their folders again where the caller has already removed them (a full
  disk left empty folders so, 30 ms later): told once they are done, the caller removes the save for good.
  """
  if paths.is_remote(directory):
    return

  def state():
    return sorted(
      (root, name, entry.st_size, entry.st_mtime_ns)
      for root, folders, files in os.walk(directory)
      for name in folders + files
      if (entry := _lstat(os.path.join(root, name))) is not None
    )

  deadline = time.monotonic() + _STILL_TIMEOUT_SECONDS
  seen, since = state(), time.monotonic()
  while time.monotonic() - since < _STILL_SECONDS and time.monotonic() < deadline:
    time.sleep(0.02)
    if (now := state()) != seen:
      seen, since = now, time.monotonic()


def _lstat(path: str) -> os.stat_result | None:
  try:
    return os.lstat(path)
  except OSError:  # removed meanwhile
    return None


# The start of the name of the params orbax was still writing when a write stopped (a kill, a full disk).
_UNFINISHED_PARAMS = f"{PARAMS_DIR}.orbax-checkpoint-tmp"


def _unfinished_writes(directory: epath.Path) -> list[epath.Path]:
  return [path for path in directory.iterdir() if path.name.startswith(_UNFINISHED_PARAMS)]


def _new_or_checkpoint(directory: epath.Path) -> bool:
  """Whether `directory` may be written: empty, a checkpoint, or what a stopped write of one left."""
  if not directory.is_dir():
    return False
  names = {path.name for path in directory.iterdir() if not path.name.startswith(_UNFINISHED_PARAMS)}
  return not names or (CONFIG_FILE in names and names <= {CONFIG_FILE, PARAMS_DIR})


def is_checkpoint(directory: pathlib.Path) -> bool:
  """Whether `directory` is a converted checkpoint."""
  return (directory / CONFIG_FILE).exists()


def modules_trained(directory: pathlib.Path) -> bool:
  """Whether the converted checkpoint's X-CLIP modules were trained (False for one converted from CLIP); ValueError
  naming the file where the field is not a boolean."""
  meta = paths.read_json(pathlib.Path(directory) / CONFIG_FILE)
  trained = meta.get(TRAINED_FIELD, True) if isinstance(meta, dict) else True
  if not isinstance(trained, bool):
    raise ValueError(f"{pathlib.Path(directory) / CONFIG_FILE}: {TRAINED_FIELD} is {trained!r}, not true or false")
  return trained


def read_checkpoint(directory: pathlib.Path, **overrides) -> tuple[model_config.XCLIPConfig, dict]:
  """The config (with `overrides`) and the params, as host numpy arrays, of a converted checkpoint."""
  directory = directory.absolute()  # orbax reads absolute paths only
  meta = paths.read_json(directory / CONFIG_FILE)
  stored_format = meta.get("format") if isinstance(meta, dict) else None
  if stored_format != FORMAT_NAME:
    raise ValueError(f"{directory / CONFIG_FILE} is not an xclip-jax checkpoint config (format {stored_format!r})")
  if meta.get("version", 1) != FORMAT_VERSION:
    raise ValueError(
      f"{directory} was written by another xclip-jax version (checkpoint format "
      f"{meta.get('version', 1)}, this version reads {FORMAT_VERSION}); convert the original checkpoint "
      "again with `python -m xclip_jax.convert SRC DST`"
    )
  config = _architecture(meta, "config", directory / CONFIG_FILE)
  abstract = official.abstract_params(config)
  # As host arrays: the caller lays them out on its devices (and processes), wherever the writer's were.
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  # Before reading: orbax's abandoned reads may report the moment a read fails, before the failure reaches here.
  quiet_abandoned_reads()
  try:
    _check_stored_params(_stored_tree(directory / PARAMS_DIR), abstract, f"{directory / PARAMS_DIR}", CONFIG_FILE)
    params = ocp.PyTreeCheckpointer().restore(
      directory / PARAMS_DIR, args=ocp.args.PyTreeRestore(abstract, restore_args=as_numpy)
    )
  except official.CheckpointMismatchError:
    raise  # not damage: the config describes other params
  except Exception as e:  # damage fails in tensorstore, orbax or its metadata, with errors of many types
    raise ValueError(f"{directory / PARAMS_DIR} cannot be read: {one_line(e)}") from None
  return config.replace(**overrides), params


def _architecture(record, key: str, path) -> model_config.XCLIPConfig:
  """The model config held under `key` of the JSON object `record` read from `path`; ValueError naming the file."""
  values = record.get(key) if isinstance(record, dict) else None
  if not isinstance(values, dict):
    raise ValueError(f"{path}: no {key!r} object holding the model's architecture")
  try:
    return model_config.XCLIPConfig.from_dict(values)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def _check_stored_params(stored: dict, expected: dict, where: str, described_by: str):
  """CheckpointMismatchError naming the first parameter that `stored` (the tree of a checkpoint's metadata) and
  `expected` (the abstract params of the config in `described_by`) disagree on: missing, unexpected, or of another
  shape (with both shapes)."""
  stored = flax.traverse_util.flatten_dict(stored)
  expected = flax.traverse_util.flatten_dict(expected)
  for path, want in expected.items():
    name = "/".join(path)
    if path not in stored:
      raise official.CheckpointMismatchError(
        f"{where} lacks parameter {name} (shape {tuple(want.shape)}) that {described_by} describes"
      )
    if tuple(stored[path].shape) != tuple(want.shape):
      raise official.CheckpointMismatchError(
        f"{where}: parameter {name} has shape {tuple(stored[path].shape)}, {described_by} describes {tuple(want.shape)}"
      )
  for path, value in stored.items():
    if path not in expected:
      raise official.CheckpointMismatchError(
        f"{where} has parameter {'/'.join(path)} (shape {tuple(value.shape)}) that {described_by} does not describe"
      )


def _stored_tree(directory) -> dict:
  """The tree of an orbax checkpoint from its metadata (each leaf with the array's shape), without reading arrays."""
  return ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory)).tree


def is_workdir(directory: pathlib.Path) -> bool:
  """Whether `directory` is a training workdir: checkpoints, and the record of their model (or a best model)."""
  described = (directory / WORKDIR_RECORD).exists() or (directory / WORKDIR_BEST / CONFIG_FILE).exists()
  return (directory / WORKDIR_CHECKPOINTS).is_dir() and described


def checkpoint_steps(workdir) -> list[int]:
  """The steps of a training workdir's checkpoints (orbax names each folder by its step; what an unfinished save
  left, or one set aside as damaged, has a suffix); none where it has no checkpoints folder."""
  folder = epath.Path(workdir) / WORKDIR_CHECKPOINTS
  return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def read_workdir(directory: pathlib.Path, **overrides) -> tuple[model_config.XCLIPConfig, dict]:
  """The final model of a training workdir: the parameters of its newest readable checkpoint, the architecture of
  best/ or, in a run stopped before its first validation, of the run's record.

  Newer checkpoints that cannot be read (a file cut short, a lost object) are skipped with a warning and left where
  they are (resuming the run sets them aside); when none can be read, a ValueError names them. One that holds another
  architecture is a CheckpointMismatchError, as the others then most likely do too.
  """
  steps = checkpoint_steps(directory)
  if not steps:
    raise ValueError(f"{directory} is a training workdir without a checkpoint yet")
  if (directory / WORKDIR_BEST / CONFIG_FILE).exists():
    described_by, key = f"{WORKDIR_BEST}/{CONFIG_FILE}", "config"
  else:
    described_by, key = WORKDIR_RECORD, "architecture"
  config = _architecture(paths.read_json(directory / described_by), key, directory / described_by)
  # Only the parameters of the train state, not the optimiser's moments.
  item = {"params": official.abstract_params(config)}
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  # Before reading: orbax's abandoned reads may report the moment a read fails, before the failure reaches here.
  quiet_abandoned_reads()
  unreadable = {}
  for step in sorted(steps, reverse=True):
    state = directory.absolute() / WORKDIR_CHECKPOINTS / str(step) / "state"
    try:
      stored = _stored_tree(state)
      _check_stored_params(stored.get("params", {}), item["params"], f"{state}", described_by)
      restored = ocp.PyTreeCheckpointer().restore(
        state, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
      )
    except official.CheckpointMismatchError:
      raise  # not damage: the workdir's config is at fault
    except Exception as e:  # damage fails in tensorstore, orbax or its metadata, with errors of many types
      unreadable[step] = one_line(e)
      continue
    for damaged, error in unreadable.items():
      logging.warning("The checkpoint at step %d cannot be read (%s); reading step %d instead.", damaged, error, step)
    return config.replace(**overrides), restored["params"]
  tried = "; ".join(f"step {step}: {error}" for step, error in unreadable.items())
  raise ValueError(f"no checkpoint in {directory / WORKDIR_CHECKPOINTS} can be read ({tried})")


def one_line(error: BaseException) -> str:
  """An error that a damaged checkpoint raised, in one line: its innermost cause, which says what is wrong
  ("OUT_OF_RANGE: Error reading ..."; the outer ones say where it was read)."""
  # As Python's tracebacks go: the cause, else the context unless `raise ... from None` dropped it.
  while (inner := error.__cause__ or (None if error.__suppress_context__ else error.__context__)) is not None:
    error = inner
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def quiet_abandoned_reads():
  """Drops Python's reports of the reads that orbax abandons when one fails (it closes their event loop): as each
  finishes it reports the closed loop; as each is collected, it or the future gathering it reports its exception
  with a TensorStore spec of some 60 lines. The one line of the failure says it all. Other reports still go out."""
  logging.getLogger("asyncio").addFilter(_not_from_abandoned_read)  # "Task/Future exception was never retrieved"
  previous = sys.unraisablehook
  if getattr(previous, "quiets_abandoned_reads", False):
    return

  def hook(unraisable):
    if not (_raised_in_read(unraisable.exc_value) or _handed_to_closed_loop(unraisable)):
      previous(unraisable)

  hook.quiets_abandoned_reads = True
  sys.unraisablehook = hook


def _not_from_abandoned_read(record: logging.LogRecord) -> bool:
  return not (record.exc_info and _raised_in_read(record.exc_info[1]))


# orbax's read of one array: opening it (its metadata read), then reading each index (which turns any exception,
# GeneratorExit at closing included, into another).
_READ_FUNCTIONS = ("async_deserialize", "_read_array_index_and_device_put")
# How TensorStore's errors of a read begin: an absl status code, then what failed ("OUT_OF_RANGE: Error reading
# "params.a/0.0" in OCDBT database ...", "OUT_OF_RANGE: Error opening "zarr" driver: ...").
_TENSORSTORE_READ_ERROR = re.compile(r"[A-Z_]+: Error (reading|opening) ")
_ASYNCIO = str(pathlib.Path(asyncio.__file__).parent)


def _raised_in_read(error: BaseException | None) -> bool:
  if error is None:
    return False
  frames = traceback.extract_tb(error.__traceback__)
  if any(frame.name in _READ_FUNCTIONS for frame in frames):
    return True
  # A TensorStore read that orbax handed to asyncio as it is, a future or a task awaiting one: no Python frame but
  # asyncio's, if any.
  return all(frame.filename.startswith(_ASYNCIO) for frame in frames) and bool(
    _TENSORSTORE_READ_ERROR.match(str(error))
  )


def _handed_to_closed_loop(unraisable) -> bool:
  # A read that finished after its event loop was closed, handing its result back to it.
  error = unraisable.exc_value
  return (
    isinstance(error, RuntimeError)
    and str(error) == "Event loop is closed"
    and any(frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(unraisable.exc_traceback))
  )
