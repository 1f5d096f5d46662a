"""The train-step benchmark behind `python -m benchmarks.model --mode=train`.

Each side runs in a fresh process of its own, so that its peak resident memory is its own: ours (the sharded,
donated step of `xclip_jax.train.step`, Mixup/CutMix on device) and, with `--official_code`, the official step built
from the same weights by its own code (`build_model`, `build_optimizer`, `CutmixMixupBlending`, soft-target loss,
`backward`, `optimizer.step`). The two alternate, `rounds` times each, so that both see the same machine load.

Ours reports (FLOPs and MFU as `benchmarks.throughput` counts them):
  step_s, clips_per_s        median time of `steps` steps after the first; batch / step_s
  compile_s, first_call_s    compiling the step; compiling it and running it once
  model_flops_per_clip, xla_flops_per_clip, peak_flops_per_s, peak_source, mfu
  host_memory                whether its large host allocations use huge pages (`xclip_jax.host_memory`: this
                             process runs as the training command does)
  matmul_only_s              the step's forward and backward contractions alone (every dot_general of the traced step,
                             recomputation included): its matmul floor; step_matmul_flops_per_clip, their FLOPs
  xla_memory_bytes           device memory the compiled step needs by XLA's memory analysis
  cudnn_attention_calls      cuDNN's fused attention kernels in the step, forward and backward (on a GPU, 0 where
                             `auto` found cuDNN declining and ran XLA's attention)
  peak_device_memory_bytes   device 0's peak bytes in use (the process's VmHWM on a CPU: the one process ran nothing
                             else); with batch "auto" it includes the sizes tried
  batch_search               with batch "auto": the largest batch that fits and runs (`throughput.largest_batch`), the
                             next size and why it does not
  profile                    with `profile`: two more steps traced, their time split into contractions, other work
                             running alone (by phase and by place in the model) and idle (`benchmarks.step_profile`)
"""

import functools
import json
import logging
import os
import pathlib
import resource
import subprocess
import sys
import time
import types

import jax
import numpy as np

from benchmarks import official_code
from benchmarks import step_profile
from benchmarks import throughput
from xclip_jax import host_memory
from xclip_jax import pretrained
from xclip_jax.model import xclip
from xclip_jax.parallel import sharding
from xclip_jax.train import step as step_lib
from xclip_jax.weights import official

# The custom calls of cuDNN's fused attention, as jax lowers them ("__cudnn$fmhaSoftmax", "...Backward").
_CUDNN_ATTENTION = "__cudnn$fmha"


def step_config(frames: int, classes: int, batch: int, freeze_text: bool = True) -> types.SimpleNamespace:
  """The fields of the experiment config (configs/common.py) that the train step reads, at the official defaults.

  Built here because the benchmarks import only the installed packages; tests/benchmarks checks it against
  configs/common.py. A namespace, not an ml_collections.ConfigDict: the step only reads attributes, and the device
  check runs where ml_collections is not installed. The schedule needs some `steps_per_epoch`; its value does not
  change the cost of a step.
  """
  return types.SimpleNamespace(
    seed=0,
    num_frames=frames,
    num_classes=classes,
    batch_size=batch,
    accumulation_steps=1,
    freeze_text=freeze_text,
    lr=8e-6,
    weight_decay=1e-3,
    new_modules_lr_multiplier=10.0,
    epochs=30,
    warmup_epochs=5,
    steps_per_epoch=1000,
    label_smoothing=0.1,
    mixup=0.8,
    cutmix=1.0,
    mixup_switch_prob=0.5,
    mesh={"data": -1, "fsdp": 1, "time": 1},
  )


def _setup(
  arch: str,
  frames: int,
  batch: int,
  classes: int,
  dtype: str,
  remat: bool,
  freeze_text: bool = True,
  attention: str = "auto",
):
  config = step_config(frames, classes, batch, freeze_text)
  architecture = throughput.architecture(arch, num_frames=frames, dtype=dtype, remat=remat, attention=attention)
  model = pretrained.XCLIPModel(architecture, throughput.random_params(architecture))
  rng = np.random.default_rng(0)
  return config, model, class_texts(architecture, classes, rng), rng


def class_texts(architecture, classes: int, rng) -> np.ndarray:
  """(classes, context length) token ids shaped like tokenized class names: a start token, 1 to 8 word tokens (as
  the Kinetics-400 names take), the end token, then padding."""
  ids = np.zeros((classes, architecture.context_length), np.int32)
  for row, words in zip(ids, rng.integers(1, 9, classes), strict=True):
    row[0] = architecture.vocab_size - 2
    row[1 : words + 1] = rng.integers(1, architecture.vocab_size - 2, words)
    row[words + 1] = architecture.vocab_size - 1  # the end token, whose position the text features are read at
  return ids


def _peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent that spawned it)."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def run_ours(
  arch,
  frames,
  batch,
  classes,
  dtype,
  steps,
  remat,
  freeze_text=True,
  max_batch=None,
  matmul_floor=True,
  profile=False,
  attention="auto",
) -> dict:
  """Our sharded train step: throughput, FLOPs, MFU, memory and its matmul floor; `batch` a number or "auto"; with
  `profile`, where two more steps' time goes (`benchmarks.step_profile`); `attention`, XCLIPConfig.attention."""
  config, model, text_ids, rng = _setup(arch, frames, 1, classes, dtype, remat, freeze_text, attention)
  architecture = model.config
  mesh = sharding.make_mesh(config.mesh)
  abstract_state, create_state = step_lib.plan_train_state(config, model, text_ids, mesh)
  del model  # the state will hold the parameters
  step = step_lib.make_sharded_step(abstract_state, mesh)
  size = architecture.image_resolution

  def abstract_batch(clips):
    return step_lib.abstract_batch(clips, frames, size, mesh)

  @functools.cache
  def batch_of(clips):  # every step's: only the state is donated
    (video,) = throughput.filled([jax.ShapeDtypeStruct((clips, frames, size, size, 3), np.float32)], seed=3)
    return {
      "video": jax.device_put(video, sharding.video_sharding(mesh)),
      "label": jax.device_put(rng.integers(0, classes, clips).astype(np.int32), sharding.batch_sharding(mesh)),
    }

  compiled, compile_s, first_call_s = {}, {}, {}

  def compile_for(clips):
    start = time.perf_counter()
    compiled[clips] = step_lib.compile_step(step, abstract_state, abstract_batch(clips))
    compile_s[clips] = time.perf_counter() - start

  def run(clips):
    """One real step at `clips` (compiled normally, as timed); a failed step may have consumed the donated state."""
    nonlocal state
    if clips not in compiled:
      compile_for(clips)
    start = time.perf_counter()
    try:
      state, metrics = compiled[clips](state, batch_of(clips))
      jax.block_until_ready(metrics)
    except jax.errors.JaxRuntimeError:
      batch_of.cache_clear()
      state = step_lib.create_train_state(
        config, pretrained.XCLIPModel(architecture, throughput.random_params(architecture)), text_ids, mesh
      )
      raise
    first_call_s[clips] = compile_s[clips] + time.perf_counter() - start

  if batch != "auto":
    compile_for(batch)  # before the state exists, as training does (step.compile_step)
  state = create_state()

  result = {"arch": arch, "frames": frames, "classes": classes, "dtype": dtype, "remat": remat, "attention": attention}
  result.update(freeze_text=freeze_text, device_kind=jax.devices()[0].device_kind, backend=jax.default_backend())
  if batch == "auto":
    resident = sum(x.nbytes for x in jax.tree.leaves(state))  # in the analysis's arguments, already allocated
    batch, search = throughput.largest_batch(
      lambda clips: throughput.needed_bytes(step.lower(state, abstract_batch(clips)).compile(throughput.ANALYSIS_ONLY)),
      run,
      throughput.free_memory_bytes() + resident,
      max_batch,
    )
    result["batch_search"] = search
  else:
    run(batch)

  def one_step():  # timed below, and traced with `profile`
    nonlocal state
    state, metrics = compiled[batch](state, batch_of(batch))
    jax.block_until_ready(metrics)

  times = []
  for _ in range(steps):
    start = time.perf_counter()
    one_step()
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))

  method = xclip.XCLIP.logits_from_features if freeze_text else xclip.XCLIP.__call__
  forward = functools.partial(xclip.XCLIP(architecture).apply, method=method)
  video = jax.ShapeDtypeStruct((batch, frames, size, size, 3), np.float32)
  forward_flops = throughput.census_flops(
    throughput.matmuls(forward, {"params": _abstract(state.params)}, video, state.text)
  )
  model_flops = throughput.train_model_flops(forward_flops, architecture, batch) / batch
  peak, peak_source = throughput.peak_flops(dtype)
  result.update(
    batch=batch,
    steps=steps,
    step_s=step_s,
    clips_per_s=batch / step_s,
    compile_s=compile_s[batch],
    first_call_s=first_call_s[batch],
    model_flops_per_clip=model_flops,
    xla_flops_per_clip=throughput.xla_flops(compiled[batch]) / batch,
    peak_flops_per_s=peak,
    peak_source=peak_source,
    mfu=None if peak is None else model_flops * batch / step_s / peak,
    xla_memory_bytes=throughput.needed_bytes(compiled[batch]),
    host_memory=host_memory.status(),
    cudnn_attention_calls=step.lower(state, abstract_batch(batch)).as_text().count(_CUDNN_ATTENTION),
  )
  # The step's peak, before the matmul floor's operands are made.
  result.update(peak_device_memory_bytes=throughput.peak_memory_bytes(), peak_rss_mb=_peak_rss_mb())
  if profile:
    result["profile"] = step_profile.profile(compiled[batch].as_text(), one_step)
  if matmul_floor:
    census = throughput.matmuls(step_lib.step_fn, _abstract(state), abstract_batch(batch))
    result["matmul_only_s"] = throughput.matmul_only_seconds(census, steps, throughput.free_memory_bytes() // 4)
    result["step_matmul_flops_per_clip"] = throughput.census_flops(census) / batch
  return result


def run_official(code_dir, arch, frames, batch, classes, steps, freeze_text=True) -> dict:
  """The official training step on the same weights: FIX_TEXT as `freeze_text`, its optimiser groups, Mixup/CutMix,
  fp32."""
  import torch

  code_dir = pathlib.Path(code_dir).absolute()
  build_model = official_code.import_build_model(code_dir)
  optimizer_lib, blending = official_code.import_train_parts(code_dir)

  config, model, text_ids, rng = _setup(arch, frames, batch, classes, "float32", False, freeze_text)
  state_dict = {k: torch.from_numpy(np.array(v)) for k, v in official.official_from_params(model.params).items()}
  size = model.config.image_resolution
  del model
  official_model = build_model(
    state_dict,
    T=frames,
    prompts_alpha=0.1,
    prompts_layers=2,
    mit_layers=1,
    use_cache=freeze_text,  # the class-text features computed once, as the official default with FIX_TEXT
    logger=logging.getLogger("official"),
  )
  del state_dict
  official_model.train()
  settings = types.SimpleNamespace(
    MODEL=types.SimpleNamespace(FIX_TEXT=freeze_text),
    TRAIN=types.SimpleNamespace(WEIGHT_DECAY=config.weight_decay, LR=config.lr),
  )
  optimizer = optimizer_lib.build_optimizer(settings, official_model)
  mixup = blending.CutmixMixupBlending(
    num_classes=classes, smoothing=config.label_smoothing, mixup_alpha=config.mixup, cutmix_alpha=config.cutmix
  )
  videos = [torch.from_numpy(rng.standard_normal((batch, frames, 3, size, size), dtype=np.float32)) for _ in range(2)]
  labels = [torch.from_numpy(rng.integers(0, classes, batch)) for _ in range(2)]
  texts = torch.from_numpy(text_ids.astype(np.int64))

  def step(i):
    images, soft_labels = mixup(videos[i % 2], labels[i % 2])
    output = official_model(images, texts)
    loss = torch.sum(-soft_labels * torch.nn.functional.log_softmax(output, dim=-1), dim=-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss

  start = time.perf_counter()
  step(0)
  first_call_s = time.perf_counter() - start
  times = []
  for i in range(steps):
    start = time.perf_counter()
    step(i)
    times.append(time.perf_counter() - start)
  return {
    "step_s": float(np.median(times)),
    "first_call_s": first_call_s,
    "peak_rss_mb": _peak_rss_mb(),
    "torch_threads": torch.get_num_threads(),
  }


def official_arguments(options: dict) -> dict:
  """The benchmark's options that the official step takes (it runs float32, without remat, at the given batch)."""
  return {key: options[key] for key in ("arch", "frames", "batch", "classes", "steps", "freeze_text")}


# Summaries of several fresh-process runs: the median of these, the largest of these, the first run's for the rest.
_MEDIAN_KEYS = ("step_s", "clips_per_s", "compile_s", "first_call_s", "mfu", "matmul_only_s", "peak_flops_per_s")
_MAX_KEYS = ("peak_rss_mb", "peak_device_memory_bytes")


def _summarise(results: list[dict]) -> dict:
  summary = dict(results[0])
  for key in _MEDIAN_KEYS:
    if results[0].get(key) is not None:
      summary[key] = float(np.median([r[key] for r in results]))
  for key in _MAX_KEYS:
    if key in results[0]:
      summary[key] = max(r[key] for r in results)
  return summary


def _environment(side: str) -> dict[str, str]:
  """Ours runs as `python -m xclip_jax.main` does, with glibc's huge-page tunable where it helps (`host_memory`); the
  official step as its own training runs, without it (which does not change its time here: 2.55-2.56 s with the
  tunable, 2.48-2.58 s without)."""
  return host_memory.as_training_runs(os.environ) if side == "ours" else dict(os.environ)


def side_by_side(options: dict, official_code: str | None, rounds: int) -> dict:
  """Runs each side in fresh processes, alternating; returns both sides' figures (medians over rounds)."""
  if official_code and options["batch"] == "auto":
    raise SystemExit("--batch=auto searches our step's batch alone; give --official_code a number")
  sides = ["ours"] + (["official"] if official_code else [])
  runs = {side: [] for side in sides}
  for _ in range(rounds):
    for side in sides:
      request = {"side": side, "official_code": official_code, **options}
      result = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", json.dumps(request)],
        env=_environment(side),
        capture_output=True,
        text=True,
        check=False,
      )
      if result.returncode:
        raise RuntimeError(f"the {side} train benchmark failed:\n{result.stderr[-3000:]}")
      runs[side].append(json.loads(result.stdout.strip().splitlines()[-1]))
      print(f"{side}: {runs[side][-1]}", file=sys.stderr, flush=True)  # each run as it ends
  summary = {"mode": "train", **options, **_summarise(runs["ours"]), "rounds": rounds, "runs": runs["ours"]}
  if official_code:
    official_summary = _summarise(runs["official"])
    summary.update({f"official_{key}": official_summary[key] for key in ("step_s", "first_call_s", "peak_rss_mb")})
    summary["official_runs"] = runs["official"]
    summary["time_ratio"] = summary["step_s"] / summary["official_step_s"]
    summary["memory_ratio"] = summary["peak_rss_mb"] / summary["official_peak_rss_mb"]
  return summary


def _child(request: dict):
  side = request.pop("side")
  code_dir = request.pop("official_code")
  if side == "ours":
    result = run_ours(**request)
  else:
    result = run_official(code_dir, **official_arguments(request))
  print(json.dumps(result))


if __name__ == "__main__":
  _child(json.loads(sys.argv[1]))
