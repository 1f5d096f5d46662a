"""What the speed benchmarks share: FLOP counts, the device's peak rate and memory, the matmul floor, `--batch=auto`.

FLOPs per clip are counted two ways:
  model (`model_flops_per_clip`, analytic): the matmul census of the traced forward (`matmuls`: every dot_general with
    its shapes, 2 x m x n x k each). Inference: the forward's. Training: 3 x the forward's, since each contraction's
    backward is two contractions of its size (the gradient of each operand), less the gradient of the patch
    embedding's input, which the video does not need. Recomputation is not counted (remat's forward, the attention
    logits the hand-written core recomputes in its backward pass): MFU counts the model's FLOPs, not the hardware's
    (PaLM, Chowdhery et al. 2022, appendix B).
  XLA (`xla_flops_per_clip`): `compiled.cost_analysis()["flops"]` of the compiled program: every floating-point
    operation it runs, elementwise ones, the optimiser update and recomputation included.
`mfu` is model FLOPs per second over the device's dense peak for the compute dtype (`PEAK_FLOPS`); on a CPU, over
the machine's own dense matmul rate, timed here (`measured_matmul_flops_per_s`).
"""

import collections
import functools
import math
import pathlib
import re
import time

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from xclip_jax.model import config as model_config
from xclip_jax.weights import official

# A few-second X-CLIP for runs on a CPU (`--arch=tiny`, `device_check --small`): 65 tokens per frame, enough for
# matrix multiplies to dominate its FLOPs as they do a real model's.
TINY = dict(
  embed_dim=64,
  image_resolution=64,
  vision_layers=2,
  vision_width=128,
  vision_patch_size=8,
  transformer_width=64,
  transformer_heads=1,
  transformer_layers=1,
)
ARCHS = {**model_config.PRESETS, "tiny": TINY}

# Dense (not sparse) peak FLOP/s per chip by `device_kind`, from the vendors' datasheets: NVIDIA's H100/H200 SXM pages
# (bf16 1,979 TFLOPS with sparsity, so 989 dense; fp32 67), A100 datasheet (312; 19.5), L4 datasheet (242 with
# sparsity, so 121; fp32 30.3); Google Cloud's TPU system architecture pages (bf16: v4 275, v5e 197, v5p 459, v6e
# 918; no fp32 figure: the MXU multiplies bf16). The fp32 figures are CUDA-core rates: where XLA runs float32 matmuls
# as TF32 on tensor cores (its default precision on Ampere and later), an fp32 MFU can exceed 1.
_H100 = {"bfloat16": 989e12, "float32": 67e12}
_A100 = {"bfloat16": 312e12, "float32": 19.5e12}
PEAK_FLOPS = {
  "NVIDIA H100 80GB HBM3": _H100,
  "NVIDIA H200": _H100,
  "NVIDIA A100-SXM4-40GB": _A100,
  "NVIDIA A100-SXM4-80GB": _A100,
  "NVIDIA L4": {"bfloat16": 121e12, "float32": 30.3e12},
  "TPU v4": {"bfloat16": 275e12},
  "TPU v5 lite": {"bfloat16": 197e12},
  "TPU v5": {"bfloat16": 459e12},
  "TPU v5p": {"bfloat16": 459e12},
  "TPU v6 lite": {"bfloat16": 918e12},
}

# Compiler options for programs compiled only to read their memory analysis: no LLVM optimisation, no GPU autotuning
# (buffer sizes are settled before either).
ANALYSIS_ONLY = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
  "xla_gpu_autotune_level": 0,
}

# --batch=auto tries these sizes: powers of 2 and 1.5 x powers of 2.
BATCH_LADDER = sorted({base * scale for base in (2, 3) for scale in (2**i for i in range(12))} | {1})


def architecture(arch: str, **overrides) -> model_config.XCLIPConfig:
  """The config of a preset backbone or of `tiny`."""
  return model_config.XCLIPConfig(**{**ARCHS[arch], **overrides})


def filled(avals, seed: int = 0, scale: float = 1.0, offsets=None) -> list[jax.Array]:
  """Arrays of these shapes and dtypes, of values spread over offset +- scale (sines of scaled indices), made on the
  device.

  Inputs for timing, whose values do not matter but should not be zeros (they run faster on GPUs). One compiled
  program makes them all: a random-number generator compiled per shape costs seconds per shape on a CPU.
  """
  offsets = offsets or [0.0] * len(avals)

  def make():
    return [
      (offset + scale * jnp.sin(jax.lax.iota(jnp.float32, math.prod(aval.shape)) * (0.7 + seed + i)))
      .reshape(aval.shape)
      .astype(aval.dtype)
      for i, (aval, offset) in enumerate(zip(avals, offsets))
    ]

  return jax.jit(make)()


def random_params(config: model_config.XCLIPConfig, seed: int = 0) -> dict:
  """Parameters of `config` spread over +-0.02 (`filled`), LayerNorm gains around 1: speed does not depend on them,
  and nothing as costly as the official initialisation is compiled."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(official.abstract_params(config))
  offsets = [1.0 if path[-1].key == "scale" else 0.0 for path, _ in leaves]
  return jax.tree.unflatten(treedef, filled([leaf for _, leaf in leaves], seed, 0.02, offsets))


def matmuls(fn, *args) -> list[tuple]:
  """(lhs aval, rhs aval, dot_general params) of every dot_general of fn's jaxpr, in program order.

  `args` may be arrays or ShapeDtypeStructs.
  """
  found = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append((eqn.invars[0].aval, eqn.invars[1].aval, eqn.params))
      for sub in jex.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def flops(lhs_shape, rhs_shape, dimension_numbers) -> int:
  """2 x batch x lhs free x rhs free x contracted sizes."""
  (_, rhs_contract), (_, rhs_batch) = dimension_numbers
  shared = math.prod(rhs_shape[j] for j in (*rhs_contract, *rhs_batch))
  return 2 * math.prod(lhs_shape) * math.prod(rhs_shape) // shared


def census_flops(census: list[tuple]) -> int:
  return sum(flops(lhs.shape, rhs.shape, params["dimension_numbers"]) for lhs, rhs, params in census)


def patch_embedding_flops(config: model_config.XCLIPConfig, clips: int) -> int:
  """The patch embedding's contraction (video patches x conv1 weight) for `clips` clips."""
  patch_values = 3 * config.vision_patch_size**2
  return 2 * clips * config.num_frames * config.num_patches * patch_values * config.vision_width


def train_model_flops(forward_flops: int, config: model_config.XCLIPConfig, clips: int) -> int:
  """Model FLOPs of a train step from its forward's matmul FLOPs (see the module docstring)."""
  return 3 * forward_flops - patch_embedding_flops(config, clips)


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):  # one dict per program in older JAX versions
    analysis = analysis[0]
  return float(analysis["flops"])


def median_seconds(call, repeats: int, warmup: int = 1) -> float:
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_only_seconds(census: list[tuple], repeats: int, max_operand_bytes: int) -> float:
  """Seconds of the census's contractions alone, a floor for any XLA formulation of the program on this device.

  Each distinct contraction (shapes, dtypes, dimension numbers: a model's identical layers repeat a few dozen) runs
  alone in a jit-compiled function, on operands made beforehand, as many at a time as fit in `max_operand_bytes`;
  the floor is the sum of their median times, each times how often the census has it.
  """
  counts = collections.Counter(
    (lhs, rhs, params["dimension_numbers"], params["precision"], params["preferred_element_type"])
    for lhs, rhs, params in census
  )
  chunks, size = [[]], 0
  for contraction in counts:
    lhs, rhs = contraction[:2]
    nbytes = lhs.size * lhs.dtype.itemsize + rhs.size * rhs.dtype.itemsize
    if chunks[-1] and size + nbytes > max_operand_bytes:
      chunks.append([])
      size = 0
    chunks[-1].append(contraction)
    size += nbytes
  total = 0.0
  for chunk in chunks:
    operands = filled([aval for lhs, rhs, *_ in chunk for aval in (lhs, rhs)], seed=1)
    for i, (lhs, rhs, dimension_numbers, precision, preferred) in enumerate(chunk):
      contract = jax.jit(
        functools.partial(
          jax.lax.dot_general,
          dimension_numbers=dimension_numbers,
          precision=precision,
          preferred_element_type=preferred,
        )
      )
      call = functools.partial(contract, operands[2 * i], operands[2 * i + 1])
      total += counts[(lhs, rhs, dimension_numbers, precision, preferred)] * median_seconds(call, repeats)
    del operands  # freed before the next chunk's are made
  return total


def measured_matmul_flops_per_s(dtype: str, size: int = 1024, repeats: int = 5) -> float:
  """This machine's dense matmul rate: a (size x size) x (size x size) product in `dtype`, median of `repeats`."""
  a, b = filled([jax.ShapeDtypeStruct((size, size), np.dtype(dtype))] * 2, seed=2)
  product = jax.jit(lambda a, b: a @ b)
  return 2 * size**3 / median_seconds(lambda: product(a, b), repeats)


def peak_flops(dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s of device 0 in `dtype`, where the figure comes from); None where no figure is known."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return measured_matmul_flops_per_s(dtype), f"measured: a 1024^3 {dtype} matmul on this CPU"
  peak = PEAK_FLOPS.get(device.device_kind, {}).get(dtype)
  if peak is None:
    return None, f"no {dtype} peak known for {device.device_kind!r} (benchmarks/throughput.py PEAK_FLOPS)"
  return peak, f"datasheet: {device.device_kind} dense {dtype}"


def _proc_status_kb(field: str, path: str = "/proc/self/status") -> int:
  match = re.search(rf"^{field}:\s+(\d+) kB", pathlib.Path(path).read_text(), re.MULTILINE)
  return int(match.group(1))


def peak_memory_bytes() -> int:
  """Device 0's peak bytes in use (GPU, TPU); on a CPU, this process's peak resident memory (VmHWM)."""
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return _proc_status_kb("VmHWM") * 1024


def free_memory_bytes() -> int:
  """What device 0 can still allocate; on a CPU, the machine's available memory (MemAvailable)."""
  stats = jax.devices()[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats["bytes_in_use"])
  return _proc_status_kb("MemAvailable", "/proc/meminfo") * 1024


def needed_bytes(compiled) -> int:
  """Device memory a compiled program needs by XLA's memory analysis: arguments, outputs not aliased to them, temps."""
  memory = compiled.memory_analysis()
  return int(
    memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + memory.temp_size_in_bytes
  )


def largest_batch(analyse, run, available_bytes: int, max_batch: int | None) -> tuple[int, dict]:
  """The largest size of `BATCH_LADDER` up to `max_batch` (None: 8 on a CPU, 1024 on an accelerator) that fits and
  runs, and {max_batch, available_bytes, next_batch, next_failure}: the bounds, the next size and why it does not.

  analyse(b): bytes XLA's memory analysis gives for batch b (cheap compile); run(b): one real step at batch b,
  raising if it fails. The first size tried is where a line through the analysis of two sizes (up to 16) meets
  `available_bytes`, or the largest size allowed, if that is at most 16 and its analysis fits; from there the search
  walks up while sizes pass, or down until one does. A size passes when its analysis fits and its real step runs.
  """
  max_batch = max_batch or (8 if jax.devices()[0].platform == "cpu" else 1024)
  rungs = [b for b in BATCH_LADDER if b <= max_batch]
  bounds = {"max_batch": max_batch, "available_bytes": available_bytes}
  analyse = functools.cache(analyse)

  def failure(batch):
    try:
      need = analyse(batch)
      if need > available_bytes:
        return f"XLA's memory analysis: needs {need / 2**30:.2f} GiB, {available_bytes / 2**30:.2f} GiB available"
      run(batch)
    except jax.errors.JaxRuntimeError as e:  # out of memory while compiling or running
      return f"XLA: {str(e).splitlines()[0][:300]}"
    return None

  index = 0
  if len(rungs) > 1:
    large = max(i for i, b in enumerate(rungs) if b <= max(rungs[1], 16))  # probes large enough to be linear
    if large == len(rungs) - 1 and analyse(rungs[large]) <= available_bytes:
      index = large  # the largest size allowed fits: no line needed, nor the compile of a second probe
    else:
      slope = (analyse(rungs[large]) - analyse(rungs[large - 1])) / (rungs[large] - rungs[large - 1])
      if slope > 0:
        predicted = rungs[large] + (available_bytes - analyse(rungs[large])) / slope
        index = max([i for i, b in enumerate(rungs) if b <= predicted], default=0)
  reason = failure(rungs[index])
  if reason is None:
    next_batch, reason = None, f"--max_batch={max_batch}"
    for bigger in rungs[index + 1 :]:
      bigger_reason = failure(bigger)
      if bigger_reason:
        next_batch, reason = bigger, bigger_reason
        break
      index += 1
    return rungs[index], {**bounds, "next_batch": next_batch, "next_failure": reason}
  for smaller in reversed(rungs[:index]):
    smaller_reason = failure(smaller)
    if smaller_reason is None:
      return smaller, {**bounds, "next_batch": rungs[rungs.index(smaller) + 1], "next_failure": reason}
    reason = smaller_reason
  raise RuntimeError(f"not even batch {rungs[0]} fits: {reason}")
