"""The terminal of the command-line programs: what a user needs to see there, and the full log in a file.

Left to absl, every library's INFO lines reach the terminal (orbax's checkpoint chatter, JAX's backend probing, a
metrics line with a thread id and a source file). After `setup` the terminal shows warnings and errors, briefly
(`warning: ...`), and what the program prints through this module: `start_block`, a `Progress` line (live on a
terminal; one plain line per update when stdout is not one, so that CI, SLURM and TPU logs stay greppable) and
`info`. Everything that is logged goes, in absl's format, to the file `open_log` names: WORKDIR/logs/process_I.log,
which several runs in one workdir append to. `--verbosity` (absl's flag) on the command line brings the whole log
back to the terminal at that level (1: with DEBUG). With several processes only process 0 prints, apart from warnings
and errors, and every line of the log and every warning says `[process I/N]`.

  with console.native_start_up():  # around the import that brings in TensorFlow
    from xclip_jax.train import trainer
  ...
  console.setup()
  console.open_log(workdir, jax.process_index(), jax.process_count())
  console.start_block([("model", "ViT-B/16"), ...])
  progress = console.Progress(total_steps, first_step)
  ...  progress.tick() after each step, progress.update(step, scalars) at each log interval, console.info(text)
  progress.close()

An evaluation shows its own progress (`EvalProgress`), below the training's line while training.
"""

import collections
from collections.abc import Iterator
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging as absl_logging
from etils import epath
import tqdm

from xclip_jax import paths

LOG_DIR = "logs"
EXIT_ERROR = 2  # a mistake of the user's (a flag, an argument, an input), told in one line
# Cloud storage has no appending: a remote log is uploaded whole, at the end, on errors, and meanwhile with the first
# line this long after the last upload.
UPLOAD_EVERY_SECONDS = 300
# Records logged before `open_log` names the file, written to it then (the oldest dropped beyond this).
_EARLY_RECORDS = 10_000
# Marks a record that the terminal has already shown in its own form: the log file takes it, the terminal skips it.
_PRINTED = "xclip_jax_console_printed"

_handler: "_Handler | None" = None
_native_start_up: list[str] = []  # what native_start_up held, until setup
_process_index, _process_count = 0, 1


def setup(verbose: bool | None = None):
  """Routes the log of every library: to the terminal, warnings and errors only (or all with `verbose`); to the file
  `open_log` names, everything, including what is logged before it is called.

  Args:
    verbose: show the whole log on the terminal. None: whether --verbosity was given on the command line (with a
      value of 0 or more; absl's default is INFO).
  """
  global _handler
  if verbose is None:
    verbose = _verbosity_given()
  root = logging.getLogger()
  for handler in list(root.handlers):
    # absl's handler (or any other) that writes to the terminal; a previous setup's.
    terminal = isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout)
    if handler is absl_logging.get_absl_handler() or terminal or isinstance(handler, _Handler):
      root.removeHandler(handler)
      if isinstance(handler, _Handler):
        handler.close()
  _handler = _Handler(verbose)
  root.addHandler(_handler)
  # Python warnings (mostly libraries' deprecations) join the log instead of going straight to stderr.
  logging.captureWarnings(True)
  if not any(isinstance(h, _ExceptionToLog) for h in app.EXCEPTION_HANDLERS):
    app.install_exception_handler(_ExceptionToLog())
  for text in _native_start_up:
    _handler.write_native(text)
  _native_start_up.clear()


def open_log(workdir, process_index: int = 0, process_count: int = 1) -> epath.Path:
  """Writes the log to WORKDIR/logs/process_I.log (local, or uploaded to cloud storage) from the start; returns its path.

  Also says which process this is: only process 0 prints, and with several processes every line says which one.
  """
  global _process_index, _process_count
  if _handler is None:
    raise RuntimeError("call console.setup() before console.open_log()")
  _process_index, _process_count = process_index, process_count
  path = paths.absolute(workdir) / LOG_DIR / f"process_{process_index}.log"
  _handler.open(path, f"[process {process_index}/{process_count}] " if process_count > 1 else "")
  return path


def log_traceback(error: BaseException):
  """Puts `error` with its traceback in the log file only: the terminal has the one line the caller prints."""
  logging.getLogger(__name__).error("The program stopped on an error.", exc_info=error, extra={_PRINTED: True})
  flush()


def flush():
  """Writes out the log file (a remote one is uploaded): for an exit that skips Python's own clean-up (os._exit)."""
  if _handler is not None:
    _handler.flush()


def info(text: str):
  """Prints `text` for the user (above a progress line), on process 0; the log file takes it too."""
  if _process_index == 0:
    tqdm.tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()
  logging.getLogger(__name__).info("%s", text, extra={_PRINTED: True})


def start_block(rows: list[tuple[str, object]]):
  """Prints `(name, value)` rows, aligned, as a run starts; the log file's path is added as the last row."""
  if _handler is not None and _handler.path is not None:
    rows = [*rows, ("full log", _handler.path)]
  width = max(len(name) for name, _ in rows)
  info("\n".join(f"  {name:<{width}}  {value}" for name, value in rows))


class Progress:
  """The progress of training on process 0: a live line on a terminal, else one plain line per `update`.

  A line: step/total, epoch, loss, learning rate, clips/s and the time left, e.g.
    step 250/1200  epoch 3.33  loss 1.7242  lr 1.20e-04  42.1 clips/s  ETA 06:17
  """

  def __init__(self, total_steps: int, first_step: int = 0):
    """`first_step`: the steps done before (a resumed run)."""
    self._total = total_steps
    self._bar = None
    self._plain = _plain_lines()
    if _process_index == 0 and not self._plain:
      self._bar = tqdm.tqdm(
        total=total_steps,
        initial=first_step,
        file=sys.stdout,
        dynamic_ncols=True,
        bar_format="step {n_fmt}/{total_fmt} {bar} {desc}  ETA {remaining}",
      )

  def tick(self):
    """One more step (cheap: redraws at most ten times a second)."""
    if self._bar is not None:
      self._bar.update()

  def update(self, step: int, scalars: dict):
    """The scalars of a log interval: loss, lr, clips_per_second, eta_seconds and, if there, epoch."""
    stats = _stats(scalars)
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_description_str(stats)  # redraws: the ticks have usually reached `step` already
    elif self._plain:
      eta = tqdm.tqdm.format_interval(scalars["eta_seconds"])
      print(f"step {step}/{self._total}  {stats}  ETA {eta}", flush=True)

  def close(self):
    """Leaves the last state of the live line on the terminal."""
    if self._bar is not None:
      self._bar.close()


class EvalProgress:
  """The progress of an evaluation on process 0, e.g. `evaluating test: 120/400 videos  12.3 videos/s  ETA 00:25`.

  On a terminal, a live line that goes away when the evaluation ends (below the training line, during training).
  Elsewhere, plain lines at each tenth of the videos done, once the evaluation has run PLAIN_AFTER_SECONDS: a long
  final evaluation shows in a log that it is moving, a short validation adds nothing.
  """

  PLAIN_AFTER_SECONDS = 30

  def __init__(self, name: str, total_videos: int):
    self._name, self._total = name, total_videos
    self._done = self._printed_tenths = 0
    self._bar = None
    self._plain = _plain_lines()
    self._start = time.monotonic()
    # The rate counts from the first batch done: before it come compiling and filling the input pipeline.
    self._first = None
    if _process_index == 0 and not self._plain:
      self._bar = tqdm.tqdm(
        total=total_videos,
        file=sys.stdout,
        dynamic_ncols=True,
        leave=False,
        bar_format=f"evaluating {name}: {{n_fmt}}/{{total_fmt}} videos {{bar}} {{rate_fmt}}  ETA {{remaining}}",
        unit=" videos",
      )

  def advance(self, videos: int):
    """`videos` more rows of the list done (a global batch; its padding past the list's end is not counted)."""
    videos = min(videos, self._total - self._done)
    self._done += videos
    now = time.monotonic()
    if self._bar is not None:
      self._bar.update(videos)
    if not self._plain:
      return
    if self._first is None:
      self._first = (now, self._done)
    tenths = 10 * self._done // max(self._total, 1)
    if tenths <= self._printed_tenths or now - self._start < self.PLAIN_AFTER_SECONDS:
      return
    self._printed_tenths = tenths
    first_time, first_done = self._first
    rate = (self._done - first_done) / (now - first_time) if now > first_time else 0.0
    eta = tqdm.tqdm.format_interval((self._total - self._done) / rate) if rate else "?"
    print(f"evaluating {self._name}: {self._done}/{self._total} videos  {rate:.1f} videos/s  ETA {eta}", flush=True)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def _plain_lines() -> bool:
  """Whether this process shows progress as plain lines: process 0 where stdout is no terminal, or a terminal of no
  width (a pseudo-terminal nobody sized, as `ssh -tt` or `script` give), which cannot show a live line."""
  return _process_index == 0 and (not sys.stdout.isatty() or _columns(sys.stdout) == 0)


def _columns(stream) -> int | None:
  """The width of the terminal `stream` writes to; None where it does not say."""
  try:
    return os.get_terminal_size(stream.fileno()).columns
  except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
    return None


def count(number: int, noun: str) -> str:
  """`1 video`, `2 videos`: the number with its noun, in the plural unless it is 1."""
  return f"{number} {noun}{'s' * (number != 1)}"


def error(message: str) -> int:
  """Tells a mistake of the user's: `error: MESSAGE`, one line on stderr; returns the exit status, EXIT_ERROR."""
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  return EXIT_ERROR


def fail(message: str) -> NoReturn:
  """Ends a command on a mistake of its user's: `error`, then exit status EXIT_ERROR."""
  sys.exit(error(message))


def flag_error(error: flags.Error) -> str:
  """absl's message for a bad or missing flag in one line, less its `flag ` prefix (`--num_frames=0: 0 is not ...`)."""
  return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()).removeprefix("flag ")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing of the command line (`app.run(main, flags_parser=console.parse_flags)`), with a bad or missing flag
  a `fail` (absl prints two lines, the second pointing to --help, and exits with status 1)."""
  try:
    return parse_with_help(argv)
  except flags.Error as error:
    fail(flag_error(error))


_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def parse_with_help(argv: list[str]) -> list[str]:
  """flags.FLAGS(argv), where absl's --help (--helpshort, --helpfull, --helpxml, -?) prints what was asked and ends
  with exit status 0, not absl's 1: a script that asks a command for its usage has not failed."""
  try:
    return flags.FLAGS(argv)
  except SystemExit as exited:
    asked = any(arg.startswith("-") and arg.lstrip("-").split("=")[0] in _HELP_FLAGS for arg in argv[1:])
    if exited.code == 1 and asked:
      sys.exit(0)
    raise


@contextlib.contextmanager
def native_start_up() -> Iterator[None]:
  """Holds what C code writes to stderr meanwhile, for `setup` to put in the log (and on the terminal with
  --verbosity); an error inside shows it at once.

  For imports that bring in TensorFlow: it writes C++ start-up lines (oneDNN, CPU features) through absl's C++ log
  before absl::InitializeLog, which writes to stderr whatever TF_CPP_MIN_LOG_LEVEL says, and before absl has read
  any flag. TF_CPP_MIN_LOG_LEVEL=2, which TensorFlow reads when imported, keeps its later C++ INFO and WARNING lines
  off the terminal, unless the environment sets another level or the command line has --verbosity.
  """
  # 1 counts as unset: importing jax sets it, where the environment does not.
  if not _verbose_argv(sys.argv) and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") == "1":
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
  sys.stderr.flush()
  with tempfile.TemporaryFile() as held:
    stderr = os.dup(2)
    os.dup2(held.fileno(), 2)
    try:
      yield
    except BaseException:
      _restore_stderr(stderr)
      sys.stderr.write(_read(held))
      raise
    _restore_stderr(stderr)
    if _handler is None:
      _native_start_up.append(_read(held))
    else:
      _handler.write_native(_read(held))


def _restore_stderr(saved: int):
  sys.stderr.flush()
  os.dup2(saved, 2)
  os.close(saved)


def _read(held) -> str:
  held.seek(0)
  return held.read().decode(errors="replace")


def _stats(scalars: dict) -> str:
  epoch = f"epoch {scalars['epoch']:.2f}  " if "epoch" in scalars else ""
  return f"{epoch}loss {scalars['loss']:.4f}  lr {scalars['lr']:.2e}  {scalars['clips_per_second']:.1f} clips/s"


def _verbosity_given() -> bool:
  flag = flags.FLAGS["verbosity"]
  return bool(flag.present) and flag.value >= 0


def _verbose_argv(argv: list[str]) -> bool:
  """Whether the command line gives --verbosity (-v) of 0 or more, read before absl parses it (not in a --flagfile)."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    name, equals, given = arg.partition("=")
    if name in ("-v", "--v", "-verbosity", "--verbosity"):
      given = given if equals else (argv[i + 1] if i + 1 < len(argv) else "")
      with contextlib.suppress(ValueError):
        value = int(given)
  return value is not None and value >= 0


class _Handler(logging.Handler):
  """The root logger's one handler: every record to the log file, the ones the user needs to the terminal."""

  def __init__(self, verbose: bool):
    super().__init__()
    self._verbose = verbose
    self._file: _LocalFile | _RemoteFile | None = None
    self._early = collections.deque(maxlen=_EARLY_RECORDS)
    self._prefix = ""
    self._file_failed = False
    self.path: epath.Path | None = None

  def open(self, path: epath.Path, prefix: str):
    with self.lock:
      self._prefix = prefix
      self._file = _RemoteFile(path) if paths.is_remote(path) else _LocalFile(path)
      self.path = path
      while self._early:
        self._write(self._file_line(self._early.popleft()) + "\n")

  def _write(self, text: str):
    """Into the log file. A write that fails (a full disk) is told on the terminal, once, and stops nothing: the
    terminal still gets its lines, the error that ends the run among them."""
    try:
      self._file.write(text)
    except OSError as error:
      self._file_error(error)

  def _file_error(self, error: OSError):
    if not self._file_failed:
      self._file_failed = True
      _to_terminal(
        f"{self._prefix}warning: cannot write the log {self.path} ({error.strerror or error}); lines may be missing"
      )

  def emit(self, record: logging.LogRecord):
    try:
      if self._file is not None:
        self._write(self._file_line(record) + "\n")
      else:
        self._early.append(record)
      if getattr(record, _PRINTED, False):
        return
      if self._verbose:
        _to_terminal(self._file_line(record))
      elif _for_the_user(record):
        _to_terminal(self._terminal_line(record))
    except Exception:
      self.handleError(record)

  def write_native(self, text: str):
    """What C code wrote to stderr: into the log as it is, and to the terminal with --verbosity."""
    if not text:
      return
    with self.lock:
      if self._file is not None:
        self._write(text)
      else:
        self._early.append(logging.makeLogRecord({"msg": text.rstrip("\n"), "levelno": logging.INFO, "raw": True}))
    if self._verbose:
      _to_terminal(text.rstrip("\n"))

  def _file_line(self, record: logging.LogRecord) -> str:
    text = self.format(record)
    if getattr(record, "raw", False):
      return text
    return f"{absl_logging.get_absl_log_prefix(record)}{self._prefix}{text}"

  def _terminal_line(self, record: logging.LogRecord) -> str:
    # The process prefix first: on a shared terminal, whose warning it is matters before what it says.
    return f"{self._prefix}{record.levelname.lower()}: {self.format(record)}"

  def flush(self):
    with self.lock:
      if self._file is not None:
        try:
          self._file.flush()
        except OSError as error:
          self._file_error(error)

  def close(self):
    with self.lock:
      if self._file is not None:
        self._file.close()
        self._file = None
    super().close()


def _for_the_user(record: logging.LogRecord) -> bool:
  """Errors, and warnings other than libraries' deprecation notices (Python's warnings, or log lines saying so, as
  TFDS writes), which only their developers can act on."""
  if record.levelno >= logging.ERROR:
    return True
  return record.levelno >= logging.WARNING and record.name != "py.warnings" and "deprecated" not in record.getMessage()


def _to_terminal(text: str):
  # Through tqdm, which clears a live progress line first and draws it again below.
  tqdm.tqdm.write(text, file=sys.stderr)


class _LocalFile:
  """Appended to line by line, so that nothing is lost when the process is killed."""

  def __init__(self, path: epath.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed by close())

  def write(self, text: str):
    self._file.write(text)

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class _RemoteFile:
  """A log on cloud storage, which cannot append: the lines gather in a local file, uploaded whole at each flush and
  after UPLOAD_EVERY_SECONDS."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._local = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed by close())
    if path.exists():  # a resumed run appends
      self._local.write(path.read_text())
    self._uploaded = time.monotonic()

  def write(self, text: str):
    self._local.write(text)
    if time.monotonic() - self._uploaded > UPLOAD_EVERY_SECONDS:
      self.flush()

  def flush(self):
    self._local.seek(0)
    text = self._local.read()
    self._local.seek(0, io.SEEK_END)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._path.write_text(text)
    self._uploaded = time.monotonic()

  def close(self):
    self.flush()
    self._local.close()


class _ExceptionToLog(app.ExceptionHandler):
  """Puts the traceback of an error that ends the program in the log file (Python prints it on the terminal)."""

  def handle(self, exc):
    log_traceback(exc)
