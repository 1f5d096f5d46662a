"""What the speed benchmarks measure with: the matmul census and its FLOPs, the matmul floor, the device's peak rate,
and the `--batch=auto` search (run against made-up memory needs and failures here; for real in
test_device_check.py)."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import throughput


def test_matmul_census_finds_every_dot_with_its_shapes_and_flops():
  @jax.jit  # the census must look inside nested jaxprs
  def attention_like(x, w, q, k):
    return jnp.tanh(x @ w), jnp.einsum("bqd,bkd->bqk", q, k)

  args = (jnp.ones((4, 3)), jnp.ones((3, 5)), jnp.ones((2, 6, 8)), jax.ShapeDtypeStruct((2, 7, 8), jnp.float32))
  matmuls = throughput.matmuls(lambda *a: attention_like(*a), *args)
  assert [(lhs.shape, rhs.shape) for lhs, rhs, _ in matmuls] == [((4, 3), (3, 5)), ((2, 6, 8), (2, 7, 8))]
  flops = [throughput.flops(lhs.shape, rhs.shape, params["dimension_numbers"]) for lhs, rhs, params in matmuls]
  assert flops == [2 * 4 * 3 * 5, 2 * 2 * 6 * 7 * 8]
  assert throughput.census_flops(matmuls) == sum(flops)


def test_matmul_floor_times_every_contraction_however_the_operands_are_split():
  census = throughput.matmuls(
    lambda a, b: (a @ b) @ b.T, jnp.ones((64, 32), jnp.bfloat16), jnp.ones((32, 16), jnp.bfloat16)
  )
  assert [(lhs.dtype, rhs.shape) for lhs, rhs, _ in census] == [(jnp.bfloat16, (32, 16)), (jnp.bfloat16, (16, 32))]
  whole = throughput.matmul_only_seconds(census, repeats=2, max_operand_bytes=2**30)
  split = throughput.matmul_only_seconds(census, repeats=2, max_operand_bytes=1)  # one function per contraction
  assert whole > 0 and split > 0


def test_filled_values_are_spread_and_of_the_asked_dtype():
  small, wide = throughput.filled([jax.ShapeDtypeStruct((3, 5), jnp.bfloat16), jax.ShapeDtypeStruct((1000,), "f4")])
  assert small.dtype == jnp.bfloat16 and small.shape == (3, 5)
  assert float(jnp.abs(wide).max()) <= 1 and float(jnp.std(wide)) > 0.5


def test_peaks_come_from_datasheets_on_accelerators_and_a_timed_matmul_on_a_cpu():
  assert throughput.PEAK_FLOPS["NVIDIA H200"] == {"bfloat16": 989e12, "float32": 67e12}
  assert all(peaks["bfloat16"] >= peaks.get("float32", 0) for peaks in throughput.PEAK_FLOPS.values())
  peak, source = throughput.peak_flops("float32")
  assert peak > 1e8 and source.startswith("measured")


def _search(need, fails_above=None, available=1000, max_batch=1024):
  """largest_batch with `need(b)` bytes by the analysis and real steps that fail above `fails_above`; also returns
  the sizes whose real step ran."""
  ran = []

  def run(batch):
    ran.append(batch)
    if fails_above is not None and batch > fails_above:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate\nmore")

  return (*throughput.largest_batch(need, run, available, max_batch), ran)


def test_batch_search_starts_where_the_memory_analysis_line_meets_the_available_memory():
  batch, search, ran = _search(lambda b: 100 + 10 * b)  # 90 clips fit
  assert batch == 64 and ran == [64]
  assert search["next_batch"] == 96 and search["next_failure"].startswith("XLA's memory analysis: needs 0.00 GiB")


def test_batch_search_analyses_a_largest_size_allowed_of_at_most_16_alone_where_it_fits():
  """A line through two sizes' analyses could only say that the largest size fits (each analysis is a compile)."""
  analysed = []

  def need(b):
    analysed.append(b)
    return 100 + 10 * b

  batch, search, ran = _search(need, max_batch=4)
  assert batch == 4 and ran == [4] and analysed == [4]
  assert search["next_batch"] is None and search["next_failure"] == "--max_batch=4"
  assert _search(need, available=120, max_batch=4)[0] == 2  # 4 does not fit: the line through 3 and 4 finds 2


def test_batch_search_steps_down_past_sizes_whose_real_step_fails():
  batch, search, ran = _search(lambda b: 100 + 10 * b, fails_above=24)
  assert batch == 24 and ran == [64, 48, 32, 24]
  assert search == {
    "max_batch": 1024,
    "available_bytes": 1000,
    "next_batch": 32,
    "next_failure": "XLA: RESOURCE_EXHAUSTED: Out of memory while trying to allocate",
  }


def test_batch_search_walks_up_when_memory_grows_slower_than_its_line_and_stops_at_max_batch():
  batch, search, ran = _search(lambda b: 100 + 10 * min(b, 16) + b, max_batch=256)
  assert batch == 256 and search["next_batch"] is None and search["next_failure"] == "--max_batch=256"
  assert ran[0] < 256 and ran[-1] == 256


def test_batch_search_says_why_when_nothing_fits():
  with pytest.raises(RuntimeError, match="not even batch 1 fits: XLA's memory analysis"):
    _search(lambda b: 2000 + b)
