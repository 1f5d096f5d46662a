"""The train-step benchmark behind `python -m benchmarks.model --mode=train`.

Each side runs in a fresh process of its own, so that its peak resident memory is its own: ours (the sharded,
donated step of `xclip_jax.train.step`, Mixup/CutMix on device) and, with `--official_code`, the official step built from
the same weights by its own code (`build_model`, `build_optimizer`, `CutmixMixupBlending`, soft-target loss,
`backward`, `optimizer.step`). The two alternate, `rounds` times each, so that both see the same machine load.
"""

import json
import logging
import pathlib
import resource
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np

from benchmarks import official_code
from xclip_jax import pretrained
from xclip_jax.model import config as model_config
from xclip_jax.parallel import sharding
from xclip_jax.train import step as step_lib
from xclip_jax.weights import official


def step_config(frames: int, classes: int, batch: int) -> ml_collections.ConfigDict:
  """The fields of the experiment config (configs/common.py) that the train step reads, at the official defaults.

  Built here because the benchmarks import only the installed packages; tests/benchmarks checks it against
  configs/common.py. The schedule needs some `steps_per_epoch`; its value does not change the cost of a step.
  """
  return ml_collections.ConfigDict(
    dict(
      seed=0,
      num_frames=frames,
      num_classes=classes,
      batch_size=batch,
      accumulation_steps=1,
      freeze_text=True,
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
  )


def _setup(arch: str, frames: int, batch: int, classes: int, dtype: str, remat: bool):
  config = step_config(frames, classes, batch)
  model = pretrained.from_config(model_config.preset(arch, num_frames=frames, dtype=dtype, remat=remat))
  rng = np.random.default_rng(0)
  text_ids = rng.integers(1, model.config.vocab_size - 2, (classes, model.config.context_length), dtype=np.int32)
  text_ids[:, -1] = model.config.vocab_size - 1  # an end-of-text token for the argmax pooling
  return config, model, text_ids, rng


def _peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent that spawned it)."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def run_ours(arch, frames, batch, classes, dtype, steps, remat) -> dict:
  config, model, text_ids, rng = _setup(arch, frames, batch, classes, dtype, remat)
  mesh = sharding.make_mesh(config.mesh)
  state = step_lib.create_train_state(config, model, text_ids, mesh)
  del model  # the state holds the parameters
  step = step_lib.make_sharded_step(state, mesh)
  size = model_config.PRESETS[arch]["image_resolution"]
  batches = [
    sharding.global_batch(
      {
        "video": rng.standard_normal((batch, frames, size, size, 3), dtype=np.float32),
        "label": rng.integers(0, classes, batch).astype(np.int32),
      },
      mesh,
    )
    for _ in range(2)
  ]
  start = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  first_call_s = time.perf_counter() - start
  times = []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return {"median_s": float(np.median(times)), "first_call_s": first_call_s, "peak_rss_mb": _peak_rss_mb()}


def run_official(code_dir, arch, frames, batch, classes, steps) -> dict:
  """The official training step on the same weights: FIX_TEXT, its optimiser groups, Mixup/CutMix, fp32."""
  import torch

  code_dir = pathlib.Path(code_dir).absolute()
  build_model = official_code.import_build_model(code_dir)
  optimizer_lib, blending = official_code.import_train_parts(code_dir)

  config, model, text_ids, rng = _setup(arch, frames, batch, classes, "float32", False)
  state_dict = {k: torch.from_numpy(np.array(v)) for k, v in official.official_from_params(model.params).items()}
  del model
  official_model = build_model(
    state_dict,
    T=frames,
    prompts_alpha=0.1,
    prompts_layers=2,
    mit_layers=1,
    use_cache=True,
    logger=logging.getLogger("official"),
  )
  del state_dict
  official_model.train()
  settings = types.SimpleNamespace(
    MODEL=types.SimpleNamespace(FIX_TEXT=True),
    TRAIN=types.SimpleNamespace(WEIGHT_DECAY=config.weight_decay, LR=config.lr),
  )
  optimizer = optimizer_lib.build_optimizer(settings, official_model)
  mixup = blending.CutmixMixupBlending(
    num_classes=classes, smoothing=config.label_smoothing, mixup_alpha=config.mixup, cutmix_alpha=config.cutmix
  )
  size = model_config.PRESETS[arch]["image_resolution"]
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
    "median_s": float(np.median(times)),
    "first_call_s": first_call_s,
    "peak_rss_mb": _peak_rss_mb(),
    "torch_threads": torch.get_num_threads(),
  }


def side_by_side(options: dict, official_code: str | None, rounds: int) -> dict:
  """Runs each side in fresh processes, alternating; returns both sides' figures (medians over rounds)."""
  sides = ["ours"] + (["official"] if official_code else [])
  runs = {side: [] for side in sides}
  for _ in range(rounds):
    for side in sides:
      request = {"side": side, "official_code": official_code, **options}
      result = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", json.dumps(request)],
        capture_output=True,
        text=True,
        check=False,
      )
      if result.returncode:
        raise RuntimeError(f"the {side} train benchmark failed:\n{result.stderr[-3000:]}")
      runs[side].append(json.loads(result.stdout.strip().splitlines()[-1]))
      print(f"{side}: {runs[side][-1]}", file=sys.stderr, flush=True)  # each run as it ends
  summary = {"mode": "train", **options, "device": str(jax.devices()[0].device_kind), "rounds": rounds}
  for side, results in runs.items():
    prefix = "" if side == "ours" else "official_"
    summary[f"{prefix}median_s"] = float(np.median([r["median_s"] for r in results]))
    summary[f"{prefix}peak_rss_mb"] = float(max(r["peak_rss_mb"] for r in results))
    summary[f"{prefix}runs"] = results
  if official_code:
    summary["time_ratio"] = summary["median_s"] / summary["official_median_s"]
    summary["memory_ratio"] = summary["peak_rss_mb"] / summary["official_peak_rss_mb"]
  return summary


def _child(request: dict):
  side = request.pop("side")
  code_dir = request.pop("official_code")
  if side == "ours":
    result = run_ours(**request)
  else:
    request.pop("dtype")
    request.pop("remat")
    result = run_official(code_dir, **request)
  print(json.dumps(result))


if __name__ == "__main__":
  _child(json.loads(sys.argv[1]))
