"""The benchmark: its matmul census, which the matmul-only floor is built from, and its fresh-process timing."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import model as benchmark


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
    benchmark.import_official_build_model(tmp_path)


def test_fresh_process_timing_reports_its_own_peak_memory_and_failures():
  held = bytearray(500 * 2**20)  # not to be counted: the child is forked from a small process
  seconds, peak_mb = benchmark._run_process([sys.executable, "-c", "b = bytearray(100 * 2**20)"], dict(os.environ))
  assert seconds > 0 and 100 < peak_mb < 300
  del held
  with pytest.raises(RuntimeError, match="failed \\(3\\):\n.*oops"):
    benchmark._run_process([sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"], dict(os.environ))
