r"""Times the X-CLIP evaluation forward pass and prints JSON.

  python -m xclip_jax.benchmark                      # ViT-B/32, 8 frames, batch 1, 400 classes, float32
  python -m xclip_jax.benchmark --arch=ViT-B/16 --frames=16 --batch=4 --dtype=bfloat16
  python -m xclip_jax.benchmark --official_code=VideoX/X-CLIP   # side by side with the official PyTorch model

The class texts are encoded once beforehand (as in evaluation, where the official code caches them); the timed call
is the video encoder, the prompt generator and the logits. Weights are random: speed does not depend on them.

With `--official_code` (the X-CLIP folder of a microsoft/VideoX checkout; needs PyTorch, e.g. `pip install
torch==2.13.0`), the official model is built with the same weights by its own `build_model`, its logits are checked
against ours, and the two forward passes are timed in alternation in one process, so that both see the same machine
load. The official eval forward runs under `torch.no_grad()` with its text cache filled, as in its `validate`.
"""
import json
import logging
import pathlib
import sys
import time
import types

from absl import app
from absl import flags
import jax
import numpy as np

from xclip_jax import model as model_lib
from xclip_jax import official
from xclip_jax import pretrained

FLAGS = flags.FLAGS


def _import_official_build_model(code_dir: pathlib.Path):
  """`models.xclip.build_model` from an official X-CLIP checkout, importing only what the model needs.

  `timm` (used there only for `trunc_normal_`) is replaced by PyTorch's own function when it is not installed, and the
  `clip` package is entered without running its `__init__`, which pulls in the tokenizer and torchvision.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit("--official_code needs PyTorch: pip install torch==2.13.0") from e
  if not (code_dir / "models" / "xclip.py").is_file() or not (code_dir / "clip" / "model.py").is_file():
    raise SystemExit(f"{code_dir} is not the X-CLIP folder of microsoft/VideoX (models/xclip.py, clip/model.py)")
  try:
    import timm.models.layers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                        "timm.models.layers": layers})
  clip_package = types.ModuleType("clip")
  clip_package.__path__ = [str(code_dir / "clip")]
  sys.modules["clip"] = clip_package
  sys.path.insert(0, str(code_dir))
  from models import xclip  # pylint: disable=g-import-not-at-top
  return xclip.build_model


def benchmark(arch: str, frames: int, batch: int, classes: int, dtype: str, repeats: int,
              official_code: str | None = None) -> dict:
  config = model_lib.preset(arch, num_frames=frames, dtype=dtype)
  model = pretrained.from_config(config)
  rng = np.random.default_rng(0)
  text_ids = rng.integers(1, config.vocab_size - 2, (classes, config.context_length), dtype=np.int32)
  text_ids[:, -1] = config.vocab_size - 1  # an end-of-text token for the argmax pooling
  text_features = jax.block_until_ready(model.encode_text(text_ids))
  size = config.image_resolution
  video = rng.standard_normal((batch, frames, size, size, 3), dtype=np.float32)
  ours = lambda: jax.block_until_ready(model.logits(video, text_features=text_features))

  start = time.perf_counter()
  our_logits = np.asarray(ours())
  compile_s = time.perf_counter() - start
  calls = {"ours": ours}
  result = {"arch": arch, "frames": frames, "batch": batch, "classes": classes, "dtype": dtype,
            "device": str(jax.devices()[0].device_kind)}

  if official_code:
    import torch  # pylint: disable=g-import-not-at-top
    build_model = _import_official_build_model(pathlib.Path(official_code).absolute())
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in official.official_from_params(model.params).items()}
    official_model = build_model(state_dict, T=frames, prompts_alpha=config.prompts_alpha,
                                 prompts_layers=config.prompts_layers, mit_layers=config.mit_layers,
                                 logger=logging.getLogger("official"))
    torch_video = torch.from_numpy(video.transpose(0, 1, 4, 2, 3).copy())  # (B, T, 3, H, W)
    torch_ids = torch.from_numpy(text_ids.astype(np.int64))

    def official_forward():
      with torch.no_grad():
        return official_model(torch_video, torch_ids)

    official_logits = official_forward().numpy()
    calls["official"] = official_forward
    result["official_torch_threads"] = torch.get_num_threads()
    result["max_abs_logit_difference"] = float(np.abs(official_logits - our_logits).max())

  for call in calls.values():  # warm-up
    for _ in range(3):
      call()
  times = {name: [] for name in calls}
  for _ in range(repeats):  # alternate so that both see the same machine load
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  result.update(median_s=float(np.median(times["ours"])), min_s=float(np.min(times["ours"])), repeats=repeats,
                first_call_s=compile_s)
  if official_code:
    result["official_median_s"] = float(np.median(times["official"]))
    result["ratio_to_official"] = result["median_s"] / result["official_median_s"]
  return result


def main(argv):
  del argv
  print(json.dumps(benchmark(FLAGS.arch, FLAGS.frames, FLAGS.batch, FLAGS.classes, FLAGS.dtype, FLAGS.repeats,
                             FLAGS.official_code)))


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_enum("arch", "ViT-B/32", list(model_lib.PRESETS), "Backbone.")
  flags.DEFINE_integer("frames", 8, "Frames per video.")
  flags.DEFINE_integer("batch", 1, "Videos per call.")
  flags.DEFINE_integer("classes", 400, "Class texts.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
  flags.DEFINE_integer("repeats", 20, "Timed calls (after warm-up).")
  flags.DEFINE_string("official_code", None, "The X-CLIP folder of a microsoft/VideoX checkout: time the official "
                      "PyTorch model side by side (needs PyTorch).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
