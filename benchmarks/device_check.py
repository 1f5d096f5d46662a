r"""One command for a machine with an accelerator: the official model's outputs on the device, then speed, as one JSON
document.

  python -m benchmarks.device_check            # one GPU or TPU chip: within --budget_s (default 450 s)
  python -m benchmarks.device_check --small    # everything shrunk, for a CPU: about a minute
  python -m benchmarks.device_check --tune --budget_s=540   # and the train step's tuning variants side by side

Run from the repository root. Each part runs in a fresh process, so that its device memory, peak included, is its
own (and the orchestrating process never takes the accelerator):
  golden     the official tiny X-CLIP (`benchmarks.golden_tiny`: weights and outputs of the official code, stored in
             the repository) on the device against the official outputs, the largest error of each output: float32
             with full-precision matmuls within ../shared/golden's bound (|error| <= 1e-4 + 1e-4 |official|), float32
             at XLA's default matmul precision (TF32 on recent NVIDIA GPUs) within 1% of each output's largest
             magnitude, bfloat16 within 3% (a CPU gives 4e-6 absolute, the same, and at most 0.8%)
  train_b16  the train step (`benchmarks.train_step`) of ViT-B/16, 8 frames, bfloat16, frozen text, 400 classes at
             --batch=auto: clips/s, MFU, memory, compile time, its matmul floor, and where two more steps' time
             goes besides the matmuls (`benchmarks.step_profile`: on a GPU, through the trace's `hlo_op` names)
  eval_b16   the evaluation forward (`benchmarks.eval_forward`) of the same model at batch 64: clips/s, compile time
  train_l14  the train step of ViT-L/14 likewise, with remat (as the official recipe trains ViT-L), without the floor
With --tune, one more part, for tuning on the device at hand:
  tune_b16   train_b16's step again at the batch train_b16 found (no floor, no profile), each variant in TUNE_VARIANTS
             for the backend (the attention implementation, XLA flags) in a fresh process beside a baseline run the
             same way: step time, clips/s, MFU, memory, compile time, and each variant's speed-up over the baseline
--parts runs some of the parts only (tune_b16 needs train_b16). A part gets its share of the budget (the shares of
the parts run, scaled to the budget) plus what earlier parts left; one that fails or overruns reports {"error": ...},
one with under 10 s left {"skipped": ...}. A speed part that fails runs again with XLA's attention in what its
budget has left (on a GPU `auto` runs cuDNN's fused kernel, not yet proven on one), keeping the first failure
under "failed_with_attention_auto"; a golden case that fails reports its error beside the others' results. Each
part's result goes to stderr as it ends, and a summary of them all last. --small: the tiny model (`throughput.TINY`;
remat for train_l14), 4 frames, 4 classes, batch 4 (train_b16: --batch=auto up to 4), compiled without LLVM's costly
optimisations.

What it imports. The machines it is for have jax, flax, optax, orbax-checkpoint, einops, absl-py, numpy and
safetensors (with their own dependencies: xclip_jax also imports etils, which orbax-checkpoint requires, and
ml_dtypes, which jax requires), but not TensorFlow, tensorflow-datasets, clu, ml_collections, PyAV, ftfy or regex,
and the check imports none of those: the tokenizer imports ftfy and regex only when it first tokenizes, which no part
does, and xclip_jax.train names ml_collections in annotations only. tests/benchmarks/test_device_check.py runs
`--small` with those seven made unimportable. So no wheel needs carrying along. Were a small pure-Python dependency
missing there (einops, say): `pip download --no-deps -d .whl/ einops==0.8.2` here, carry `.whl`, and run
`PYTHONPATH=$(ls -d .whl/*.whl | paste -sd:) python -m benchmarks.device_check`.
"""

import functools
import json
import math
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from xclip_jax import host_memory

FLAGS = flags.FLAGS

_TRAIN = dict(part="train", frames=8, batch="auto", classes=400, dtype="bfloat16", steps=5, freeze_text=True)
_SMALL = dict(arch="tiny", frames=4, classes=4)
# (name, share of the budget, what the child process runs, what --small changes)
PARTS = (
  ("golden", 0.1, {"part": "golden"}, {}),
  (
    "train_b16",
    0.35,
    {**_TRAIN, "arch": "ViT-B/16", "remat": False, "max_batch": None, "matmul_floor": True, "profile": True},
    {**_SMALL, "steps": 2, "max_batch": 4},
  ),
  (
    "eval_b16",
    0.15,
    {"part": "eval", "arch": "ViT-B/16", "frames": 8, "batch": 64, "classes": 400, "dtype": "bfloat16", "repeats": 10},
    {**_SMALL, "batch": 4, "repeats": 3},
  ),
  (
    "train_l14",
    0.4,
    {**_TRAIN, "arch": "ViT-L/14", "remat": True, "max_batch": None, "matmul_floor": False},
    {**_SMALL, "steps": 2, "batch": 4},
  ),
)
# (name, share of the budget): with --tune, after PARTS; its variants share it equally, baseline included.
TUNE = ("tune_b16", 0.5)
# The variants tune_b16 runs per backend, each against the baseline (attention "auto", no extra XLA flags):
# (name, changes to train_b16's part, XLA flags added).
TUNE_VARIANTS = {
  "gpu": (
    ("attention=xla", {"attention": "xla"}, ""),  # "auto" runs cuDNN's fused kernel on GPUs, where it runs
    ("latency_hiding_scheduler", {}, "--xla_gpu_enable_latency_hiding_scheduler=true"),
    ("no_triton_gemm", {}, "--xla_gpu_enable_triton_gemm=false"),  # cuBLAS for every matmul
    ("no_command_buffers", {}, "--xla_gpu_enable_command_buffer="),  # no CUDA graphs
  ),
  "tpu": (),
  "cpu": (
    ("attention=xla", {"attention": "xla"}, ""),  # "auto" runs the hand-written core on CPUs
    ("concurrency_optimized_scheduler", {}, "--xla_cpu_enable_concurrency_optimized_scheduler=true"),
  ),
}
# What each tune_b16 run reports.
_TUNE_FIELDS = (
  "step_s",
  "clips_per_s",
  "mfu",
  "peak_device_memory_bytes",
  "compile_s",
  "xla_flops_per_clip",
  "cudnn_attention_calls",
  "xla_flags",
)
# --small compiles as the test suite does, without LLVM's costly optimisations: on a CPU it checks the machinery.
_SMALL_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# (name, compute dtype, matmul precision, bound): "allclose" is rtol = atol = 1e-4, a number the largest error
# allowed as a fraction of the output's largest magnitude.
GOLDEN_CASES = (
  ("float32", "float32", "highest", "allclose"),
  ("float32_default_precision", "float32", "default", 0.01),
  ("bfloat16", "bfloat16", "default", 0.03),
)


# Each part imports the project's modules it needs, so the orchestrating process imports none of them.
def golden_parity() -> dict:
  from benchmarks import golden_tiny  # pylint: disable=g-import-not-at-top

  config, params, io = golden_tiny.load()
  result = {"device_kind": jax.devices()[0].device_kind}
  for name, dtype, precision, bound in GOLDEN_CASES:
    start = time.perf_counter()
    try:
      with jax.default_matmul_precision(precision):
        forward = jax.jit(functools.partial(golden_tiny.forward, config.replace(dtype=dtype)))
        outputs = jax.device_get(forward(params, io["video"], io["text_features"]))
    except Exception as error:  # one case's failure (a kernel that does not compile, say) leaves the others' results
      result[name] = {"passed": False, "error": f"{type(error).__name__}: {' '.join(str(error).split())[:2000]}"}
      continue
    errors = {key: float(np.abs(np.asarray(value, np.float32) - io[key]).max()) for key, value in outputs.items()}
    relative = {key: error / float(np.abs(io[key]).max()) for key, error in errors.items()}
    if bound == "allclose":
      passed = all(np.allclose(value, io[key], rtol=1e-4, atol=1e-4) for key, value in outputs.items())
      bound = "|error| <= 1e-4 + 1e-4 |official|, elementwise"
    else:
      passed = all(error <= bound for error in relative.values())
      bound = f"max |error| <= {bound} max |official|, per output"
    result[name] = dict(
      matmul_precision=precision,
      bound=bound,
      passed=passed,
      max_abs_error=errors,
      relative_error=relative,
      compile_and_run_s=time.perf_counter() - start,
    )
  return result


def run_part(part: dict) -> dict:
  """One part's result, with the XLA flags it ran under."""
  part = dict(part)
  kind = part.pop("part")
  if kind == "golden":
    result = golden_parity()
  elif kind == "train":
    from benchmarks import train_step  # pylint: disable=g-import-not-at-top

    result = train_step.run_ours(**part)
  else:
    from benchmarks import eval_forward  # pylint: disable=g-import-not-at-top

    result = eval_forward.eval_benchmark(**part)
  return {**result, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _child(part: dict, timeout_s: float, env: dict) -> dict:
  command = [sys.executable, "-m", "benchmarks.device_check", f"--part={json.dumps(part)}"]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"did not finish within its {timeout_s:.0f} s of the budget"}
  if done.returncode:
    return {"error": f"exit status {done.returncode}", "stderr_tail": done.stderr[-3000:]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def _with_xla_flags(env: dict, xla_flags: str) -> dict:
  return {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()} if xla_flags else env


def _with_xla_attention(failed: dict, part: dict, deadline: float, env: dict) -> dict:
  """A speed part that failed, run again with XLA's attention in what its budget has left: on a GPU, `auto` runs
  cuDNN's fused kernel, which no GPU run has proven yet, and a kernel that fails to compile would leave the check
  without figures. The first failure is kept in the result."""
  left = deadline - time.perf_counter()
  if left < 10:
    return failed
  return {**_child({**part, "attention": "xla"}, left, env), "failed_with_attention_auto": failed}


def tune(train: dict, part: dict, deadline: float, env: dict) -> dict:
  """train_b16's step at its batch, as a baseline and as each of TUNE_VARIANTS for its backend: fresh processes
  sharing the time to `deadline` equally (a variant's flags apply to its process only)."""
  if "batch" not in train:
    return {"skipped": "no batch from train_b16 (it failed, or was not among --parts)"}
  # The baseline as train_b16 ran (with XLA's attention if `auto` failed there); variants it already includes left out.
  part = dict(
    part, batch=train["batch"], max_batch=None, matmul_floor=False, profile=False, attention=train["attention"]
  )
  variants = [v for v in TUNE_VARIANTS.get(train["backend"], ()) if not (v[1] and v[1].items() <= part.items())]
  runs = (("baseline", {}, ""), *variants)
  result = {"batch": train["batch"], "backend": train["backend"], "variants": {}}
  for done, (name, changes, xla_flags) in enumerate(runs):
    left = (deadline - time.perf_counter()) / (len(runs) - done)
    if left < 10:
      run = {"skipped": f"{left:.0f} s of the budget left"}
    else:
      run = _child({**part, **changes}, left, _with_xla_flags(env, xla_flags))
    if "step_s" in run:
      run = {field: run[field] for field in _TUNE_FIELDS}
    result["variants"][name] = {"changes": changes, "added_xla_flags": xla_flags, **run}
    print(f"tune_b16 {name}: {json.dumps(result['variants'][name])}", file=sys.stderr, flush=True)
  baseline = result["variants"]["baseline"].get("step_s")
  timed = {name: run["step_s"] for name, run in result["variants"].items() if "step_s" in run}
  if baseline:
    for name, step_s in timed.items():
      result["variants"][name]["speedup"] = baseline / step_s
  result["fastest"] = min(timed, key=timed.get) if timed else None
  return result


def check(small: bool, budget_s: float, parts=tuple(name for name, *_ in PARTS), with_tune: bool = False) -> dict:
  """The PARTS named in `parts`, then tune_b16 with `with_tune`, within `budget_s`."""
  start = time.perf_counter()
  report = {"small": small, "budget_s": budget_s}
  # The parts' processes use glibc's huge pages where the training command would (`xclip_jax.host_memory`).
  env = _with_xla_flags(host_memory.as_training_runs(os.environ), _SMALL_XLA_FLAGS if small else "")
  chosen = [entry for entry in PARTS if entry[0] in parts]
  scale = budget_s / (sum(share for _, share, *_ in chosen) + (TUNE[1] if with_tune else 0))
  deadline = start
  for name, share, part, small_changes in chosen:
    deadline += share * scale
    part = {**part, **small_changes} if small else part
    left = deadline - time.perf_counter()
    report[name] = _child(part, left, env) if left >= 10 else {"skipped": f"{left:.0f} s of the budget left"}
    if "error" in report[name] and part["part"] != "golden" and part.get("attention", "auto") == "auto":
      report[name] = _with_xla_attention(report[name], part, deadline, env)
    print(f"{name}: {json.dumps(report[name])}", file=sys.stderr, flush=True)  # each part as it ends
  if with_tune:
    name, share = TUNE
    _, _, part, small_changes = PARTS[1]  # train_b16's
    part = {**part, **small_changes} if small else part
    report[name] = tune(report.get("train_b16", {}), part, deadline + share * scale, env)
  report["device_kind"] = next(
    (r["device_kind"] for r in report.values() if isinstance(r, dict) and "device_kind" in r), None
  )
  report["total_s"] = time.perf_counter() - start
  return report


def _not_run(result: dict) -> str | None:
  """Why a part or variant has no numbers ("error: ...", "skipped: ..."), or None."""
  reason = next((key for key in ("error", "skipped") if key in result), None)
  return reason and f"{reason}: {result[reason]}"


def summary(report: dict) -> str:
  """The report's headline numbers, a line per part (and per tuning variant), for a person reading a terminal."""
  lines = [f"device_check on {report['device_kind']}, {report['total_s']:.0f} s"]
  for name, result in report.items():
    if not isinstance(result, dict):
      continue
    if _not_run(result):
      lines.append(f"{name:<11} {_not_run(result)}")
    elif name == "golden":
      cases = [(case, result[case]) for case, *_ in GOLDEN_CASES]
      lines.append(f"{name:<11} " + ", ".join(f"{case} {'passed' if c['passed'] else 'FAILED'}" for case, c in cases))
    elif name == "tune_b16":
      lines.append(f"{name:<11} batch {result['batch']}, fastest: {result['fastest']}")
      for variant, run in result["variants"].items():
        timing = _not_run(run) or f"{run['step_s']:.4f} s a step, x{run.get('speedup', float('nan')):.3f}"
        lines.append(f"  {variant:<34} {timing}")
    else:
      memory = result.get("peak_device_memory_bytes") or 0
      mfu = "-" if result.get("mfu") is None else f"{result['mfu']:.3f}"
      retried = "  (XLA's attention: failed with auto)" if "failed_with_attention_auto" in result else ""
      lines.append(
        f"{name:<11} batch {result['batch']}  {result['clips_per_s']:.1f} clips/s  MFU {mfu}  "
        f"peak {memory / 2**30:.1f} GiB  compile {result['compile_s']:.0f} s{retried}"
      )
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.part:
    print(json.dumps(run_part(json.loads(FLAGS.part))))
  else:
    report = check(FLAGS.small, FLAGS.budget_s, FLAGS.parts, FLAGS.tune)
    print(json.dumps(report, indent=1))
    print(summary(report), file=sys.stderr)  # last, where a terminal's tail shows it
    return exit_status(report)


def exit_status(report: dict) -> int:
  """1 where the golden part ran and the device did not reproduce the official outputs, else 0 (speed parts that
  fail are reported in the JSON: the numbers of the others still stand)."""
  golden = report.get("golden")
  if golden is None or "skipped" in golden:
    return 0
  return int("error" in golden or not all(golden[case]["passed"] for case, *_ in GOLDEN_CASES))


if __name__ == "__main__":
  flags.DEFINE_bool("small", False, "Shrink every part to run on a CPU in about a minute.")
  flags.DEFINE_float("budget_s", 450, "Seconds for all the parts together (each gets a share and what others left).")
  flags.register_validator("budget_s", lambda seconds: 0 < seconds < math.inf, "must be a number of seconds above 0")
  flags.DEFINE_bool("tune", False, "Then run tune_b16: train_b16's step as each of TUNE_VARIANTS, side by side.")
  flags.DEFINE_list("parts", [name for name, *_ in PARTS], "The parts to run, in their usual order whatever this one.")
  flags.register_validator(
    "parts", lambda names: set(names) <= {name for name, *_ in PARTS}, f"each a part: {[name for name, *_ in PARTS]}"
  )
  flags.DEFINE_string("part", None, "Internal: run one part (JSON) in this process and print its result.")
  app.run(main)
