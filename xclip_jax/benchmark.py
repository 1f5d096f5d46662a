r"""Times the X-CLIP evaluation forward pass and prints JSON.

  python -m xclip_jax.benchmark                      # ViT-B/32, 8 frames, batch 1, 400 classes, float32
  python -m xclip_jax.benchmark --arch=ViT-B/16 --frames=16 --batch=4 --dtype=bfloat16

The class texts are encoded once beforehand (as in evaluation, where the official code caches them); the timed call
is the video encoder, the prompt generator and the logits. Weights are random: speed does not depend on them.
"""
import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from xclip_jax import model as model_lib
from xclip_jax import pretrained

FLAGS = flags.FLAGS


def benchmark(arch: str, frames: int, batch: int, classes: int, dtype: str, repeats: int) -> dict:
  config = model_lib.preset(arch, num_frames=frames, dtype=dtype)
  model = pretrained.from_config(config)
  rng = np.random.default_rng(0)
  text_ids = rng.integers(1, config.vocab_size - 2, (classes, config.context_length), dtype=np.int32)
  text_ids[:, -1] = config.vocab_size - 1  # an end-of-text token for the argmax pooling
  text_features = jax.block_until_ready(model.encode_text(text_ids))
  size = config.image_resolution
  video = rng.standard_normal((batch, frames, size, size, 3), dtype=np.float32)

  start = time.perf_counter()
  jax.block_until_ready(model.logits(video, text_features=text_features))
  compile_s = time.perf_counter() - start
  for _ in range(3):
    jax.block_until_ready(model.logits(video, text_features=text_features))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(model.logits(video, text_features=text_features))
    times.append(time.perf_counter() - start)
  return {
      "arch": arch, "frames": frames, "batch": batch, "classes": classes, "dtype": dtype,
      "device": str(jax.devices()[0].device_kind), "median_s": float(np.median(times)),
      "min_s": float(np.min(times)), "repeats": repeats, "first_call_s": compile_s,
  }


def main(argv):
  del argv
  print(json.dumps(benchmark(FLAGS.arch, FLAGS.frames, FLAGS.batch, FLAGS.classes, FLAGS.dtype,
                             FLAGS.repeats)))


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_enum("arch", "ViT-B/32", list(model_lib.PRESETS), "Backbone.")
  flags.DEFINE_integer("frames", 8, "Frames per video.")
  flags.DEFINE_integer("batch", 1, "Videos per call.")
  flags.DEFINE_integer("classes", 400, "Class texts.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
  flags.DEFINE_integer("repeats", 20, "Timed calls (after warm-up).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
