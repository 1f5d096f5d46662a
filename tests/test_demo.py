"""The demo: its data written once per workdir, and `python -m xclip_jax.main --config=configs/demo.py` end to end
(shortened): what it writes, and what a user's terminal shows of it (xclip_jax.console). What the data shows is
tested in tests/input_pipeline/test_demo_data.py."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo as demo_config
from input_pipeline import demo_data
import xclip_jax
from xclip_jax.evaluation import report
from xclip_jax.parallel import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
# Libraries' start-up and internals: orbax, JAX's backend probing, TensorFlow's C++ start-up, clu's metric writer.
NOISE = (
  "CheckpointManager init",
  "DefaultCheckpointHandlerRegistry",
  "barrier_sync_fn",
  "Unable to initialize backend",
  "oneDNN",
  "absl::InitializeLog",
  "[Hyperparameters]",
  "logging_writer.py",
)


def test_prepare_writes_once_and_refuses_data_made_with_other_settings(tmp_path):
  config = demo_config.get_config("small=True")
  prepared = demo_data.prepare(config, tmp_path)
  assert prepared.data.test_file == str(tmp_path.absolute() / "demo_data" / "test.txt")
  assert config.data.test_file == ""  # the config passed in is left as it was
  labels = tmp_path / "demo_data" / "labels.csv"
  written = labels.stat().st_mtime_ns
  demo_data.prepare(config, tmp_path)
  assert labels.stat().st_mtime_ns == written
  config.demo.num_train += 1
  with pytest.raises(ValueError, match="holds demo data made with"):
    demo_data.prepare(config, tmp_path)


@pytest.mark.parametrize("field", ["train_file", "label_list", "tfds_dir"])
def test_the_demo_refuses_data_of_the_user_before_writing_its_own(tmp_path, field):
  """It would train on its own data and report that as the user's."""
  config = demo_config.get_config("small=True")
  config.data[field] = "my/data"
  with pytest.raises(ValueError, match=f"^the demo trains on data it makes, so config.data.{field}=my/data would not"):
    demo_data.prepare(config, tmp_path)
  assert not list(tmp_path.iterdir())


def test_demo_trains_evaluates_the_control_and_draws_its_pictures(runs):
  workdir, result, _ = runs
  config = demo_config.get_config("small=True")
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["num_videos"] == config.demo.num_test
  assert 0 <= results["top1"] <= 1 and 0 <= results["single_frame_top1"] <= 1
  assert np.sum(results["confusion_matrix"]) == config.demo.num_test
  for picture in (report.CURVES_FILE, report.CONFUSION_FILE):
    assert (workdir / picture).read_bytes()[:4] == b"\x89PNG"
  assert (workdir / "demo_data" / demo_data.MANIFEST).exists()
  assert f"Evaluating the model of step {results['step']} (1 clip x 1 crop)" in result.stdout.splitlines()
  # The summary table on stdout names the results and where everything is.
  assert "single-frame control top-1" in result.stdout and str(workdir / "eval_results.json") in result.stdout
  final = workdir / "checkpoints" / str(results["step"])
  assert (
    f"final model {final}".split() == next(line for line in result.stdout.splitlines() if "final model" in line).split()
  )
  # The workdir loads as a model: the parameters of its newest checkpoint.
  model = xclip_jax.load_pretrained(workdir)
  assert model.config.vision_layers == config.model.vision_layers
  saved = sharding.flat_names(ocp.PyTreeCheckpointer().restore(final.absolute() / "state")["params"])
  for name, value in sharding.flat_names(model.params).items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)


# `python -m xclip_jax.main` on the small demo as a user's terminal shows it (stdout not a terminal, as in CI).


def _main(workdir: pathlib.Path, *flags: str) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "xclip_jax.main", "--config=configs/demo.py:small=True", f"--workdir={workdir}"]
  return subprocess.run([*command, *flags], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The small demo, then the same command again with --verbosity=1 (it resumes at the last step, and evaluates
  again)."""
  workdir = tmp_path_factory.mktemp("runs") / "demo"
  quiet = _main(workdir)
  assert quiet.returncode == 0, quiet.stderr[-4000:]
  verbose = _main(workdir, "--verbosity=1")
  assert verbose.returncode == 0, verbose.stderr[-4000:]
  return workdir, quiet, verbose


def test_library_start_up_stays_off_the_terminal_and_goes_to_the_log(runs):
  workdir, quiet, verbose = runs
  log = (workdir / "logs" / "process_0.log").read_text()
  shown = [marker for marker in NOISE if marker in verbose.stderr]
  # orbax's always; JAX's and TensorFlow's where this machine's backends and CPU make them say something.
  assert "CheckpointManager init" in shown and "[Hyperparameters]" in shown
  for marker in shown:
    assert marker in log, marker
    assert marker not in quiet.stdout and marker not in quiet.stderr, marker
  # No log line at all on the quiet terminal: warnings and errors only, in a few words.
  assert all(line.startswith(("warning: ", "error: ")) for line in quiet.stderr.splitlines()), quiet.stderr
  # The second run appends to the log of the first.
  assert log.count("] Command line: ") == 2


def test_the_terminal_shows_the_run_its_progress_results_and_summary(runs):
  """Needs the trainer wired to the console (start block, progress, validation results)."""
  workdir, quiet, verbose = runs
  out = quiet.stdout
  for row in ("model", "parameters", "data", "devices", "workdir"):
    assert re.search(rf"^  {row} +\S", out, re.M), row
  assert f"full log    {workdir / 'logs' / 'process_0.log'}" in out
  progress = re.findall(
    r"^step (\d+)/6  epoch \d+\.\d\d  loss \d+\.\d{4}  lr \d\.\d\de[-+]\d\d  \d+\.\d clips/s  ETA \d\d:\d\d$", out, re.M
  )
  assert progress == ["1", "2", "3", "4", "5", "6"]  # small demo: a line every step
  assert re.findall(r"^step (\d): validation top-1 \d+\.\d%", out, re.M) == ["3", "6"]
  assert "single-frame control top-1" in out and str(workdir / "eval_results.json") in out
  assert re.search(r"^  resumed +from the checkpoint at step 6$", verbose.stdout, re.M)
