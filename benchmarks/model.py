r"""Times X-CLIP and prints JSON: the evaluation forward pass (`--mode=eval`, the default), `classify` runs, the
train step (`--mode=train`), or the train step's memory and traffic with frames split over devices (`--mode=memory`).

  python -m benchmarks.model                      # ViT-B/32, 8 frames, batch 1, 400 classes, float32
  python -m benchmarks.model --arch=ViT-B/16 --frames=16 --batch=4 --dtype=bfloat16
  python -m benchmarks.model --official_code=VideoX/X-CLIP   # side by side with the official PyTorch model
  python -m benchmarks.model --mode=classify      # `python -m xclip_jax.classify` as a user runs it
  python -m benchmarks.model --mode=train --official_code=VideoX/X-CLIP   # the train step, side by side
  python -m benchmarks.model --mode=train --arch=ViT-B/16 --dtype=bfloat16 --batch=auto   # the largest batch
  python -m benchmarks.model --mode=train --profile   # and where the step's time goes besides its matmuls
  python -m benchmarks.model --mode=memory --arch=ViT-L/14-336 --frames=16   # time = 1, 2, 4, 8 on 8 CPU devices

Run from the repository root: benchmarks/ belongs to the repository, not to the installed package.

`--mode=memory`: compiles the sharded train step (abstract inputs, nothing allocated) on 8 forced CPU devices for
each size of the mesh's `time` axis and prints XLA's per-device memory and the bytes crossing `time` per step (see
`benchmarks.memory`).

`--mode=train`: the sharded train step of `xclip_jax.train.step` (ViT-B/32, 8 frames, batch 2, 400 cached class texts,
fp32, AdamW, frozen text, Mixup/CutMix on device) in fresh processes, alternating with the official step built by
the official code (see `benchmarks.train_step` for every figure): `step_s`, `clips_per_s`, FLOPs, `mfu`, memory and
`matmul_only_s` (its forward and backward contractions alone); `official_step_s` and `peak_rss_mb` for each side.
With `--profile`, `profile` says where two more steps' time goes: contractions, other work running alone (by phase
and place in the model), idle (`benchmarks.step_profile`).

`--mode=eval`: the class texts are encoded once beforehand (as in evaluation, where the official code caches them);
the timed call is the video encoder, the prompt generator and the logits, on a video already on the device. Weights
are arbitrary (`throughput.random_params`): speed does not depend on them. The JSON gives `step_s` (a call's median
time), `clips_per_s`, `compile_s`, `first_call_s` (compiling and one call), `model_flops_per_clip`,
`xla_flops_per_clip`, `mfu`, `peak_device_memory_bytes` (see `benchmarks.throughput`), `matmul_gflop` (the forward's
matrix multiplies, per call), and `matmul_only_s`: the time of those multiplies alone (every dot_general of the
traced forward, with its shapes, in jit-compiled functions of nothing else), a floor for any XLA formulation of the
model on this machine.

`--batch=auto` (eval, train): the largest batch per device that XLA's memory analysis fits in the device's free
memory and that then runs (`throughput.largest_batch`), up to `--max_batch` (default 8 on a CPU, 1024 on an
accelerator); `batch_search` names the next size and why it does not fit. `--arch=tiny` is a few-second model for
trying the benchmarks on a CPU.

With `--official_code` (the X-CLIP folder of a microsoft/VideoX checkout; needs PyTorch, e.g. `pip install
torch==2.13.0`), the official model is built with the same weights by its own `build_model`, its logits are checked
against ours, and the two forward passes are timed in alternation in one process, so that both see the same machine
load. The official eval forward runs under `torch.no_grad()` with its text cache filled, as in its `validate`.

`--mode=classify`: saves a randomly initialised `--arch` checkpoint and `--videos` synthetic 10 s, 340x256, 30 fps
H.264 videos (`benchmarks.synthetic_data`) to a temporary folder, then runs `python -m xclip_jax.classify` as a fresh
process on the `--labels` class names or, without `--labels`, on `--classes` generated names of the Kinetics-400
names' token lengths (so that encoding them costs the same): on one video with an empty
compilation cache (`cold_s`), again with the cache it left (`warm_s`), and on all the videos (`per_video_s`: the
time beyond the warm run's, per extra video). `peak_rss_mb` is the largest peak resident memory of these processes
(`rss_mb` gives each); `encode_text_400_s` the time of `encode_text` on the class names in this process (median of 3
calls after one).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import eval_forward
from benchmarks import memory as memory_benchmark
from benchmarks import synthetic_data
from benchmarks import throughput
from benchmarks import train_step as train_benchmark
from input_pipeline import annotations
from xclip_jax import compilation_cache
from xclip_jax import console
from xclip_jax import paths
from xclip_jax import pretrained
from xclip_jax.model import tokenizer

FLAGS = flags.FLAGS


# Runs its arguments and prints their peak resident memory (KB). A process's own ru_maxrss also counts the memory of the
# process it was forked from (Linux keeps the high-water mark across exec), and this one holds a model: the
# measured command must be forked from a small process.
_PEAK_RSS_WRAPPER = (
  "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
  "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def _run_process(command: list[str], env: dict[str, str]) -> tuple[float, float]:
  """Wall seconds and peak resident memory (MB) of a fresh process running `command`; raises if it fails."""
  with tempfile.TemporaryFile() as output:
    start = time.perf_counter()
    returncode = subprocess.call(
      [sys.executable, "-c", _PEAK_RSS_WRAPPER, *command], env=env, stdout=output, stderr=subprocess.STDOUT
    )
    seconds = time.perf_counter() - start
    output.seek(0)
    *lines, peak_kb = output.read().decode().splitlines()
  if returncode:
    raise RuntimeError(f"{' '.join(command)} failed ({returncode}):\n" + "\n".join(lines[-40:]))
  return seconds, int(peak_kb) / 1024


def classify_benchmark(arch: str, frames: int, labels: str | None, num_videos: int, classes: int = 400) -> dict:
  """Times classify runs on `labels` (an `id,name` CSV), or on `classes` generated names without it."""
  if num_videos < 2:
    raise ValueError("--videos must be at least 2 (per_video_s compares runs on 1 and on --videos videos)")
  with tempfile.TemporaryDirectory() as workdir:
    workdir = pathlib.Path(workdir)
    labels = labels or str(synthetic_data.write_label_list(workdir / "labels.csv", classes))
    class_names = annotations.read_label_list(labels)
    model = pretrained.from_config(throughput.architecture(arch, num_frames=frames))
    checkpoint = model.save(workdir / "checkpoint")
    ids = tokenizer.tokenize(class_names)
    jax.block_until_ready(model.encode_text(ids))
    encode_text_s = []
    for _ in range(3):
      start = time.perf_counter()
      jax.block_until_ready(model.encode_text(ids))
      encode_text_s.append(time.perf_counter() - start)
    del model
    videos = [str(synthetic_data.write_textured_video(workdir / f"{i}.mp4", seed=i)) for i in range(num_videos)]
    command = [sys.executable, "-m", "xclip_jax.classify", f"--checkpoint={checkpoint}", f"--labels={labels}"]
    env = {**os.environ, compilation_cache.ENV_VAR: str(workdir / "compilation_cache")}
    cold_s, cold_mb = _run_process(command + videos[:1], env)
    warm_s, warm_mb = _run_process(command + videos[:1], env)
    all_s, all_mb = _run_process(command + videos, env)
  return {
    "arch": arch,
    "frames": frames,
    "classes": len(class_names),
    "videos": num_videos,
    "device": str(jax.devices()[0].device_kind),
    "cold_s": cold_s,
    "warm_s": warm_s,
    "all_videos_s": all_s,
    "per_video_s": (all_s - warm_s) / (num_videos - 1),
    "peak_rss_mb": max(cold_mb, warm_mb, all_mb),
    "rss_mb": {"cold": cold_mb, "warm": warm_mb, "all_videos": all_mb},
    "encode_text_400_s": float(np.median(encode_text_s)),
  }


def _batch(default: int) -> int | str:
  if FLAGS.batch in (None, "auto"):
    return FLAGS.batch or default
  return int(FLAGS.batch)


# One function per --mode, each reading its flags.
MODES = {
  "eval": lambda: eval_forward.eval_benchmark(
    FLAGS.arch,
    FLAGS.frames,
    _batch(1),
    FLAGS.classes,
    FLAGS.dtype,
    FLAGS.repeats or 20,
    FLAGS.official_code,
    FLAGS.remat,
    FLAGS.max_batch,
  ),
  "classify": lambda: classify_benchmark(FLAGS.arch, FLAGS.frames, FLAGS.labels, FLAGS.videos, FLAGS.classes),
  "train": lambda: train_benchmark.side_by_side(
    dict(
      arch=FLAGS.arch,
      frames=FLAGS.frames,
      batch=_batch(2),
      classes=FLAGS.classes,
      dtype=FLAGS.dtype,
      steps=FLAGS.repeats or 8,
      remat=FLAGS.remat,
      freeze_text=FLAGS.freeze_text,
      max_batch=FLAGS.max_batch,
      profile=FLAGS.profile,
    ),
    FLAGS.official_code,
    FLAGS.rounds,
  ),
  "memory": lambda: memory_benchmark.time_axis_memory(FLAGS.arch, FLAGS.frames, FLAGS.classes, FLAGS.dtype),
}


def main(argv):
  del argv
  if FLAGS.mode == "memory":
    jax.config.update("jax_num_cpu_devices", 8)  # before anything starts JAX's CPU backend
  # Mistakes found before minutes of compiling: one line each.
  for flag in ("labels", "official_code"):
    if FLAGS[flag].value and not paths.is_remote(FLAGS[flag].value) and not os.path.exists(FLAGS[flag].value):
      console.fail(f"--{flag}={FLAGS[flag].value}: no such file or folder")
  if FLAGS.mode == "memory" and FLAGS.frames % memory_benchmark.TIME_SIZES[-1]:
    console.fail(f"--frames={FLAGS.frames}: --mode=memory splits them over time = {memory_benchmark.TIME_SIZES}")
  compilation_cache.enable(FLAGS.compilation_cache_dir)
  print(json.dumps(MODES[FLAGS.mode]()))


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_enum(
    "mode",
    "eval",
    list(MODES),
    "What to measure: the evaluation forward pass, classify runs, the train step, or the train step's memory.",
  )
  flags.DEFINE_enum("arch", "ViT-B/32", list(throughput.ARCHS), "Backbone (tiny: a few-second model for CPUs).")
  flags.DEFINE_integer("frames", 8, "Frames per video.", lower_bound=1)
  flags.DEFINE_string(
    "batch",
    None,
    "eval, train: videos per call or step (default 1 for eval, 2 for train), or `auto`: the largest that fits.",
  )
  flags.DEFINE_integer(
    "max_batch",
    None,
    "eval, train with --batch=auto: the largest size tried (default 8 on a CPU, 1024 otherwise).",
    lower_bound=1,
  )
  flags.DEFINE_bool("remat", False, "eval, train: rematerialise each CCT block in the backward pass (as for ViT-L).")
  flags.DEFINE_bool(
    "profile",
    False,
    "train: also trace two steps and report where their time goes besides the matrix multiplies "
    "(benchmarks.step_profile).",
  )
  flags.DEFINE_bool("freeze_text", True, "train: the official frozen text tower (its features computed once).")
  flags.DEFINE_integer("classes", 400, "eval, memory, classify without --labels: class texts.", lower_bound=1)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "eval, train, memory: compute dtype.")
  flags.DEFINE_integer(
    "repeats",
    None,
    "eval, train: timed calls or steps after warm-up (default 20 for eval, 8 for train).",
    lower_bound=1,
  )
  flags.DEFINE_integer(
    "rounds", 2, "train: fresh processes per side, alternating with the official step.", lower_bound=1
  )
  flags.DEFINE_string(
    "official_code",
    None,
    "eval, train: the X-CLIP folder of a microsoft/VideoX checkout: time the official PyTorch model side by side "
    "(needs PyTorch).",
  )
  flags.DEFINE_string("labels", None, "classify: an `id,name` CSV of class names (default: --classes generated ones).")
  flags.DEFINE_integer("videos", 20, "classify: videos of the many-video run (at least 2).", lower_bound=2)
  flags.register_validator(
    "batch",
    lambda value: value in (None, "auto") or (value.isdigit() and int(value) >= 1),
    "must be `auto` or an integer of at least 1",
  )
  compilation_cache.define_flag()


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
