"""The one-command device check: its stored reference is the official code's output, and `--small` runs on a CPU as
the accelerator machines would run it: without the packages they lack, checking parity and reporting speed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import device_check
from benchmarks import golden_tiny
from xclip_jax import host_memory

# Packages the accelerator machines do not have. A sitecustomize first on PYTHONPATH makes them unimportable in the
# check and in every part's process: a finder first on sys.meta_path answers each of them, and each submodule, as
# the machines would, with ModuleNotFoundError.
ABSENT = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections", "av", "ftfy", "regex")
_SITECUSTOMIZE = f"""import importlib.abc
import sys

ABSENT = {ABSENT!r}


class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in ABSENT:
      raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the accelerator machines)", name=name)
    return None


sys.meta_path.insert(0, Absent())
"""


def test_stored_reference_is_the_official_codes_output(golden_dir):
  expected = golden_tiny.reference_arrays(golden_dir)
  with np.load(golden_tiny.FILE) as stored:
    assert sorted(stored) == sorted(expected)
    for name, value in expected.items():
      assert stored[name].dtype == value.dtype, name
      np.testing.assert_array_equal(stored[name], value, err_msg=name)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  """`device_check --small --tune`, run without the packages the accelerator machines lack."""
  site = tmp_path_factory.mktemp("absent_packages")
  (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
  # The parts' processes share the test session's compilation cache (jax reads the variable): tune_b16's baseline is
  # train_b16's step, compiled once.
  env["JAX_COMPILATION_CACHE_DIR"] = os.environ["XCLIP_JAX_TEST_SESSION_CACHE"]
  done = subprocess.run(
    [sys.executable, "-m", "benchmarks.device_check", "--small", "--tune", "--budget_s=1500"],
    capture_output=True,
    text=True,
    env=env,
    check=False,
    timeout=1800,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done


@pytest.fixture(scope="module")
def small_check(small_run):
  """Its JSON report."""
  return json.loads(small_run.stdout)


def test_small_check_runs_without_the_packages_the_accelerator_machines_lack(small_check):
  parts = ("golden", "train_b16", "eval_b16", "train_l14", "tune_b16")
  assert all("error" not in small_check[part] and "skipped" not in small_check[part] for part in parts), small_check


def test_small_check_reproduces_the_official_outputs_in_float32_and_bfloat16(small_check):
  golden = small_check["golden"]
  assert {case: golden[case]["passed"] for case in ("float32", "float32_default_precision", "bfloat16")} == {
    "float32": True,
    "float32_default_precision": True,
    "bfloat16": True,
  }
  assert max(golden["float32"]["max_abs_error"].values()) < 1e-4


def test_small_check_reports_speed_memory_and_the_batch_search(small_check):
  report = small_check
  assert report["device_kind"] == "cpu"
  for part in ("train_b16", "eval_b16", "train_l14"):
    result = report[part]
    assert result["dtype"] == "bfloat16" and result["batch"] == 4, part
    assert result["clips_per_s"] == pytest.approx(4 / result["step_s"])
    assert result["compile_s"] > 0 and result["peak_device_memory_bytes"] > 2**20
    assert result["peak_source"].startswith("measured") and 0 < result["mfu"] < 2
  search = report["train_b16"]["batch_search"]
  assert search["max_batch"] == 4 and search["next_batch"] is None and search["next_failure"] == "--max_batch=4"
  assert search["available_bytes"] > 2**20
  assert report["train_l14"]["remat"] and report["train_b16"]["matmul_only_s"] > 0
  assert report["train_b16"]["cudnn_attention_calls"] == 0  # a GPU's kernels, which `auto` never tries on a CPU
  profile = report["train_b16"]["profile"]
  assert profile["available"] and 0 < profile["matmul_s"] < profile["traced_s"], profile
  if host_memory.would_help(os.environ):  # the parts' host memory as the training command's
    assert report["train_b16"]["host_memory"].startswith("GLIBC_TUNABLES sets glibc.malloc.hugetlb=1"), report


def test_flop_counts_analytic_and_xla_agree(small_check):
  report = small_check
  for part in ("train_b16", "eval_b16"):
    result = report[part]
    assert result["xla_flops_per_clip"] == pytest.approx(result["model_flops_per_clip"], rel=0.1), part
  # 3 x the forward's matmuls less the video's gradient, plus the attention logits that the hand-written core
  # recomputes in its backward pass, is exactly the traced step's matmuls: for the tiny model (64 patches of width
  # 128 in 2 blocks, 4 frames, 4 classes, embed 64, 1 MIT layer, 2 prompt layers), per clip and block the frames'
  # 65 queries over 66 keys and the 4 message tokens over each other, the MIT's 4 frames, the prompts' 4 classes over
  # the 64 visual tokens; 2 FLOPs per multiply-add ...
  recomputed_logits = 2 * (2 * (4 * 65 * 66 * 128 + 4 * 4 * 128) + 4 * 4 * 64 + 2 * 4 * 64 * 64)
  train = report["train_b16"]
  assert train["step_matmul_flops_per_clip"] == train["model_flops_per_clip"] + recomputed_logits
  # ... and remat's recomputed forward is XLA's work, not the model's.
  assert report["train_l14"]["model_flops_per_clip"] == report["train_b16"]["model_flops_per_clip"]
  assert report["train_l14"]["xla_flops_per_clip"] > 1.2 * report["train_l14"]["model_flops_per_clip"]


def test_tuning_runs_each_variant_against_a_baseline_at_the_batch_found(small_check):
  tune = small_check["tune_b16"]
  assert tune["batch"] == small_check["train_b16"]["batch"] == 4 and tune["backend"] == "cpu"
  variants = tune["variants"]
  assert list(variants) == ["baseline", "attention=xla", "concurrency_optimized_scheduler"]
  assert all(run["step_s"] > 0 and run["clips_per_s"] == pytest.approx(4 / run["step_s"]) for run in variants.values())
  # Each variant's change reached its own process only: the flag ...
  scheduler = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
  assert [scheduler in run["xla_flags"] for run in variants.values()] == [False, False, True]
  assert all("--xla_llvm_disable_expensive_passes=true" in run["xla_flags"] for run in variants.values())
  # ... and the attention: jax's XLA attention keeps its probabilities for the backward pass, the hand-written core
  # recomputes its logits: in each of 2 blocks, at least the 4 frames' 65 x 66 of width 128, 2 FLOPs a multiply-add.
  recomputed = variants["baseline"]["xla_flops_per_clip"] - variants["attention=xla"]["xla_flops_per_clip"]
  assert recomputed >= 2 * 2 * 4 * 65 * 66 * 128
  speedups = {name: variants["baseline"]["step_s"] / run["step_s"] for name, run in variants.items()}
  assert {name: run["speedup"] for name, run in variants.items()} == pytest.approx(speedups)
  assert tune["fastest"] == max(speedups, key=speedups.get)


def test_a_summary_of_every_part_ends_the_output(small_run, small_check):
  summary = small_run.stderr.strip().splitlines()[-9:]
  assert summary[0].startswith("device_check on cpu, ")
  assert summary[1] == "golden      float32 passed, float32_default_precision passed, bfloat16 passed"
  train = small_check["train_b16"]
  assert summary[2].startswith(
    f"train_b16   batch 4  {train['clips_per_s']:.1f} clips/s  MFU {train['mfu']:.3f}  peak "
  )
  assert [line.split()[0] for line in summary[3:6]] == ["eval_b16", "train_l14", "tune_b16"]
  baseline = small_check["tune_b16"]["variants"]["baseline"]
  assert summary[6].split() == ["baseline", f"{baseline['step_s']:.4f}", "s", "a", "step,", "x1.000"]
  assert [line.split()[0] for line in summary[7:]] == ["attention=xla", "concurrency_optimized_scheduler"]


def test_speed_parts_that_fail_with_auto_attention_run_again_with_xlas_and_are_tuned_from_there(monkeypatch):
  """On a GPU `auto` runs cuDNN's fused attention, unproven there: a part that fails with it (a kernel that does not
  compile, say) runs again with XLA's, keeping the failure, and the tuning starts from what train_b16 ran."""
  runs = []

  def child(part, timeout_s, env):  # each part's process, as a GPU whose cuDNN attention fails to compile would run it
    runs.append((part["part"], part.get("attention", "auto"), env.get("XLA_FLAGS", "")))
    if part["part"] == "golden":
      cases = {case: {"passed": True} for case, *_ in device_check.GOLDEN_CASES}
      return dict(cases, device_kind="NVIDIA H200", bfloat16={"passed": False, "error": "XlaRuntimeError: cuDNN"})
    if part.get("attention", "auto") == "auto":
      return {"error": "exit status 1", "stderr_tail": "cuDNN graph failed to build"}
    numbers = dict(step_s=2.0, clips_per_s=4.0, mfu=0.4, peak_device_memory_bytes=2**30, compile_s=30.0)
    numbers.update(xla_flops_per_clip=1.0, cudnn_attention_calls=0, xla_flags=env.get("XLA_FLAGS", ""))
    return dict(numbers, device_kind="NVIDIA H200", backend="gpu", attention=part["attention"], batch=8)

  monkeypatch.setattr(device_check, "_child", child)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  report = device_check.check(small=False, budget_s=10_000, with_tune=True)
  for part in ("train_b16", "eval_b16", "train_l14"):
    assert report[part]["attention"] == "xla", part
    assert report[part]["failed_with_attention_auto"]["stderr_tail"] == "cuDNN graph failed to build", part
  tune = report["tune_b16"]
  assert list(tune["variants"]) == ["baseline", "latency_hiding_scheduler", "no_triton_gemm", "no_command_buffers"]
  assert [run for run in runs if run[0] == "golden"] == [("golden", "auto", "")]  # golden is not a speed part
  tuned = runs[-4:]
  assert [attention for _, attention, _ in tuned] == ["xla"] * 4
  assert [flags for _, _, flags in tuned] == ["", *(flags for _, _, flags in device_check.TUNE_VARIANTS["gpu"][1:])]
  summary = device_check.summary(report).splitlines()
  assert summary[1] == "golden      float32 passed, float32_default_precision passed, bfloat16 FAILED"
  assert summary[2].endswith("compile 30 s  (XLA's attention: failed with auto)")


def test_a_golden_case_that_fails_leaves_the_others_results(monkeypatch):
  forward = golden_tiny.forward

  def failing_in_bfloat16(config, *args):
    if config.dtype == "bfloat16":
      raise RuntimeError("cuDNN graph\nfailed to build")
    return forward(config, *args)

  monkeypatch.setattr(golden_tiny, "forward", failing_in_bfloat16)
  result = device_check.golden_parity()
  assert result["float32"]["passed"] and result["float32_default_precision"]["passed"]
  assert result["bfloat16"] == {"passed": False, "error": "RuntimeError: cuDNN graph failed to build"}


@pytest.mark.parametrize(
  "golden, status",
  [
    ({"float32": {"passed": True}, "float32_default_precision": {"passed": True}, "bfloat16": {"passed": True}}, 0),
    ({"float32": {"passed": True}, "float32_default_precision": {"passed": True}, "bfloat16": {"passed": False}}, 1),
    ({"error": "RuntimeError: no device"}, 1),
    ({"skipped": "5 s of the budget left"}, 0),
    (None, 0),  # --parts without golden
  ],
)
def test_the_exit_status_says_whether_the_device_reproduced_the_official_outputs(golden, status):
  report = {"train_b16": {"error": "out of memory"}} | ({} if golden is None else {"golden": golden})
  assert device_check.exit_status(report) == status
