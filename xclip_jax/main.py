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

A mistake on the command line (a flag, the config file or its arguments, an argument too many, a config value that
cannot make a run) is one line on stderr, `error: ...`, and exit status 2, before anything is written. An
error in the run is one line too, naming the log file that holds its traceback, and exit status 1. A run that a
SIGTERM or Ctrl-C stopped saves a checkpoint and ends by that signal (the shells' status 143 or 130, and a shell script
or loop running it stops): rerun the same command to resume.
"""

import contextlib
import os
import re
import signal
import sys
import traceback
from typing import NoReturn

from xclip_jax import host_memory

if __name__ == "__main__":  # first: glibc reads its tunables when a process starts, and the imports below take seconds
  host_memory.restart_with_huge_pages()

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from xclip_jax import compilation_cache
from xclip_jax import console
from xclip_jax import paths
from xclip_jax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/k400.py:arch=ViT-B/16.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and eval_results.json go (may be gs://).")
_CACHE_DIR = compilation_cache.define_flag()
flags.adopt_module_key_flags(compilation_cache)  # listed by --help, with this module's own
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

EXIT_FAILED = 1  # the run stopped on an error (a command-line mistake: console.EXIT_ERROR, before anything runs)


def main(argv):
  if len(argv) > 1:
    console.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value.strip():
    console.fail("--workdir is empty: give the folder (or gs:// path) the run writes")
  if not paths.is_remote(_WORKDIR.value) and os.path.exists(_WORKDIR.value) and not os.path.isdir(_WORKDIR.value):
    console.fail(f"--workdir={_WORKDIR.value} is a file, not a folder")
  # Imported once the command line is read: it brings in TensorFlow, seconds that a mistake on the command line need
  # not wait for. Its C++ start-up lines go to the log, not the terminal.
  with console.native_start_up():
    from xclip_jax.train import trainer
  console.setup()
  log = None
  try:
    compilation_cache.enable(_CACHE_DIR.value)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _HEARTBEAT_TIMEOUT.value)
    # Before the log is opened: a config mistake writes nothing (a workdir inside the checkpoint would take logs/).
    trainer.check_config(_CONFIG.value, _WORKDIR.value)
    log = console.open_log(_WORKDIR.value, jax.process_index(), jax.process_count())
    if jax.process_count() == 1:  # several processes: jax.distributed's own handler syncs their stop
      signal.signal(signal.SIGTERM, _terminate)
    logging.info("Command line: %s", " ".join(sys.argv))
    if jax.process_count() > 1:
      logging.info(
        "A process that stops (killed, crashed, unreachable) makes the others stop within %d s "
        "(--heartbeat_timeout_seconds).",
        _HEARTBEAT_TIMEOUT.value,
      )
    logging.info("Host memory: %s", host_memory.status())
    logging.info(
      "JAX: %d processes, %d devices (%s)", jax.process_count(), jax.device_count(), jax.devices()[0].platform
    )
    results = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except app.UsageError as error:  # distributed.initialize's: the --coordinator_address flags given in part
    console.fail(str(error))
  except trainer.ConfigError as error:  # found before anything was written: a command-line mistake
    if jax.process_count() == 1:
      console.fail(str(error))
    console.error(str(error))
    _exit_at_once(console.EXIT_ERROR)  # not waiting at jax.distributed's shutdown barrier, as _stop
  except Terminated:
    logging.error(
      "Stopped by SIGTERM outside the training steps; rerun the same command to resume from the newest checkpoint, "
      "if there is one."
    )
    _end_by(signal.SIGTERM)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before training (the first during training saves and stops)
    logging.error("Interrupted; rerun the same command to resume from the newest checkpoint, if there is one.")
    # At once, as asked: an orderly exit would wait for a checkpoint being written, and orbax's threads, stopped by
    # the interpreter's shutdown, would print hundreds of tracebacks. The rerun removes what the save left.
    _end_by(signal.SIGINT)
  except Exception as error:
    _stop(error, log)
  if "stopped_by" in results:
    # Saved and stopped before the end: not a finished run to a shell's `&&`, or to a scheduler that restarts what
    # did not finish. The others stop with this process: they leave jax.distributed together first.
    if jax.process_count() > 1:
      jax.distributed.shutdown()
    _end_by(signal.Signals[results["stopped_by"]])


class Terminated(BaseException):
  """A SIGTERM outside the training steps (compiling, the final evaluation), where no step is left to save: unlike
  the signal's default, it ends the run with a message, and releases the workdir's lock. (During the steps,
  checkpoints.Preemption saves after the step first.)"""


def _terminate(signum, frame):
  del signum, frame
  raise Terminated


def _stop(error: Exception, log) -> NoReturn:
  """Ends the program on an error in the run: its traceback to the log file, one line naming it on the terminal."""
  console.log_traceback(error)
  where = f" (traceback in {log})" if log is not None else ""
  if jax.process_count() == 1:
    logging.error("%s%s", _describe(error), where)
    sys.exit(EXIT_FAILED)
  logging.error(
    "Process %d of %d failed; stopping it: %s%s", jax.process_index(), jax.process_count(), _describe(error), where
  )
  # An orderly exit would wait at jax.distributed's shutdown barrier for processes that wait for this one; exiting at
  # once lets their heartbeat check stop them, saying that another process died.
  _exit_at_once(EXIT_FAILED)


def _exit_at_once(status: int) -> NoReturn:
  """Exits without Python's shutdown (no waiting for threads or barriers), once the log and the terminal have it all."""
  _flush()
  os._exit(status)


def _end_by(signum: signal.Signals) -> NoReturn:
  """Ends the process by `signum` itself (at once, as _exit_at_once), as a process that does not handle it ends: a
  shell then stops the script or loop that ran the command (given 130 or 143 as an exit status, bash goes on to the
  next command), and reports the signal's status."""
  _flush()
  signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signum)
  os._exit(128 + signum)  # the signal was blocked: the status it would give


def _flush():
  console.flush()
  sys.stdout.flush()
  sys.stderr.flush()


def _describe(error: Exception) -> str:
  """The error in one line: its message, after its type's name unless it is an error of bad input (ValueError,
  OSError, the trainer's FloatingPointError, this project's own errors), which says it all; any other is likely a
  bug, whose type helps."""
  message = " ".join(str(error).split()) or type(error).__name__
  ours = type(error).__module__.split(".")[0] in ("xclip_jax", "input_pipeline")
  if ours or isinstance(error, (ValueError, OSError, FloatingPointError)):
    return message
  return f"{type(error).__name__}: {message}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing of the command line, with a mistake in a flag, the config file or its arguments as one line
  (`error: --FLAG: PROBLEM`, exit status 2) instead of absl's help text and ml_collections' tracebacks."""
  try:
    parsed_argv, none_fields = _split_none_overrides(argv)
    with _without_ml_collections_none_warning():
      remaining = console.parse_with_help(parsed_argv)
    # ml_collections raises a config file's OSError (missing, a folder) when it is first used: getattr does, on the
    # stand-in it returns for such a file (no ConfigDict).
    if not isinstance(_CONFIG.value, ml_collections.ConfigDict) and getattr(_CONFIG.value, "lock", None) is None:
      console.fail(_not_a_config_dict(flags.FLAGS["config"].config_filename, _CONFIG.value))
    _CONFIG.value.lock()
    for field in none_fields:
      if not _set_none(_CONFIG.value, field):
        flags.FLAGS[f"config.{field}"].parse("None")  # what ml_collections makes of it: an error, or the string
    if "mode" not in _CONFIG.value:  # configs/model.py, say, which gives a model's architecture
      console.fail(
        "--config: not an experiment config (it has no field 'mode'): use configs/k400.py, k600.py, hmdb51.py, "
        "ucf101.py, zero_shot.py or demo.py, or one made like them"
      )
    return remaining
  except flags.Error as error:
    if flags.FLAGS["config"].present and _CONFIG.value is None:  # absl's check of a required flag's value comes first
      console.fail(_not_a_config_dict(flags.FLAGS["config"].config_filename, None))
    console.fail(_flag_error(error))
  except OSError as error:  # the config file cannot be read; the error it was raised from says why, last
    console.fail(f"--config: {str(error.__cause__ or error).splitlines()[-1].strip()}")
  except Exception as error:  # ml_collections walking a --config.FIELD override to no field, or the config file's own
    field = isinstance(error, (LookupError, AttributeError)) and _override_of_no_field(argv)
    if field:
      console.fail(f"--config.{field}: no such field")
    if isinstance(error, AttributeError) and error.name == "get_config":
      console.fail("--config: the file defines no get_config()")
    console.fail(_config_file_error(error))  # a syntax error, an error raised by get_config


def _split_none_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv less its `--config.FIELD=None` overrides, the fields whose last override that is): ml_collections parses a
  None by the field's type (an error for an int, the string 'None' for a str), so main sets them itself."""
  args = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  last_value, kept, i = {}, [], 0
  while i < len(args):
    arg, i = args[i], i + 1
    name, equals, value = arg.lstrip("-").partition("=")
    if not (arg.startswith("-") and name.startswith("config.")):
      kept.append(arg)
      continue
    if not equals and i < len(args) and args[i] == "None":  # `--config.FIELD None`
      value, i = "None", i + 1
    last_value[name] = value
    if value != "None":
      kept.append(arg)
  nones = sorted(name.removeprefix("config.") for name, value in last_value.items() if value == "None")
  return [argv[0], *kept], nones


def _set_none(config: ml_collections.ConfigDict, field: str) -> bool:
  """Sets `field` (a dotted path) to None where its default may be None (a FieldReference of a type, as
  configs/common.py makes init.clip, init.checkpoint and steps_per_epoch); False, changing nothing, elsewhere."""
  parent_path, _, name = field.rpartition(".")
  parent = config_path.get_value(parent_path, config) if parent_path else config
  # ConfigDict keeps a FieldReference as it was given; no public call tells one from a plain value.
  if not isinstance(parent, ml_collections.ConfigDict) or not isinstance(
    parent._fields.get(name), ml_collections.FieldReference
  ):
    return False
  parent[name] = None
  return True


def _not_a_config_dict(config_arg: str, returned) -> str:
  config_file = config_arg.split(":", 1)[0]
  returned = "None" if returned is None else f"a {type(returned).__name__}"
  return f"--config: get_config() of {config_file} returned {returned}: it must return an ml_collections ConfigDict"


@contextlib.contextmanager
def _without_ml_collections_none_warning():
  """Leaves out ml_collections' warning of a get_config() that returned None (with absl's "Logging before flag
  parsing" line before it): the error that follows says so."""
  absl_logger = logging.get_absl_logger()
  drop = lambda record: "get_config() returned None" not in record.getMessage()
  absl_logger.addFilter(drop)
  try:
    yield
  finally:
    absl_logger.removeFilter(drop)


def _flag_error(error: flags.Error) -> str:
  """absl's message, less its `flag ` prefix; for an error raised by the config file (ml_collections wraps it in one
  whose message is the traceback), that error's own message."""
  wrapper = error.__context__
  if wrapper is not None and wrapper.__context__ is not None and str(wrapper).startswith("Error whilst parsing config"):
    return _config_file_error(wrapper.__context__)
  return console.flag_error(error)


_LOCKED_OUT = re.compile(r'Key "([^"]+)" does not exist and cannot be added since the config is locked')


def _config_file_error(error: Exception) -> str:
  """An error raised by the config file, in one line; for a field set that the experiment config lacks (a misspelling:
  configs/common.py locks it), where, which, and ml_collections' guess, not its listing of every field."""
  new_field = _LOCKED_OUT.search(str(error)) if isinstance(error, (AttributeError, KeyError)) else None
  if new_field is None:
    return f"--config: {_describe(error)}"
  config_file_frames = [
    frame for frame, _ in traceback.walk_tb(error.__traceback__) if "ml_collections" not in frame.f_code.co_filename
  ]
  frame = config_file_frames[-1]  # the line that set the field
  config_file = os.path.relpath(frame.f_code.co_filename)
  if config_file.startswith(".."):
    config_file = frame.f_code.co_filename
  where = f"{config_file}:{frame.f_lineno}"
  guess = re.search(r'Did you mean "([^"]+)"', str(error))
  guess = f" (did you mean {guess[1]!r}?)" if guess else ""
  return (
    f"--config: {where} sets {new_field[1]!r}, which the experiment config has no field for{guess}; a config that "
    "adds a field does so in `with config.unlocked():`"
  )


def _override_of_no_field(argv: list[str]) -> str | None:
  """The first `--config.FIELD=VALUE` of the command line naming no field of the config: ml_collections' error names
  only the part that is missing, if that."""
  args = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  config, fields = None, []
  for i, arg in enumerate(args):
    name, equals, value = arg.lstrip("-").partition("=")
    if name == "config":
      config_arg = value if equals else args[i + 1]
      try:
        with _without_ml_collections_none_warning():
          config = flags.FLAGS["config"].parser.parse(config_arg)
      except Exception:  # the config file itself is at fault
        return None
      if not isinstance(config, ml_collections.ConfigDict):  # the overrides failed on it, not on a field
        console.fail(_not_a_config_dict(config_arg, config))
    elif name.startswith(("config.", "noconfig.")):
      fields.append(name.split(".", 1)[1])
  for field in fields:
    try:
      config_path.get_value(field, config)
    except (LookupError, AttributeError):
      return field
  return None


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
