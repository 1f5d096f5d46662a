"""The benchmarks: the matmul census, which the matmul-only floor is built from, the fresh-process timing, the train
step's config, and what they may import."""

import os
import re
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import model as benchmark
from benchmarks import official_code
from benchmarks import train_step
from configs import common
from tests import test_layout


def test_matmul_census_finds_every_dot_with_its_shapes_and_flops():
  @jax.jit  # the census must look inside nested jaxprs
  def attention_like(x, w, q, k):
    return jnp.tanh(x @ w), jnp.einsum("bqd,bkd->bqk", q, k)

  args = (jnp.ones((4, 3)), jnp.ones((3, 5)), jnp.ones((2, 6, 8)), jnp.ones((2, 7, 8)))
  matmuls = benchmark._matmuls(lambda *a: attention_like(*a), *args)
  assert [(lhs.shape, rhs.shape) for lhs, rhs, _ in matmuls] == [((4, 3), (3, 5)), ((2, 6, 8), (2, 7, 8))]
  flops = [benchmark._flops(lhs.shape, rhs.shape, params["dimension_numbers"]) for lhs, rhs, params in matmuls]
  assert flops == [2 * 4 * 3 * 5, 2 * 2 * 6 * 7 * 8]


def test_official_code_option_refuses_a_folder_that_is_not_the_official_x_clip(tmp_path):
  pytest.importorskip("torch")
  with pytest.raises(SystemExit, match="not the X-CLIP folder"):
    official_code.import_build_model(tmp_path)


def test_fresh_process_timing_reports_its_own_peak_memory_and_failures():
  held = bytearray(500 * 2**20)  # not to be counted: the child is forked from a small process
  seconds, peak_mb = benchmark._run_process([sys.executable, "-c", "b = bytearray(100 * 2**20)"], dict(os.environ))
  assert seconds > 0 and 100 < peak_mb < 300
  del held
  with pytest.raises(RuntimeError, match="failed \\(3\\):\n.*oops"):
    benchmark._run_process([sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"], dict(os.environ))


def test_train_step_config_has_the_experiment_defaults_of_configs_common():
  config = train_step.step_config(frames=8, classes=400, batch=256)
  defaults = common.experiment_config()
  # steps_per_epoch: None in configs/common.py (the trainer derives it from the data size).
  differing = {k: (v, defaults[k]) for k, v in config.items() if k != "steps_per_epoch" and v != defaults[k]}
  assert not differing


def test_benchmarks_import_only_the_installed_packages_and_their_own_folder():
  # Of what test_layout forbids the installed packages (configs, tests, benchmarks, ../shared), all but themselves.
  problems = test_layout.repository_reach(test_layout.REPO, ["benchmarks"])
  assert [p for p in problems if not re.search(r": imports benchmarks(\.|$)", p)] == []
