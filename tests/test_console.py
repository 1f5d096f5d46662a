"""The console of the command-line programs (xclip_jax.console): what reaches the terminal, what only the log file.

Unit tests in process; what `python -m xclip_jax.main` shows a user's terminal is tested on the small demo, in
tests/test_demo.py.
"""

import io
import logging
import os
import re
import sys
import time

from absl import logging as absl_logging
import pytest

from tests.fixtures import console_state
from xclip_jax import console
from xclip_jax import paths

SCALARS = {"loss": 1.72421, "lr": 1.2e-4, "clips_per_second": 42.14, "eta_seconds": 377.2, "epoch": 3.333}


@pytest.fixture(autouse=True)
def isolated_logging(monkeypatch):
  """Each test sets the console up afresh, at absl's level after flag parsing (INFO), and leaves logging as it was."""
  with console_state.restored(monkeypatch):
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.NOTSET)
    # What an import of another test module held (xclip_jax.main's of TensorFlow) stays out of these tests' logs.
    monkeypatch.setattr(console, "_native_start_up", [])
    yield


def test_plain_progress_is_one_greppable_line_per_update(capsys):
  progress = console.Progress(1200, 0)
  progress.tick()
  progress.update(250, SCALARS)
  progress.tick()
  progress.close()
  assert capsys.readouterr().out == "step 250/1200  epoch 3.33  loss 1.7242  lr 1.20e-04  42.1 clips/s  ETA 06:17\n"


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_on_a_terminal_the_progress_is_one_live_line_with_what_is_printed_above_it(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stdout", terminal)
  progress = console.Progress(10, 2)
  for _ in range(3):  # steps 3, 4, 5
    progress.tick()
  progress.update(5, SCALARS)
  console.info("step 5: validation top-1 50.0%")
  progress.close()
  # What stays visible: a carriage return draws the line again from its start.
  screen = [line.split("\r")[-1] for line in terminal.getvalue().split("\n")]
  assert screen[0] == "step 5: validation top-1 50.0%"
  assert screen[1].startswith("step 5/10 ") and "epoch 3.33  loss 1.7242  lr 1.20e-04  42.1 clips/s  ETA" in screen[1]
  assert screen[2:] == [""]


def test_a_terminal_of_no_width_gets_the_plain_lines(monkeypatch):
  """A pseudo-terminal nobody sized (ssh -tt, script) says 0 columns: a live line would never show."""
  terminal = _Terminal()
  terminal.fileno = lambda: 1
  monkeypatch.setattr(sys, "stdout", terminal)
  monkeypatch.setattr(console.os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
  progress = console.Progress(1200, 0)
  progress.tick()
  progress.update(250, SCALARS)
  progress.close()
  assert terminal.getvalue() == "step 250/1200  epoch 3.33  loss 1.7242  lr 1.20e-04  42.1 clips/s  ETA 06:17\n"


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_a_long_evaluation_prints_a_plain_line_at_each_tenth_done_with_its_rate_and_time_left(monkeypatch, capsys):
  clock = _Clock()
  monkeypatch.setattr(console.time, "monotonic", clock)
  progress = console.EvalProgress("test", 1000)
  clock.now += 40  # compiling and the first batch
  progress.advance(100)  # the first batch: the rate starts here
  clock.now += 10
  progress.advance(100)  # 200 done, 100 in 10 s: 10 videos/s, 800 left
  progress.advance(50)  # still within the second tenth
  clock.now += 5
  progress.advance(1000)  # padding past the end of the list is not counted
  progress.close()
  assert capsys.readouterr().out.splitlines() == [
    "evaluating test: 100/1000 videos  0.0 videos/s  ETA ?",
    "evaluating test: 200/1000 videos  10.0 videos/s  ETA 01:20",
    "evaluating test: 1000/1000 videos  60.0 videos/s  ETA 00:00",
  ]


def test_a_short_evaluation_prints_no_progress_lines(monkeypatch, capsys):
  clock = _Clock()
  monkeypatch.setattr(console.time, "monotonic", clock)
  progress = console.EvalProgress("val", 40)
  for _ in range(10):
    clock.now += console.EvalProgress.PLAIN_AFTER_SECONDS / 11
    progress.advance(4)
  progress.close()
  assert capsys.readouterr().out == ""


def test_on_a_terminal_the_evaluation_line_is_live_and_goes_when_it_ends(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stdout", terminal)
  progress = console.EvalProgress("val", 4)
  progress.advance(2)
  time.sleep(0.15)  # tqdm redraws at most ten times a second
  progress.advance(2)
  assert re.fullmatch(r"evaluating val: 4/4 videos .* videos/s  ETA 00:00", terminal.getvalue().split("\r")[-1])
  progress.close()
  assert terminal.getvalue().split("\r")[-1].strip() == ""


def test_log_file_takes_library_info_lines_that_the_terminal_does_not(tmp_path, capsys):
  console.setup(verbose=False)
  logging.getLogger("orbax.checkpoint").info("CheckpointManager init: checkpointers=None")  # before the file is known
  path = console.open_log(tmp_path)
  absl_logging.info("Unable to initialize backend 'tpu'")
  absl_logging.warning("skipping video v3.mp4: no frames")
  absl_logging.warning("`FeatureConnector.dtype` is deprecated.")  # a library's notice to its developers
  console.info("step 3: validation top-1 16.7%")
  console.flush()
  terminal = capsys.readouterr()
  assert terminal.out == "step 3: validation top-1 16.7%\n"
  assert terminal.err == "warning: skipping video v3.mp4: no frames\n"
  assert path == tmp_path / "logs" / "process_0.log"
  lines = path.read_text().splitlines()
  assert [line[0] for line in lines] == ["I", "I", "W", "W", "I"]  # absl's format
  messages = ("CheckpointManager init", "backend 'tpu'", "skipping video", "is deprecated", "validation top-1")
  for line, message in zip(lines, messages):
    assert message in line, (line, message)


def test_a_log_file_that_cannot_be_written_is_one_warning_and_the_terminal_keeps_its_lines(tmp_path, capsys):
  """A full disk: the error that ends the run must still reach the terminal, without logging's tracebacks."""
  console.setup(verbose=False)
  path = console.open_log(tmp_path)

  def disk_full(text):
    raise OSError(28, "No space left on device")

  console._handler._file.write = disk_full
  absl_logging.warning("skipping video v3.mp4: no frames")
  absl_logging.error("No space left on device (traceback in the log)")
  console.flush()
  assert capsys.readouterr().err.splitlines() == [
    f"warning: cannot write the log {path} (No space left on device); lines may be missing",
    "warning: skipping video v3.mp4: no frames",
    "error: No space left on device (traceback in the log)",
  ]


def test_verbose_shows_the_whole_log_on_the_terminal(tmp_path, capsys):
  console.setup(verbose=True)
  console.open_log(tmp_path)
  logging.getLogger("orbax.checkpoint").info("CheckpointManager init: checkpointers=None")
  console.info("a result")
  terminal = capsys.readouterr()
  assert terminal.out == "a result\n"
  # The log's line, as absl writes it; what was printed is not repeated as a log line.
  assert re.fullmatch(r"I\d{4} [^\n]*\] CheckpointManager init: checkpointers=None\n", terminal.err)


def test_other_processes_print_only_warnings_which_name_the_process(tmp_path, capsys):
  console.setup(verbose=False)
  path = console.open_log(tmp_path, process_index=1, process_count=2)
  console.start_block([("model", "ViT-B/16")])
  console.info("step 3: validation top-1 16.7%")
  progress = console.Progress(6, 0)
  progress.tick()
  progress.update(3, SCALARS)
  progress.close()
  evaluation = console.EvalProgress("val", 10)
  evaluation.advance(10)
  evaluation.close()
  absl_logging.warning("skipping video v3.mp4: no frames")
  terminal = capsys.readouterr()
  assert terminal.out == ""
  assert terminal.err == "[process 1/2] warning: skipping video v3.mp4: no frames\n"
  assert path.name == "process_1.log"
  records = [line for line in path.read_text().splitlines() if re.match(r"[IWE]\d{4} ", line)]
  assert len(records) == 3 and all("] [process 1/2] " in line for line in records)


def test_start_block_aligns_its_rows_and_names_the_log(tmp_path, capsys):
  console.setup(verbose=False)
  path = console.open_log(tmp_path)
  console.start_block([("model", "ViT-B/16"), ("parameters", "4,780,993")])
  assert capsys.readouterr().out.splitlines() == [
    "  model       ViT-B/16",
    "  parameters  4,780,993",
    f"  full log    {path}",
  ]


def test_a_log_on_cloud_storage_is_uploaded_whole_and_a_resumed_run_appends(tmp_path, monkeypatch):
  monkeypatch.setattr(paths, "is_remote", lambda path: True)  # the local folder stands in for gs://
  console.setup(verbose=False)
  path = console.open_log(tmp_path)
  absl_logging.info("first run")
  assert not path.exists()  # no appending on cloud storage: nothing until an upload
  console.flush()
  assert path.read_text().endswith("] first run\n")
  console.setup(verbose=False)  # closing the previous handler uploads what it has, as at the end of a run
  console.open_log(tmp_path)
  absl_logging.info("second run")
  console.flush()
  assert [line.split("] ")[-1] for line in path.read_text().splitlines()] == ["first run", "second run"]


@pytest.mark.parametrize(
  "argv, environment, expected",
  [
    (["main"], None, "2"),
    (["main", "--verbosity=1"], None, None),
    (["main", "-v", "0", "--workdir=w"], None, None),
    (["main", "--verbosity=-1"], None, "2"),
    (["main"], "0", "0"),  # the user's setting wins
    (["main"], "1", "2"),  # what importing jax sets where the environment does not
  ],
)
def test_native_start_up_holds_c_stderr_for_the_log(tmp_path, capfd, monkeypatch, argv, environment, expected):
  monkeypatch.setattr(sys, "argv", argv)
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  if environment is not None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", environment)
  monkeypatch.setattr(console, "_native_start_up", [])
  with console.native_start_up():
    os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on.\n")
  assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == expected
  assert capfd.readouterr().err == ""
  console.setup(verbose=expected is None)
  path = console.open_log(tmp_path)
  console.flush()
  assert path.read_text() == "I0000 port.cc:153] oneDNN custom operations are on.\n"
  assert ("oneDNN" in capfd.readouterr().err) == (expected is None)


def test_native_start_up_shows_what_it_held_when_the_import_fails(capfd, monkeypatch):
  monkeypatch.setattr(console, "_native_start_up", [])
  with pytest.raises(ImportError), console.native_start_up():
    os.write(2, b"F0000 loader.cc:1] cannot load libtensorflow_framework.so\n")
    raise ImportError("no tensorflow")
  assert capfd.readouterr().err == "F0000 loader.cc:1] cannot load libtensorflow_framework.so\n"
