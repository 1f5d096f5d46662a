r"""Converts a video list into sharded TFDS records of JPEG frames, resumably.

  python -m input_pipeline.build_tfds --annotations=train.txt --root=videos/ \
      --labels=kinetics_400_labels.csv --output_dir=/data/k400 --split=train \
      --short_side=256 --fps=10

Each record is one video: its frames as JPEGs (short side resized down to
`--short_side`, never up), `num_frames`, `label`, the relative `path` (for
error messages) and `annotation_index` (its line in the annotation file,
counting from 0: tfds_dataset replays video_dataset's stream over these lines,
so both give the same clips). With `--fps` or `--max_frames` only a subset of
the frames is stored, and the frame indices of the sampling then count the
stored frames.

Why not `tfds.core.GeneratorBasedBuilder.download_and_prepare`: it prepares a
whole split in a temporary folder that an interruption discards, and a
Kinetics conversion takes hours. Here shard k holds annotation lines
[k * videos_per_shard, (k + 1) * videos_per_shard); it is written to
`_build/<split>/` and marked done there with its counts and failures, so a
rerun with the same flags converts only the shards without a marker. When the
last shard of a split is done the shards move next to the other splits and
`tfds.folder_dataset.write_metadata` writes dataset_info.json and
features.json: the folder then loads with `tfds.builder_from_directory` like any
TFDS dataset, and `input_pipeline.tfds_dataset` reads it with TF ops.

A video that cannot be read or decoded, or has no frames, is logged with its
path, left out and listed in its shard's marker; more than `--max_bad_fraction`
of them, or all, stop the build with an error before the metadata is written.

A bad flag or input file stops the command with one line, `error: ...`, and
exit status 2 (the traceback goes to OUTPUT_DIR/_build/logs/); the shards
already done stay for the next run. Ctrl-C or a SIGTERM stops it with one line
too, ending by that signal (a shell's status 130 or 143): rerunning the same
command goes on from the shards written.
"""

import collections
from collections.abc import Iterator, Sequence
from concurrent import futures
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
from multiprocessing import resource_tracker
import os
import re
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import av
import numpy as np
import tqdm

from xclip_jax import console

with console.native_start_up():  # TensorFlow's C++ start-up lines go to the log, not the terminal
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from input_pipeline import annotations
  from input_pipeline import tfds_format
  from input_pipeline import video_decode


class TooManyBadVideosError(RuntimeError):
  """More videos could not be converted than --max_bad_fraction allows."""


class Stopped(BaseException):
  """Ctrl-C or a SIGTERM to the command: it stops with one line (not a traceback per process), the shards done kept."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """Everything that decides the content of a split's shards."""

  name: str
  split: str
  annotations_sha256: str
  labels_sha256: str
  short_side: int
  fps: float | None
  max_frames: int | None
  jpeg_quality: int
  videos_per_shard: int


def stored_frame_indices(
  num_frames: int, source_fps: float | None, fps: float | None, max_frames: int | None
) -> np.ndarray:
  """Frames kept from a video: all, or every frame of an fps cap, then a cap.

  The fps cap keeps the frame shown at each tick of the lower rate
  (30 -> 10 fps keeps 0, 3, 6, ...); `max_frames` then keeps that many frames
  evenly spread over the video, so the stored clip still spans all of it.
  """
  indices = np.arange(num_frames)
  if fps is not None and source_fps is not None and source_fps > fps:
    num_kept = int(np.ceil(num_frames * fps / source_fps))
    indices = np.floor(np.arange(num_kept) * source_fps / fps).astype(int)
  if max_frames is not None and len(indices) > max_frames:
    indices = indices[np.arange(max_frames) * len(indices) // max_frames]
  return indices


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
  """The shape with the short side reduced to short_side, never enlarged."""
  scale = short_side / min(height, width)
  if scale >= 1:
    return height, width
  return round(height * scale), round(width * scale)


def _frame_rate(video_bytes: bytes) -> float | None:
  """Frames per second; None where the container does not say (no fps cap), or where the file is no video, which
  decoding then reports as the reason to skip it."""
  try:
    with av.open(io.BytesIO(video_bytes)) as container:
      stream = video_decode.first_video_stream(container)
      rate = stream.average_rate if stream else None
  except (av.FFmpegError, ValueError):
    return None
  return float(rate) if rate else None


class VideoEncoder:
  """Turns an annotation record into a serialized TFDS example."""

  def __init__(self, root: str, config: BuildConfig, label_names: Sequence[str]):
    self._source = video_decode.VideoSource(root)
    self._config = config
    self._features = tfds_format.features(label_names)
    self._encode_jpegs = tf.function(
      lambda frames: tf.map_fn(
        lambda frame: tf.io.encode_jpeg(frame, quality=config.jpeg_quality), frames, fn_output_signature=tf.string
      ),
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
    )
    self._resize = tf.function(
      lambda frames, size: tf.cast(
        tf.clip_by_value(tf.round(tf.image.resize(frames, size, antialias=True)), 0, 255), tf.uint8
      ),
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)],
    )

  def __call__(self, task: tuple[int, annotations.VideoRecord]) -> tuple[bytes | None, str | None]:
    """Returns (serialized example, None) or (None, why it was skipped)."""
    index, record = task
    try:
      video = self._source.read_bytes(record.path)
      source_fps = _frame_rate(video) if self._config.fps else None
      frames, _ = video_decode.decode_sampled_frames(
        video,
        lambda num_frames: stored_frame_indices(num_frames, source_fps, self._config.fps, self._config.max_frames),
      )
    except video_decode.VideoDecodeError as error:
      return None, str(error)
    size = resized_shape(*frames.shape[1:3], self._config.short_side)
    if size != frames.shape[1:3]:
      frames = self._resize(frames, size)
    jpegs = self._encode_jpegs(frames).numpy()
    return self._features.serialize_example(
      {
        "frames": list(jpegs),
        "num_frames": len(jpegs),
        "label": record.label,
        "path": record.path,
        "annotation_index": index,
      }
    ), None


_worker_encoder: VideoEncoder | None = None
_SIGNAL_CHECK_SECONDS = 0.5  # how long Ctrl-C may wait while the workers convert


def _init_worker(root, config, label_names):
  global _worker_encoder
  # Workers run side by side, one video each: more threads per op would only
  # oversubscribe the cores.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  _worker_encoder = VideoEncoder(root, config, label_names)


def _encode_in_worker(task):
  return _worker_encoder(task)


class SplitWriter:
  """Paths and markers of one split's conversion under `output_dir`."""

  def __init__(self, output_dir: str, config: BuildConfig, records: Sequence[annotations.VideoRecord]):
    self.output_dir = output_dir
    self.config = config
    self.records = records
    self.num_videos = len(records)
    self.num_shards = -(-self.num_videos // config.videos_per_shard)
    self.build_dir = os.path.join(output_dir, "_build", config.split)

  def shard_name(self, shard: int) -> str:
    return f"{self.config.name}-{self.config.split}.tfrecord-{shard:05d}-of-{self.num_shards:05d}"

  def shard_range(self, shard: int) -> range:
    start = shard * self.config.videos_per_shard
    return range(start, min(start + self.config.videos_per_shard, self.num_videos))

  def marker_path(self, shard: int) -> str:
    return os.path.join(self.build_dir, self.shard_name(shard) + ".done.json")

  def staged_path(self, shard: int) -> str:
    return os.path.join(self.build_dir, self.shard_name(shard))

  def final_path(self, shard: int) -> str:
    return os.path.join(self.output_dir, self.shard_name(shard))

  def read_marker(self, shard: int) -> dict | None:
    if not tf.io.gfile.exists(self.marker_path(shard)):
      return None
    with tf.io.gfile.GFile(self.marker_path(shard)) as f:
      return json.load(f)

  def check_or_save_config(self, label_names: Sequence[str]):
    """Refuses to resume a conversion made with other settings; a new one saves them, with the class names for the
    splits converted next (_check_labels_match_other_splits)."""
    path = os.path.join(self.build_dir, "config.json")
    wanted = dataclasses.asdict(self.config)
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        found = json.load(f)
      changed = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
      if found.get("label_names") == list(label_names):
        changed.pop("labels_sha256", None)  # the same classes, saved otherwise (line ends, quoting)
      if changed:
        raise ValueError(
          f"{path}: this split was started with other settings (setting: (then, now)) {changed}; rerun with the "
          f"earlier flags, or remove {self.build_dir} to convert split {self.config.split!r} again with these (the "
          "other splits of the folder stay as they are), or use another --output_dir."
        )
      return
    tf.io.gfile.makedirs(self.build_dir)
    with tf.io.gfile.GFile(path, "w") as f:
      json.dump({**wanted, "label_names": list(label_names)}, f, indent=2)

  def write_shard(self, shard: int, results: Iterator[tuple[bytes | None, str | None]], progress: tqdm.tqdm):
    """Writes a shard from its videos' results, then marks it done."""
    staged = self.staged_path(shard)
    num_examples, skipped = 0, []
    with tf.io.TFRecordWriter(staged + ".tmp") as writer:
      for index in self.shard_range(shard):
        example, reason = next(results)
        if reason is None:
          writer.write(example)
          num_examples += 1
        else:
          path = self.records[index].path
          logging.warning("Skipping video %s: %s", path, reason)
          skipped.append({"annotation_index": index, "path": path, "reason": reason})
        progress.update()
    tf.io.gfile.rename(staged + ".tmp", staged, overwrite=True)
    marker = {"num_examples": num_examples, "num_bytes": tf.io.gfile.stat(staged).length, "skipped": skipped}
    with tf.io.gfile.GFile(self.marker_path(shard), "w") as f:
      json.dump(marker, f, indent=2)

  def publish(self):
    """Moves the finished shards next to the other splits, and removes the split's shards of an earlier build (one
    whose _build/<split> was removed to convert it again) that these do not replace: of another number of shards,
    they would only take space."""
    for shard in range(self.num_shards):
      if tf.io.gfile.exists(self.staged_path(shard)):
        tf.io.gfile.rename(self.staged_path(shard), self.final_path(shard), overwrite=True)
    ours = {self.final_path(shard) for shard in range(self.num_shards)}
    pattern = os.path.join(self.output_dir, f"{self.config.name}-{self.config.split}.tfrecord-*-of-*")
    for path in tf.io.gfile.glob(pattern):
      if path not in ours:
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(os.path.join(self.build_dir, "published"), "w") as f:
      f.write("The shards of this split are in the dataset folder.\n")

  def is_published(self) -> bool:
    return tf.io.gfile.exists(os.path.join(self.build_dir, "published"))


def _results_in_order(submitted: collections.deque) -> Iterator[tuple[bytes | None, str | None]]:
  """The workers' results in the order of their tasks, each future let go once read (a split's videos would otherwise
  all stay in memory), waited for in short steps: a signal that the kernel hands to another thread of this process
  runs its handler when the main thread next runs Python code, which a wait without a timeout would put off until the
  next result (forever, for a read that hangs)."""
  while submitted:
    future = submitted.popleft()
    while True:
      try:
        yield future.result(timeout=_SIGNAL_CHECK_SECONDS)
        break
      except futures.TimeoutError:
        continue


def _kill_workers(pool: futures.ProcessPoolExecutor):
  # No public way before Python 3.14's ProcessPoolExecutor.kill_workers.
  for process in list(pool._processes.values()):
    process.kill()


def _sha256(path: str) -> str:
  with tf.io.gfile.GFile(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _published_splits(output_dir: str) -> tuple[list[tfds.core.SplitInfo], dict[str, dict]]:
  """Split infos and read-back metadata of every finished split, from markers.

  The metadata of a split (metadata.json) lets a reader find the record of an
  annotation line: `annotation_count` lines, `videos_per_shard` lines per
  shard, and the `skipped` ones (with path and reason) that have no record;
  `fps` and `max_frames` are the caps on the frames stored (None: none).
  """
  split_infos, metadata = [], {}
  for path in sorted(tf.io.gfile.glob(os.path.join(output_dir, "_build", "*", "published"))):
    build_dir = os.path.dirname(path)
    with tf.io.gfile.GFile(os.path.join(build_dir, "config.json")) as f:
      config = json.load(f)
    shards = []
    for marker in sorted(tf.io.gfile.glob(os.path.join(build_dir, "*.done.json"))):
      with tf.io.gfile.GFile(marker) as f:
        shards.append(json.load(f))
    split = config["split"]
    split_infos.append(
      tfds.core.SplitInfo(
        name=split, shard_lengths=[s["num_examples"] for s in shards], num_bytes=sum(s["num_bytes"] for s in shards)
      )
    )
    split_metadata = tfds_format.SplitMetadata(
      annotation_count=sum(s["num_examples"] + len(s["skipped"]) for s in shards),
      videos_per_shard=config["videos_per_shard"],
      skipped=tuple(v for s in shards for v in s["skipped"]),
    )
    # The caps on the frames stored, for a reader to compare with the frames its model takes (a folder copied
    # without _build/ keeps them).
    metadata[split] = {**split_metadata.to_json(), "fps": config["fps"], "max_frames": config["max_frames"]}
  return split_infos, metadata


def _check_labels_match_other_splits(output_dir: str, config: BuildConfig, label_names: Sequence[str]):
  """All splits of one dataset share the label list stored in features.json: the same class names, in the same order
  (as read: a file saved with other line ends or quoting is the same list)."""
  # Sorted, so that the split an error names does not depend on the file system.
  for path in sorted(tf.io.gfile.glob(os.path.join(output_dir, "_build", "*", "config.json"))):
    with tf.io.gfile.GFile(path) as f:
      other = json.load(f)
    if other["split"] == config.split:
      continue
    where = f"--labels differs from the label list that split '{other['split']}' was converted with ({path})"
    other_names = other.get("label_names")
    if other_names is None:  # a split started before config.json held the names: only the file's hash tells
      if other["labels_sha256"] != config.labels_sha256:
        raise ValueError(f"{where}; one dataset folder holds one label list.")
    elif other_names != list(label_names):
      raise ValueError(
        f"{where}: {annotations.first_difference(other_names, label_names)}; one dataset folder holds one label list."
      )
    if other["name"] != config.name:
      raise ValueError(
        f"--name={config.name} differs from the name '{other['name']}' of split '{other['split']}' ({path})."
      )


def _check_settings(*, name, split, short_side, fps, max_frames, jpeg_quality, videos_per_shard, max_bad_fraction):
  problems = []
  # Both end up in shard file names that TFDS parses back.
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    problems.append(f"name={name!r} must be a lower_snake_case identifier")
  if not re.fullmatch(r"[A-Za-z0-9_]+", split):
    problems.append(f"split={split!r} must be letters, digits and _")
  if short_side < 1:
    problems.append(f"short_side={short_side} must be positive")
  if fps is not None and not 0 < fps < math.inf:  # NaN too
    problems.append(f"fps={fps} must be a positive number")
  if max_frames is not None and max_frames < 1:
    problems.append(f"max_frames={max_frames} must be positive")
  if not 1 <= jpeg_quality <= 100:
    problems.append(f"jpeg_quality={jpeg_quality} must be in [1, 100]")
  if videos_per_shard < 1:
    problems.append(f"videos_per_shard={videos_per_shard} must be positive")
  if not 0 <= max_bad_fraction <= 1:
    problems.append(f"max_bad_fraction={max_bad_fraction} must be in [0, 1]")
  if problems:
    raise ValueError("; ".join(problems))


def build_split(
  *,
  annotations_path: str,
  root: str,
  labels_path: str,
  output_dir: str,
  split: str = "train",
  name: str = "videos",
  short_side: int = 256,
  fps: float | None = None,
  max_frames: int | None = None,
  jpeg_quality: int = 90,
  videos_per_shard: int = 64,
  num_workers: int = 0,
  max_bad_fraction: float = 0.01,
) -> tfds.core.DatasetBuilder:
  """Converts one split (resuming where a previous run stopped).

  Args:
    annotations_path: `relative/path.mp4 label` lines.
    root: folder or uncompressed .tar that the paths are relative to.
    labels_path: `id,name` CSV of the classes.
    output_dir: dataset folder; several splits can share it.
    split: TFDS split name for these videos.
    name: TFDS dataset name (a lower_snake_case identifier).
    short_side: frames whose short side is longer are resized down to it.
    fps: keep at most this many frames per second of video.
    max_frames: keep at most this many frames per video, evenly spread.
    jpeg_quality: JPEG quality of the stored frames (1-100).
    videos_per_shard: annotation lines per shard (the unit of resumption).
    num_workers: processes that decode and encode videos; 0 works in-process.
    max_bad_fraction: the share of unreadable videos above which the build
      stops with an error (as it does when no video can be read).

  Returns:
    The TFDS builder of `output_dir`, once its metadata is written.
  """
  _check_settings(
    name=name,
    split=split,
    short_side=short_side,
    fps=fps,
    max_frames=max_frames,
    jpeg_quality=jpeg_quality,
    videos_per_shard=videos_per_shard,
    max_bad_fraction=max_bad_fraction,
  )
  label_names = annotations.read_label_list(labels_path)
  records = annotations.read_annotations(annotations_path, len(label_names))
  # Here, not in each worker, whose error would only break the pool.
  video_decode.check_root(root)
  config = BuildConfig(
    name=name,
    split=split,
    annotations_sha256=_sha256(annotations_path),
    labels_sha256=_sha256(labels_path),
    short_side=short_side,
    fps=fps,
    max_frames=max_frames,
    jpeg_quality=jpeg_quality,
    videos_per_shard=videos_per_shard,
  )
  writer = SplitWriter(output_dir, config, records)
  _check_labels_match_other_splits(output_dir, config, label_names)
  writer.check_or_save_config(label_names)

  if not writer.is_published():
    todo = [s for s in range(writer.num_shards) if writer.read_marker(s) is None]
    tasks = [(i, records[i]) for s in todo for i in writer.shard_range(s)]
    done = len(records) - len(tasks)
    # A live bar on a terminal; elsewhere (CI, SLURM, a log file) a plain line per shard written.
    progress = tqdm.tqdm(total=len(records), initial=done, unit="video", desc=f"{name}/{split}", disable=None)
    pool = None
    try:
      if num_workers:
        # Spawned, not forked: TensorFlow's threads do not survive a fork. The workers start (here, at the first
        # tasks) with SIGINT and SIGTERM blocked, as the mask passes to child processes: Ctrl-C reaches every process
        # of the terminal, and only this one decides how to stop (a worker would print its traceback, from any line).
        # multiprocessing's resource tracker first: its start unblocks both signals in this thread.
        resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
          pool = futures.ProcessPoolExecutor(
            num_workers, multiprocessing.get_context("spawn"), _init_worker, (root, config, label_names)
          )
          submitted = collections.deque(pool.submit(_encode_in_worker, task) for task in tasks)
        finally:
          signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        results = _results_in_order(submitted)
      else:
        results = map(VideoEncoder(root, config, label_names), tasks)
      for shard in todo:
        writer.write_shard(shard, results, progress)
        done += len(writer.shard_range(shard))
        if progress.disable:
          console.info(f"{name}/{split}: {done}/{len(records)} videos (shard {shard + 1}/{writer.num_shards})")
    except BaseException:
      if pool is not None:
        # Stopped or failed: the videos the workers are converting belong to a shard not done, which a rerun
        # converts again; waiting for them would only delay the stop (forever, for a read that hangs).
        _kill_workers(pool)
      raise
    finally:
      progress.close()
      if pool is not None:
        pool.shutdown(cancel_futures=True)

    markers = [writer.read_marker(s) for s in range(writer.num_shards)]
    skipped = [f for m in markers for f in m["skipped"]]
    # A split of no video is no data set, whatever the fraction allows.
    if len(skipped) > max_bad_fraction * len(records) or len(skipped) == len(records):
      raise TooManyBadVideosError(
        f"{len(skipped)} of {len(records)} videos of {annotations_path} "
        f"could not be converted (more than --max_bad_fraction="
        f"{max_bad_fraction}, or all), e.g. {skipped[:3]}. All are listed in "
        f"{writer.build_dir}/*.done.json; finished shards are kept: delete "
        "the markers of shards to convert again, or raise "
        "--max_bad_fraction and rerun."
      )
    writer.publish()

  split_infos, metadata = _published_splits(output_dir)
  tfds.folder_dataset.write_metadata(
    data_dir=output_dir,
    features=tfds_format.features(label_names),
    split_infos=split_infos,
    filename_template=tfds_format.FILENAME_TEMPLATE,
    version=tfds_format.DATASET_VERSION,
    metadata=tfds.core.MetadataDict(metadata),
    description="Videos as JPEG frames, by input_pipeline.build_tfds.",
  )
  return tfds.builder_from_directory(output_dir)


_ANNOTATIONS = flags.DEFINE_string("annotations", None, "`relative/path.mp4 label` lines.")
_ROOT = flags.DEFINE_string("root", None, "Folder or uncompressed .tar holding the videos.")
_LABELS = flags.DEFINE_string("labels", None, "`id,name` CSV of the classes.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Dataset folder (local or gs://).")
_SPLIT = flags.DEFINE_string("split", "train", "TFDS split name.")
_NAME = flags.DEFINE_string("name", "videos", "TFDS dataset name.")
_SHORT_SIDE = flags.DEFINE_integer("short_side", 256, "Resize frames down to this short side.", lower_bound=1)
_FPS = flags.DEFINE_float("fps", None, "Keep at most this many frames/s.", lower_bound=0)
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Keep at most this many frames per video.", lower_bound=1)
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality.", lower_bound=1, upper_bound=100)
_VIDEOS_PER_SHARD = flags.DEFINE_integer("videos_per_shard", 64, "Annotation lines per shard.", lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers", os.cpu_count(), "Conversion processes (0: in-process).", lower_bound=0
)
_MAX_BAD_FRACTION = flags.DEFINE_float(
  "max_bad_fraction", 0.01, "Share of bad videos that stops the build.", lower_bound=0, upper_bound=1
)

# What bad input raises: a file missing or unreadable, a malformed one, settings that differ from the split's start.
_INPUT_ERRORS = (OSError, ValueError, TooManyBadVideosError, tf.errors.OpError)


def _stop(signum, frame):
  del frame
  # The first signal stops; later ones would only interrupt that stop with tracebacks.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  raise Stopped(signum)


def main(argv):
  del argv
  console.setup()
  try:
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    console.open_log(os.path.join(_OUTPUT_DIR.value, "_build"))
    builder = build_split(
      annotations_path=_ANNOTATIONS.value,
      root=_ROOT.value,
      labels_path=_LABELS.value,
      output_dir=_OUTPUT_DIR.value,
      split=_SPLIT.value,
      name=_NAME.value,
      short_side=_SHORT_SIDE.value,
      fps=_FPS.value,
      max_frames=_MAX_FRAMES.value,
      jpeg_quality=_JPEG_QUALITY.value,
      videos_per_shard=_VIDEOS_PER_SHARD.value,
      num_workers=_NUM_WORKERS.value,
      max_bad_fraction=_MAX_BAD_FRACTION.value,
    )
  except _INPUT_ERRORS as error:
    console.log_traceback(error)  # one line here
    console.fail(str(error))
  except Stopped as stop:
    logging.info("Stopped by %s.", stop)
    print("stopped: rerun the same command to go on from the shards written", file=sys.stderr, flush=True)
    console.flush()
    # Ended by the signal itself, not by an exit status: a shell then stops the loop or script that ran the command
    # (given 130 or 143 as an exit status, bash goes on to the next command).
    signal.signal(stop.signum, signal.SIG_DFL)
    os.kill(os.getpid(), stop.signum)
  console.info(f"Wrote {_OUTPUT_DIR.value}: {builder.info.splits}")


def run():
  """The console entry point."""
  flags.mark_flags_as_required(["annotations", "root", "labels", "output_dir"])
  app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
  run()
