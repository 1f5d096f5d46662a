"""The benchmarks: the fresh-process timing, the train step's config, and what they may import (the measurements
themselves: test_throughput.py)."""

import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

from benchmarks import model as benchmark
from benchmarks import official_code
from benchmarks import train_step
from configs import common
from tests import test_layout

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_official_code_option_refuses_a_folder_that_is_not_the_official_x_clip(tmp_path):
  pytest.importorskip("torch")
  with pytest.raises(SystemExit, match="not the X-CLIP folder"):
    official_code.import_build_model(tmp_path)


@pytest.mark.parametrize(
  "args, message",
  [
    (["--mode=classify", "--labels=absent.csv"], "--labels=absent.csv: no such file or folder"),
    (["--official_code=absent"], "--official_code=absent: no such file or folder"),
    (["--mode=memory", "--frames=6"], "--frames=6: --mode=memory splits them over time = (1, 2, 4, 8)"),
  ],
)
def test_a_mistake_in_the_benchmarks_flags_is_one_line_before_anything_compiles(args, message):
  result = subprocess.run(
    [sys.executable, "-m", "benchmarks.model", *args], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 2 and result.stderr.splitlines()[-1] == f"error: {message}", result.stderr[-2000:]


def test_fresh_process_timing_reports_its_own_peak_memory_and_failures():
  held = bytearray(500 * 2**20)  # not to be counted: the child is forked from a small process
  seconds, peak_mb = benchmark._run_process([sys.executable, "-c", "b = bytearray(100 * 2**20)"], dict(os.environ))
  assert seconds > 0 and 100 < peak_mb < 300
  del held
  with pytest.raises(RuntimeError, match="failed \\(3\\):\n.*oops"):
    benchmark._run_process([sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"], dict(os.environ))


def test_train_step_config_has_the_experiment_defaults_of_configs_common():
  config = vars(train_step.step_config(frames=8, classes=400, batch=256))
  defaults = common.experiment_config().to_dict()
  # steps_per_epoch: None in configs/common.py (the trainer derives it from the data size).
  differing = {k: (v, defaults[k]) for k, v in config.items() if k != "steps_per_epoch" and v != defaults[k]}
  assert not differing


def test_the_official_train_step_gets_every_argument_it_takes_from_the_benchmark_options():
  options = {name: f"value of {name}" for name in inspect.signature(train_step.run_ours).parameters}
  arguments = train_step.official_arguments(options)
  code_dir, *taken = inspect.signature(train_step.run_official).parameters
  assert sorted(arguments) == sorted(taken)
  assert all(arguments[name] == options[name] for name in arguments)


def test_benchmarks_import_only_the_installed_packages_and_their_own_folder():
  # Of what test_layout forbids the installed packages (configs, tests, benchmarks, ../shared), all but themselves.
  problems = test_layout.repository_reach(test_layout.REPO, ["benchmarks"])
  assert [p for p in problems if not re.search(r": imports benchmarks(\.|$)", p)] == []
