r"""Classifies videos by text with an X-CLIP checkpoint.

  python -m xclip_jax.classify --checkpoint=k400_32_8.pth --labels=kinetics_400_labels.csv a.mp4 b.mp4
  python -m xclip_jax.classify --checkpoint=CKPT --classes="dancing,cooking,playing guitar" --views=12 video.mp4
  python -m xclip_jax.classify --checkpoint=runs/demo --labels=L.csv --json --embed=embeddings.npz *.mp4

--checkpoint is anything `xclip_jax.load_pretrained` reads, including the workdir of `python -m xclip_jax.main` (its
final model) or its `best/` export. Each video is sampled as the evaluation does: --views=1 takes the centre frame of
each of T segments and the centre crop of the frames resized to the model's input size; --views=3 three crops along
the long side; --views=12 four clips of T frames (each at its own offset into the segments) times three crops.
The softmax of each view's logits is averaged over the views. Logits are video-conditioned: X-CLIP adds to each class
text a prompt generated from the video before comparing them.

--json prints one JSON document on stdout, {"checkpoint": ..., "views": ..., "videos": [{"path": ..., "predictions":
[{"label": ..., "probability": ...}, ...]}, ...]}, the --top_k most probable classes first (--top_k=0: all; the
probabilities are over all classes and sum to one). A video that cannot be read has {"path": ..., "error": ...} instead.

--embed=OUT.npz writes embeddings for retrieval to OUT.npz (that name, as given; through a temporary file beside it,
so that an interrupted write leaves none), L2-normalised float32: `text_embeddings` (K, D), the class texts as
plain text features (no video conditioning, `model.encode_text`); `video_embeddings` (N, D), each video's MIT output
(`model.encode_video`) of each view, normalised, averaged over the views and normalised again; with `labels` (K,) and
`videos` (N,), the videos that could be read (where none could, no file is written).
Their dot products are cosine similarities between a video and a text on its own, which is not what the logits
compare (there every class text is first conditioned on the video).

The class texts are encoded once per run; videos are decoded in threads ahead of the model and scored in batches of
`--batch_size` videos. Errors are one line on stderr and exit status 2: a video that cannot be read (missing,
unreadable, truncated, no frames, too large for memory; the other videos are still classified and reported), an
empty label list or one that names a class twice (or two classes the model reads as one text, the same token ids:
`rock-climbing` and `rock - climbing`), a checkpoint that is missing or not an X-CLIP/CLIP checkpoint; and, before any
video is read, a flag out of range, no video, not exactly one of --labels and --classes, an --embed that
is a directory, whose folder is missing or not writable, that is one of the videos, or that is an existing file but
not an .npz archive (a zip file; only such a file is replaced). Where stdout is closed early (`| head`), the command
ends quietly with exit status 141, as a program that SIGPIPE ends. Compiled programs are kept in JAX's persistent
compilation cache (`xclip_jax.compilation_cache`), so that a second run does not compile again.
"""

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
import dataclasses
import functools
import itertools
import json
import logging
import numbers
import os
import pathlib
import sys
import zipfile

from absl import app
from absl import flags
import jax
import numpy as np
import tqdm

from input_pipeline import annotations
from input_pipeline import normalization
from input_pipeline import sampling
from input_pipeline import video_decode
from xclip_jax import compilation_cache
from xclip_jax import console
from xclip_jax import paths
from xclip_jax import pretrained
from xclip_jax.model import tokenizer

FLAGS = flags.FLAGS

# input_pipeline.augment's evaluation crops are redone here in numpy, bit for bit, so that classifying needs no
# TensorFlow (whose import alone takes seconds); the normalisation constants are the pipeline's own.
MEAN_RGB = np.array(normalization.MEAN_RGB, np.float32)
STD_RGB = np.array(normalization.STD_RGB, np.float32)
# --views: (clips, crops) per video, as the evaluation takes them.
VIEWS = {1: (1, 1), 3: (1, 3), 12: (4, 3)}


class VideoTooLargeError(MemoryError):
  """A video whose file or frames do not fit in memory."""


# Errors of one video's file or stream: reported, and the other videos are still classified.
VIDEO_ERRORS = (OSError, video_decode.VideoDecodeError, VideoTooLargeError)
# A progress bar on stderr from this many clips (videos x views) on.
PROGRESS_FROM_CLIPS = 10
# The exit status where stdout's reader went away (`| head`): a shell's for a program that SIGPIPE ends, 128 + 13.
EXIT_BROKEN_PIPE = 141


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


def _resized_window(frames: np.ndarray, new_size: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
  """The size x size window at (top, left) of the uint8 frames resized to new_size (bilinear, rounded to integers),
  as float32. Only the pixels the window reads become floats: a 4K video's frames would take four times their size."""
  height, width = frames.shape[1:3]
  if new_size == (height, width):
    return frames[:, top : top + size, left : left + size].astype(np.float32)
  row_low, row_high, row_weight = _bilinear_taps(height, new_size[0], top, size)
  col_low, col_high, col_weight = _bilinear_taps(width, new_size[1], left, size)
  col_weight = col_weight[:, None]

  def resized_rows(rows):
    at_low, at_high = rows[:, :, col_low].astype(np.float32), rows[:, :, col_high].astype(np.float32)
    return at_low + (at_high - at_low) * col_weight

  upper, lower = resized_rows(frames[:, row_low]), resized_rows(frames[:, row_high])
  return np.clip(np.round(upper + (lower - upper) * row_weight[:, None, None]), 0.0, 255.0)


def eval_crops(frames: np.ndarray, input_size: int, num_crops: int = 1) -> np.ndarray:
  """`augment.eval_augment(frames, input_size, num_crops)` in numpy: (num_crops, T, S, S, 3) float32, normalised.

  1 crop: the short side resized to int(256 / 224 * S), the centre S x S. 3 crops: the short side resized to S, the
  crops at the start, the end and the middle of the long side. Only the cropped pixels are computed.
  """
  if num_crops not in (1, 3):
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
  _, height, width, _ = frames.shape
  short_side = int(256 / 224 * input_size) if num_crops == 1 else input_size
  factor = short_side / min(height, width)
  # mmcv.rescale_size, as augment._resize_short_side: int(side * factor + 0.5).
  new_height, new_width = int(height * factor + 0.5), int(width * factor + 0.5)
  if num_crops == 1:
    origins = [((new_height - input_size) // 2, (new_width - input_size) // 2)]
  elif new_height == input_size:  # landscape (or square): along the width
    origins = [(0, position * ((new_width - input_size) // 2)) for position in (0, 2, 1)]
  else:
    origins = [(position * ((new_height - input_size) // 2), 0) for position in (0, 2, 1)]
  crops = np.stack([_resized_window(frames, (new_height, new_width), top, left, input_size) for top, left in origins])
  return (crops - MEAN_RGB) / STD_RGB


def load_views(path, num_frames: int, input_size: int, num_clips: int = 1, num_crops: int = 1) -> np.ndarray:
  """The evaluation views of one video file, clip-major: (num_clips * num_crops, T, S, S, 3) float32, normalised."""
  for name, value in (("num_frames", num_frames), ("input_size", input_size), ("num_clips", num_clips)):
    if value < 1:
      raise ValueError(f"{name} must be at least 1, got {value}")
  if os.path.isdir(path):  # `videos/` where `videos/*.mp4` was meant
    raise IsADirectoryError(f"a folder, not a video file (its videos: {os.path.join(path, '*.mp4')})")
  try:
    data = pathlib.Path(path).read_bytes()
    frames, _ = video_decode.decode_sampled_frames(
      data, lambda total: sampling.eval_clips_frame_indices(total, num_frames, num_clips)
    )
  except MemoryError:
    # One huge video is that video's error, as an unreadable one is: the other videos' results are not lost.
    raise VideoTooLargeError(f"not enough memory to read it ({os.path.getsize(path) / 1e6:.0f} MB)") from None
  crops = eval_crops(frames, input_size, num_crops)  # (crop, clip * T, ...)
  crops = crops.reshape(num_crops, num_clips, num_frames, *crops.shape[2:])
  return crops.swapaxes(0, 1).reshape(num_clips * num_crops, num_frames, *crops.shape[3:])


@dataclasses.dataclass(frozen=True)
class Result:
  """One video's classes as (class name, probability) pairs, best first, and its embedding if asked for; or why it
  could not be read."""

  video: str
  top: list[tuple[str, float]]
  error: Exception | None = None
  embedding: np.ndarray | None = None


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


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _score(model, batch, text_features, class_names, top_k, embed: bool) -> list[Result]:
  """Results of a batch of (video, views or None, error or None), the views scored in one call of the model."""
  clips = [views for _, views, _ in batch if views is not None]
  if clips:
    num_views = clips[0].shape[0]
    stacked = np.concatenate(clips)
    logits = np.asarray(model.logits(stacked, text_features=text_features))
    probabilities = iter(_softmax(logits).reshape(len(clips), num_views, -1).mean(axis=1))
    if embed:
      features = _normalize(np.asarray(model.encode_video(stacked)[0]))
      embeddings = iter(_normalize(features.reshape(len(clips), num_views, -1).mean(axis=1)))
  results = []
  for video, views, error in batch:
    if views is None:
      results.append(Result(video, [], error))
      continue
    p = next(probabilities)
    top = [(class_names[i], float(p[i])) for i in np.argsort(-p, kind="stable")[: top_k or len(class_names)]]
    results.append(Result(video, top, embedding=next(embeddings) if embed else None))
  return results


def classify(
  model: pretrained.XCLIPModel,
  videos,
  class_names: Sequence[str],
  top_k: int = 5,
  batch_size: int | None = None,
  views: int = 1,
  embed: bool = False,
) -> Iterator[Result]:
  """Yields each video's Result, in order, as soon as its batch of up to `batch_size` videos is scored.

  `top_k=0` ranks all classes; `views` is 1, 3 or 12 (see the module doc); `embed` adds each video's embedding.
  The class texts are encoded once; decoding runs in threads up to two batches ahead of the model. `batch_size`
  defaults to 8 on accelerators and to 1 on CPU, where batching gains nothing measurable (the matmuls of one clip
  already keep the cores busy) and every new batch size would cost a compilation.
  """
  # Integers only: a float or a string would fail later with an unrelated TypeError, or be taken as another value.
  if not _is_int(views) or views not in VIEWS:
    raise ValueError(f"views must be one of {sorted(VIEWS)}, got {views!r}")
  if not _is_int(top_k) or top_k < 0:
    raise ValueError(f"top_k must be an integer of at least 0 (0: all classes), got {top_k!r}")
  if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
    raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
  if isinstance(videos, (str, os.PathLike)):
    raise ValueError(f"videos: a list of paths, not the one path {os.fspath(videos)!r}")
  class_names = check_class_names(class_names, "class_names")
  batch_size = batch_size or (1 if jax.default_backend() == "cpu" else 8)
  videos = [str(video) for video in videos]
  num_clips, num_crops = VIEWS[views]
  load = functools.partial(
    load_views,
    num_frames=model.config.num_frames,
    input_size=model.config.image_resolution,
    num_clips=num_clips,
    num_crops=num_crops,
  )
  ids = text_ids(model, class_names)
  with futures.ThreadPoolExecutor(min(batch_size, os.cpu_count() or 1)) as pool:
    clips = _map_ahead(pool, load, videos, 2 * batch_size)
    text_features = model.encode_text(ids)  # while the first videos decode
    batch = []
    for video, future in zip(videos, clips):
      try:
        batch.append((video, future.result(), None))
      except VIDEO_ERRORS as e:
        batch.append((video, None, e))
      if sum(views is not None for _, views, _ in batch) == batch_size:
        yield from _score(model, batch, text_features, class_names, top_k, embed)
        batch = []
    yield from _score(model, batch, text_features, class_names, top_k, embed)


def _is_int(value) -> bool:
  """An int or numpy integer; not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def text_ids(model: pretrained.XCLIPModel, class_names: Sequence[str]) -> np.ndarray:
  """The class names' CLIP token ids; UserError where the model's vocabulary is smaller than CLIP's (a Hugging Face
  X-CLIP may set any vocab_size) and lacks some of them."""
  ids = tokenizer.tokenize(list(class_names))
  vocab = model.config.vocab_size
  if ids.max() >= vocab:
    raise UserError(
      f"the class names' CLIP token ids reach {ids.max()}, but the model's vocabulary has {vocab} tokens "
      "(vocab_size): it cannot read the CLIP tokenizer's texts"
    )
  return ids


def text_embeddings(model: pretrained.XCLIPModel, class_names: Sequence[str]) -> np.ndarray:
  """(K, D) L2-normalised plain text features of the class names (no video conditioning)."""
  return _normalize(np.asarray(model.encode_text(text_ids(model, class_names))))


class UserError(ValueError):
  """Bad input, which the commands report as one line."""


def check_class_names(names: Sequence[str], source: str) -> list[str]:
  """The class names, or UserError for one string instead of a list, an empty list, a name that is not a string or
  is empty, or a name listed twice."""
  if isinstance(names, str):
    raise UserError(f"{source}: a list of class names, not the string {names!r}")
  names = list(names)
  not_text = [name for name in names if not isinstance(name, str)]
  if not_text:
    raise UserError(f"{source}: class names are strings, not {not_text[0]!r}")
  names = [name.strip() for name in names]
  if not names:
    raise UserError(f"{source} lists no classes")
  if not all(names):
    raise UserError(f"{source} has an empty class name")
  # Names the model reads as one text would score the same.
  same = annotations.first_same_reading(names)
  if same:
    first, second = (names[i] for i in same)
    if first == second:
      raise UserError(f"{source} lists {first!r} more than once")
    raise UserError(f"{source} lists {first!r} and {second!r}, which the model reads as the same text")
  try:
    tokenizer.tokenize(names)
  except tokenizer.TextTooLongError as error:
    raise UserError(error.naming(names[error.row], source)) from None
  return names


def read_class_names(labels: str | None, classes: Sequence[str] | None) -> list[str]:
  """The class names of --labels (a CSV file) or --classes (a list), or UserError unless exactly one is given."""
  if (labels is None) == (classes is None):
    raise UserError("pass exactly one of --labels and --classes")
  if labels is None:
    return check_class_names(classes, "--classes")
  try:
    names = annotations.read_label_list(labels)
  except (OSError, ValueError) as e:
    raise UserError(f"--labels: {e}") from None
  return check_class_names(names, f"--labels={labels}")


def check_embed_path(path: str, videos: Sequence[str] = ()) -> pathlib.Path:
  """--embed's file, or UserError where it cannot be written: checked before any video is classified.

  The file is written under exactly this name (numpy's `savez` would add `.npz` to a name without it): a user who
  names a file expects that file, and `np.load` reads an .npz archive whatever its name. An existing file is replaced
  only if it is an .npz archive (a zip file, as `savez` writes): `--embed a.mp4 b.mp4` (absl takes a.mp4 as the
  flag's value) must not turn the user's video into embeddings.
  """
  if not os.fspath(path):
    raise UserError("--embed= names no file; name the .npz file to write")
  path = pathlib.Path(path)
  if path.is_dir():
    raise UserError(f"--embed={path} is a directory; name the .npz file to write")
  if path.resolve() in {pathlib.Path(video).resolve() for video in videos}:
    raise UserError(f"--embed={path} is one of the videos to classify; name the .npz file to write")
  if path.exists() and not zipfile.is_zipfile(path):
    raise UserError(
      f"--embed={path} is a file that is not an .npz archive; only one is replaced: name the .npz file to write"
    )
  if not path.parent.is_dir():
    raise UserError(f"--embed={path}: no directory {path.parent}")
  if not os.access(path.parent, os.W_OK):
    raise UserError(f"--embed={path}: cannot write in {path.parent}")
  return path


def _load_model() -> pretrained.XCLIPModel:
  try:
    model = pretrained.load_pretrained(FLAGS.checkpoint, num_frames=FLAGS.num_frames)
  except (OSError, ValueError) as e:
    # The loaders' messages mostly start with the path: said once.
    message = str(e) if str(e).startswith(FLAGS.checkpoint) else f"{FLAGS.checkpoint}: {e}"
    raise UserError(f"--checkpoint={message}") from None
  warn_if_untrained(model, FLAGS.checkpoint)
  return model


def warn_if_untrained(model: pretrained.XCLIPModel, checkpoint):
  """A warning on the terminal for a model loaded from CLIP (or converted from one), whose X-CLIP modules are
  untrained."""
  if not model.xclip_modules_trained:
    logging.warning(
      "%s is a CLIP model: X-CLIP's message tokens, MIT and prompt generator are untrained, so these "
      "are not a trained X-CLIP's results; use an X-CLIP checkpoint, or one trained from this one",
      checkpoint,
    )


def write_embeddings(path: pathlib.Path, model, class_names: Sequence[str], results: list[Result]):
  """The --embed file (see the module doc) of the results, at `path` exactly; UserError if it cannot be written."""
  read = [result for result in results if result.embedding is not None]
  dimension = model.config.embed_dim
  try:
    # Written beside the file, then renamed onto it: an interrupted write leaves no partial file under its name.
    with paths.written_beside(path) as staging, open(staging, "wb") as f:
      np.savez(
        f,
        text_embeddings=text_embeddings(model, class_names),
        video_embeddings=np.stack([r.embedding for r in read]) if read else np.zeros((0, dimension), np.float32),
        labels=np.array(class_names),
        videos=np.array([r.video for r in read]),
      )
  except OSError as e:
    raise UserError(f"--embed={path}: cannot write it: {e}") from None


def _run(videos: list[str]) -> int:
  # The cheap checks first: a mistake is reported before the checkpoint is read or any video classified.
  if not videos:
    raise UserError("name at least one video file")
  class_names = read_class_names(FLAGS.labels, FLAGS.classes)
  embed_path = check_embed_path(FLAGS.embed, videos) if FLAGS.embed is not None else None
  model = _load_model()
  views = int(FLAGS.views)
  results = []
  show_progress = len(videos) * views >= PROGRESS_FROM_CLIPS
  # disable=None: a bar only where stderr is a terminal.
  with tqdm.tqdm(total=len(videos), unit="video", file=sys.stderr, disable=None if show_progress else True) as bar:
    for result in classify(model, videos, class_names, FLAGS.top_k, FLAGS.batch_size, views, embed_path is not None):
      results.append(result)
      bar.update()
      if result.error is not None:
        bar.write(f"{result.video}: cannot classify: {result.error}", file=sys.stderr)
      elif not FLAGS.json:
        lines = [result.video] + [f"  {probability:7.2%}  {name}" for name, probability in result.top]
        bar.write("\n".join(lines), file=sys.stdout)
        sys.stdout.flush()
  if FLAGS.json:
    documents = [
      {"path": r.video, "error": str(r.error)}
      if r.error is not None
      else {"path": r.video, "predictions": [{"label": name, "probability": p} for name, p in r.top]}
      for r in results
    ]
    json.dump({"checkpoint": FLAGS.checkpoint, "views": views, "videos": documents}, sys.stdout, indent=1)
    print()
  failed = [r.video for r in results if r.error is not None]
  # With no video read there are no embeddings to write: a file of an earlier run there is kept, not emptied.
  unwritten = ""
  if embed_path and len(failed) < len(results):
    write_embeddings(embed_path, model, class_names, results)
  elif embed_path:
    unwritten = f"; --embed={embed_path} not written"
  if failed:
    return console.error(
      f"{len(failed)} of {len(videos)} videos could not be classified: {', '.join(failed)}{unwritten}"
    )
  return 0


def main(argv):
  console.setup()  # the table on the terminal; libraries' INFO lines (XLA's backends, orbax) only with --verbosity
  compilation_cache.enable(FLAGS.compilation_cache_dir)
  try:
    return _run(argv[1:])
  except UserError as e:
    return console.error(str(e))
  except BrokenPipeError:
    # The reader of stdout is gone (`| head`): end quietly, as a program that SIGPIPE ends. Python's own flush of
    # stdout at exit would fail again, so stdout goes to os.devnull.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_string(
    "checkpoint", None, "Any checkpoint `load_pretrained` reads, or a workdir of main.", required=True
  )
  flags.DEFINE_string("labels", None, "An `id,name` CSV of class names.")
  flags.DEFINE_list("classes", None, "Comma-separated class names (instead of --labels).")
  flags.DEFINE_integer("num_frames", None, "Frames per video (default: the checkpoint's).", lower_bound=1)
  flags.DEFINE_integer("top_k", 5, "Classes to show per video, most probable first (0: all).", lower_bound=0)
  flags.DEFINE_enum(
    "views", "1", [str(v) for v in VIEWS], "Views per video: 1 (1 clip x 1 crop), 3 (1 x 3), 12 (4 x 3)."
  )
  flags.DEFINE_boolean("json", False, "Print one JSON document of all results on stdout.")
  flags.DEFINE_string(
    "embed",
    None,
    "Also write text and video embeddings for retrieval to this .npz file (an existing file is replaced only if it "
    "is an .npz archive).",
  )
  flags.DEFINE_integer(
    "batch_size", None, "Videos scored per call of the model (default: 1 on CPU, else 8).", lower_bound=1
  )
  compilation_cache.define_flag()
  flags.adopt_module_key_flags(compilation_cache)  # listed by --help, with this module's own


def run():
  """The console entry point."""
  # TensorFlow's C++ start-up messages, should anything import it, stay off the user's terminal.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  define_flags()
  app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
  run()
