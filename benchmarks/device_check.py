r"""One command for a machine with an accelerator: the official model's outputs on the device, then speed, as one JSON
document.

  python -m benchmarks.device_check            # one GPU or TPU chip: within --budget_s (default 450 s)
  python -m benchmarks.device_check --small    # everything shrunk, for a CPU: about a minute

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
A part gets a share of the budget plus what earlier parts left; one that fails or overruns reports {"error": ...},
one with under 10 s left {"skipped": ...}. --small: the tiny model (`throughput.TINY`; remat for train_l14), 4 frames,
4 classes, batch 4 (train_b16: --batch=auto up to 4), compiled without LLVM's costly optimisations.

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
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

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
    with jax.default_matmul_precision(precision):
      forward = jax.jit(functools.partial(golden_tiny.forward, config.replace(dtype=dtype)))
      outputs = jax.device_get(forward(params, io["video"], io["text_features"]))
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
  part = dict(part)
  kind = part.pop("part")
  if kind == "golden":
    return golden_parity()
  if kind == "train":
    from benchmarks import train_step  # pylint: disable=g-import-not-at-top

    return train_step.run_ours(**part)
  from benchmarks import eval_forward  # pylint: disable=g-import-not-at-top

  return eval_forward.eval_benchmark(**part)


def _child(part: dict, timeout_s: float, env: dict) -> dict:
  command = [sys.executable, "-m", "benchmarks.device_check", f"--part={json.dumps(part)}"]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"did not finish within its {timeout_s:.0f} s of the budget"}
  if done.returncode:
    return {"error": f"exit status {done.returncode}", "stderr_tail": done.stderr[-3000:]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def check(small: bool, budget_s: float) -> dict:
  start = time.perf_counter()
  report = {"small": small, "budget_s": budget_s}
  env = dict(os.environ)
  if small:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_SMALL_XLA_FLAGS}".strip()
  deadline = start
  for name, share, part, small_changes in PARTS:
    deadline += share * budget_s
    part = {**part, **small_changes} if small else part
    left = deadline - time.perf_counter()
    report[name] = _child(part, left, env) if left >= 10 else {"skipped": f"{left:.0f} s of the budget left"}
    print(f"{name}: {json.dumps(report[name])}", file=sys.stderr, flush=True)  # each part as it ends
  report["device_kind"] = next((report[n]["device_kind"] for n, *_ in PARTS if "device_kind" in report[n]), None)
  report["total_s"] = time.perf_counter() - start
  return report


def main(argv):
  del argv
  if FLAGS.part:
    print(json.dumps(run_part(json.loads(FLAGS.part))))
  else:
    print(json.dumps(check(FLAGS.small, FLAGS.budget_s), indent=1))


if __name__ == "__main__":
  flags.DEFINE_bool("small", False, "Shrink every part to run on a CPU in about a minute.")
  flags.DEFINE_float("budget_s", 450, "Seconds for all the parts together (each gets a share and what others left).")
  flags.DEFINE_string("part", None, "Internal: run one part (JSON) in this process and print its result.")
  app.run(main)
