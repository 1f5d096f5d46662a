r"""Classifies videos by text with an X-CLIP checkpoint.

  python -m xclip_jax.classify --checkpoint=k400_32_8.pth --labels=labels/kinetics_400_labels.csv a.mp4 b.mp4
  python -m xclip_jax.classify --checkpoint=CKPT --classes="dancing,cooking,playing guitar" video.mp4

Each video is sampled as the official evaluation does (the centre frame of each of T segments), resized and
centre-cropped to the model's input size, and scored against the class names (used as text, as X-CLIP does).

The class texts are encoded once per run; videos are decoded in threads ahead of the model and scored in batches of
`--batch_size`. A video that cannot be read is reported on stderr and the others are still scored; the exit status is
then 1. Compiled programs are kept in JAX's persistent compilation cache (`xclip_jax.compilation_cache`), so that a
second run does not compile again.
"""

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
import dataclasses
import functools
import itertools
import os
import pathlib
import sys

from absl import app
from absl import flags
import jax
import numpy as np

from input_pipeline import annotations
from input_pipeline import sampling
from input_pipeline import video_decode
from xclip_jax import compilation_cache
from xclip_jax import pretrained
from xclip_jax import tokenizer

FLAGS = flags.FLAGS

# input_pipeline.augment's normalisation; that module's evaluation crop is redone here in numpy, bit for bit, so that
# classifying needs no TensorFlow (whose import alone takes seconds).
MEAN_RGB = np.array((123.675, 116.28, 103.53), np.float32)
STD_RGB = np.array((58.395, 57.12, 57.375), np.float32)
# Errors of one video's file or stream: reported, and the other videos are still classified.
VIDEO_ERRORS = (OSError, video_decode.VideoDecodeError)


def _bilinear_taps(in_size: int, out_size: int, start: int, count: int):
  """Source rows (or columns) and weights of output positions [start, start + count) of a bilinear resize.

  TensorFlow's ResizeBilinear with half-pixel centres, in the same float32 operations, so that the results are
  the same bits.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  position = (np.arange(start, start + count, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(position)
  lower = np.maximum(floor, 0).astype(np.intp)
  upper = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
  return lower, upper, position - floor


def eval_view(frames: np.ndarray, input_size: int) -> np.ndarray:
  """`augment.eval_augment(frames, input_size, num_crops=1)[0]` in numpy: (T, S, S, 3) float32, normalised.

  The short side is resized to int(256 / 224 * S) (bilinear, rounded to integers) and the centre S x S cropped;
  only the cropped pixels of the resized frames are computed.
  """
  _, height, width, _ = frames.shape
  factor = int(256 / 224 * input_size) / min(height, width)
  # mmcv.rescale_size, as augment._resize_short_side: int(side * factor + 0.5).
  new_height, new_width = int(height * factor + 0.5), int(width * factor + 0.5)
  top, left = (new_height - input_size) // 2, (new_width - input_size) // 2
  frames = frames.astype(np.float32)
  if (new_height, new_width) == (height, width):
    crop = frames[:, top : top + input_size, left : left + input_size]
  else:
    row_low, row_high, row_weight = _bilinear_taps(height, new_height, top, input_size)
    col_low, col_high, col_weight = _bilinear_taps(width, new_width, left, input_size)
    col_weight = col_weight[:, None]
    upper, lower = frames[:, row_low], frames[:, row_high]
    upper = upper[:, :, col_low] + (upper[:, :, col_high] - upper[:, :, col_low]) * col_weight
    lower = lower[:, :, col_low] + (lower[:, :, col_high] - lower[:, :, col_low]) * col_weight
    crop = np.clip(np.round(upper + (lower - upper) * row_weight[:, None, None]), 0.0, 255.0)
  return (crop - MEAN_RGB) / STD_RGB


def load_clip(path, num_frames: int, input_size: int) -> np.ndarray:
  """The evaluation view of one video file: (T, S, S, 3) float32, normalised."""
  data = pathlib.Path(path).read_bytes()
  frames, _ = video_decode.decode_sampled_frames(data, lambda total: sampling.eval_frame_indices(total, num_frames))
  return eval_view(frames, input_size)


@dataclasses.dataclass(frozen=True)
class Result:
  """One video's top classes as (class name, probability) pairs, best first; or why it could not be read."""

  video: str
  top: list[tuple[str, float]]
  error: Exception | None = None


def _map_ahead(pool: futures.Executor, fn: Callable, items: Iterable, depth: int) -> Iterator[futures.Future]:
  """The futures of fn(item), in order, with at most `depth` calls in flight; the first ones start at once."""
  items = iter(items)
  pending = collections.deque(pool.submit(fn, item) for item in itertools.islice(items, depth))

  def in_order():
    while pending:
      future = pending.popleft()
      pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))
      yield future

  return in_order()


def _softmax(logits: np.ndarray) -> np.ndarray:
  exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return exp / exp.sum(axis=-1, keepdims=True)


def _score(model, batch, text_features, class_names, top_k) -> list[Result]:
  """Results of a batch of (video, clip or None, error or None), the clips scored in one call of the model."""
  clips = [clip for _, clip, _ in batch if clip is not None]
  if clips:
    probabilities = iter(_softmax(np.asarray(model.logits(np.stack(clips), text_features=text_features))))
  results = []
  for video, clip, error in batch:
    if clip is None:
      results.append(Result(video, [], error))
    else:
      p = next(probabilities)
      results.append(Result(video, [(class_names[i], float(p[i])) for i in np.argsort(-p)[:top_k]]))
  return results


def classify(
  model: pretrained.XCLIPModel, videos, class_names, top_k: int = 5, batch_size: int | None = None
) -> Iterator[Result]:
  """Yields each video's Result, in order, as soon as its batch of up to `batch_size` clips is scored.

  The class texts are encoded once; decoding runs in threads up to two batches ahead of the model. `batch_size`
  defaults to 8 on accelerators and to 1 on CPU, where batching gains nothing measurable (the matmuls of one clip
  already keep the cores busy) and every new batch size would cost a compilation.
  """
  batch_size = batch_size or (1 if jax.default_backend() == "cpu" else 8)
  videos = [str(video) for video in videos]
  load = functools.partial(load_clip, num_frames=model.config.num_frames, input_size=model.config.image_resolution)
  with futures.ThreadPoolExecutor(min(batch_size, os.cpu_count() or 1)) as pool:
    clips = _map_ahead(pool, load, videos, 2 * batch_size)
    text_features = model.encode_text(tokenizer.tokenize(class_names))  # while the first videos decode
    batch = []
    for video, future in zip(videos, clips):
      try:
        batch.append((video, future.result(), None))
      except VIDEO_ERRORS as e:
        batch.append((video, None, e))
      if sum(clip is not None for _, clip, _ in batch) == batch_size:
        yield from _score(model, batch, text_features, class_names, top_k)
        batch = []
    yield from _score(model, batch, text_features, class_names, top_k)


def main(argv):
  videos = argv[1:]
  if not videos:
    raise app.UsageError("name at least one video file")
  if (FLAGS.labels is None) == (FLAGS.classes is None):
    raise app.UsageError("pass exactly one of --labels and --classes")
  compilation_cache.enable(FLAGS.compilation_cache_dir)
  class_names = annotations.read_label_list(FLAGS.labels) if FLAGS.labels else FLAGS.classes
  model = pretrained.load_pretrained(FLAGS.checkpoint, num_frames=FLAGS.num_frames)
  failed = []
  for result in classify(model, videos, class_names, FLAGS.top_k, FLAGS.batch_size):
    if result.error is not None:
      print(f"{result.video}: cannot classify: {result.error}", file=sys.stderr, flush=True)
      failed.append(result.video)
      continue
    print(result.video)
    for name, probability in result.top:
      print(f"  {probability:7.2%}  {name}")
    sys.stdout.flush()
  if failed:
    print(f"{len(failed)} of {len(videos)} videos could not be classified: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_string("checkpoint", None, "Any checkpoint `load_pretrained` reads.", required=True)
  flags.DEFINE_string("labels", None, "An `id,name` CSV of class names.")
  flags.DEFINE_list("classes", None, "Comma-separated class names (instead of --labels).")
  flags.DEFINE_integer("num_frames", None, "Frames per video (default: the checkpoint's).")
  flags.DEFINE_integer("top_k", 5, "Classes to print per video.")
  flags.DEFINE_integer("batch_size", None, "Videos scored per call of the model (default: 1 on CPU, else 8).")
  compilation_cache.define_flag()


def run():
  """The console entry point."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
