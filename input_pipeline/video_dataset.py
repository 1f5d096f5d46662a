"""tf.data pipelines of training and evaluation batches decoded on the fly.

Videos are read from a folder or an uncompressed tar (VideoSource), decoded
with PyAV inside tf.numpy_function (libav releases the GIL, so tf.data's
parallel map decodes one video per core) and augmented with TF ops.

Hosts. Every epoch has its own seeded permutation of the whole annotation
list; process p of P takes the videos at slots p, p + P, p + 2P, ... of it,
for the first (N // P) * P slots, so the processes read disjoint parts with
the same number of videos (the N % P left over differ from epoch to epoch).
Evaluation gives process p the videos p, p + P, ... of the list, pads every
process to the same number of full batches with mask=False entries and never
drops a video.

Determinism and resuming. The training stream is a pure function of the
seed, the process and a *position*: the number of this process's slots
already read (epoch = position // slots_per_epoch). Each clip's frame
sampling and augmentation come from a seed derived from (seed, epoch, slot),
so the same video gets the same clip whichever source it is read from.
Every batch carries `resume_position` (the same value for each example):
the position to pass as start_position to continue with exactly the batches
that would have come next. Restoring skips to it without decoding anything.

Exiting. tf.data keeps calling Python from its own threads while an
iterator is alive; if one of them is inside (or entering) such a call when
the interpreter finalises, the process hangs (a TensorFlow limitation that
any numpy_function pipeline has). At exit we therefore make new calls fail
fast and wait until none is running, so that training scripts end normally.

Bad videos. A video that is missing, unreadable, truncated or without frames
is logged with its path and counted in a FailureLog; training skips it (the
batch takes the next video), evaluation masks it out. When more distinct
videos than max_failure_fraction of a process's list have failed, the
pipeline stops: the iterator raises a tf.errors.OpError whose message is the
TooManyFailuresError's (count, allowed share, last path and reason).
"""

import atexit
from collections.abc import Sequence
import contextlib
import dataclasses
import logging
import threading
import time

import numpy as np
import tensorflow as tf

from input_pipeline import annotations
from input_pipeline import augment
from input_pipeline import sampling
from input_pipeline import video_decode


class TooManyFailuresError(RuntimeError):
  """More videos failed to decode than the configured share allows."""


class _PythonCalls:
  """Tracks tf.data's calls into Python so that the process can exit."""

  def __init__(self):
    self._lock = threading.Lock()
    self._running = 0
    self._closing = threading.Event()

  @contextlib.contextmanager
  def call(self):
    if self._closing.is_set():
      raise RuntimeError("the interpreter is exiting")
    with self._lock:
      self._running += 1
    try:
      yield
    finally:
      with self._lock:
        self._running -= 1

  def close(self, quiet_seconds=0.1, timeout_seconds=30.0):
    """Refuses new calls, then waits until none ran for quiet_seconds."""
    self._closing.set()
    deadline = time.monotonic() + timeout_seconds
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
      with self._lock:
        running = self._running
      now = time.monotonic()
      if running:
        quiet_since = now
      elif now - quiet_since >= quiet_seconds:
        return
      time.sleep(0.01)


# Every numpy_function callback of an input pipeline runs inside
# python_calls.call(), here and in tfds_dataset.
python_calls = _PythonCalls()
atexit.register(python_calls.close)


class FailureLog:
  """Thread-safe record of the videos that were skipped; report `count`."""

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0
    self.paths: set[str] = set()

  def add(self, path: str, reason: str, max_failures: float):
    """Records a failure; raises once more than max_failures videos failed."""
    logging.warning("skipping video %s: %s", path, reason)
    with self._lock:
      self.count += 1
      self.paths.add(path)
      num_failed = len(self.paths)
    if num_failed > max_failures:
      raise TooManyFailuresError(
        f"{num_failed} videos failed to decode, more than the allowed {max_failures:g}; the last was {path}: {reason}"
      )


@dataclasses.dataclass(frozen=True)
class _Config:
  """What decoding a record needs; shared by train and eval."""

  records: Sequence[annotations.VideoRecord]
  source: video_decode.VideoSource
  failures: FailureLog
  max_failures: float


def _load_inputs(annotation_file, video_root, label_list):
  num_classes = len(annotations.read_label_list(label_list))
  records = annotations.read_annotations(annotation_file, num_classes)
  return records, video_decode.VideoSource(video_root)


def check_process(process_index, process_count):
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")


def _decode_or_skip(config: _Config, record_index: int, choose_indices):
  """Decoded frames of a record, or None after logging the failure."""
  record = config.records[record_index]
  try:
    video_bytes = config.source.read_bytes(record.path)
    frames, _ = video_decode.decode_sampled_frames(video_bytes, choose_indices)
    return frames
  except video_decode.VideoDecodeError as e:
    config.failures.add(record.path, str(e), config.max_failures)
    return None


def epoch_permutation(num_videos: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the whole annotation list in one training epoch."""
  return np.random.default_rng([seed, epoch]).permutation(num_videos)


def clip_seeds(seed: int, epoch: int, slot: int) -> tuple[np.random.Generator, np.ndarray]:
  """Frame-sampling generator and augmentation seed of one training clip.

  slot is the index into epoch_permutation, so the clip does not depend on
  the number of processes or on the source the video is read from.
  """
  sampling_seed, augment_seed = np.random.SeedSequence([seed, epoch, slot]).spawn(2)
  return (np.random.default_rng(sampling_seed), augment_seed.generate_state(2).astype(np.int64))


class TrainOrder:
  """Maps a process's stream position to (epoch, slot, record index)."""

  def __init__(self, num_videos: int, seed: int, process_index: int, process_count: int):
    check_process(process_index, process_count)
    self.slots_per_epoch = num_videos // process_count
    if not self.slots_per_epoch:
      raise ValueError(f"{num_videos} videos cannot feed {process_count} processes")
    self._num_videos = num_videos
    self._seed = seed
    self._process_index = process_index
    self._process_count = process_count
    # Parallel readers straddle at most two epochs at a time.
    self._permutations: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    permutation = self._permutations.get(epoch)
    if permutation is None:
      permutation = epoch_permutation(self._num_videos, self._seed, epoch)
      recent = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
      self._permutations = {**recent, epoch: permutation}
    return permutation

  def locate(self, position: int) -> tuple[int, int, int]:
    epoch, step = divmod(position, self.slots_per_epoch)
    slot = step * self._process_count + self._process_index
    return epoch, slot, int(self._permutation(epoch)[slot])


def add_resume_position(batch):
  """Replaces a batch's stream positions by the position that follows it."""
  position = batch.pop("position")
  batch["resume_position"] = tf.fill(tf.shape(position), tf.reduce_max(position) + 1)
  return batch


def make_train_dataset(
  annotation_file: str,
  video_root: str,
  label_list: str,
  *,
  num_frames: int,
  input_size: int,
  batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  max_failure_fraction: float = 0.01,
  start_position: int = 0,
  failures: FailureLog | None = None,
) -> tf.data.Dataset:
  """Endless stream of this process's training batches.

  Args:
    annotation_file: `relative/path label` lines.
    video_root: folder or uncompressed .tar the paths are relative to.
    label_list: `id,name` CSV of the classes.
    num_frames: T, frames per clip (one per segment).
    input_size: side of the square crops.
    batch_size: examples per batch of this process.
    seed: seeds the epoch order, the frame sampling and the augmentation.
    process_index: this process, in [0, process_count).
    process_count: number of processes reading in parallel.
    max_failure_fraction: share of this process's videos allowed to fail.
    start_position: where to start, from a batch's `resume_position`.
    failures: where skipped videos are counted (a fresh log if None).

  Returns:
    A dataset of {'video': (b, T, S, S, 3) float32, 'label': (b,) int32,
    'resume_position': (b,) int64}.
  """
  records, source = _load_inputs(annotation_file, video_root, label_list)
  order = TrainOrder(len(records), seed, process_index, process_count)
  config = _Config(records, source, failures or FailureLog(), max_failure_fraction * order.slots_per_epoch)

  @python_calls.call()
  def load(position):
    epoch, slot, record_index = order.locate(int(position))
    sampling_rng, augment_seed = clip_seeds(seed, epoch, slot)
    frames = _decode_or_skip(config, record_index, lambda n: sampling.train_frame_indices(n, num_frames, sampling_rng))
    if frames is None:
      return (np.zeros((num_frames, 1, 1, 3), np.uint8), np.int32(-1), augment_seed, False)
    return frames, np.int32(records[record_index].label), augment_seed, True

  def decode(position):
    frames, label, augment_seed, ok = tf.numpy_function(
      load, [position], [tf.uint8, tf.int32, tf.int64, tf.bool], stateful=False
    )
    frames = tf.ensure_shape(frames, [num_frames, None, None, 3])
    return {
      "frames": frames,
      "label": tf.ensure_shape(label, []),
      "augment_seed": tf.ensure_shape(augment_seed, [2]),
      "ok": tf.ensure_shape(ok, []),
      "position": position,
    }

  def augment_clip(example):
    return {
      "video": augment.train_augment(example["frames"], example["augment_seed"], input_size),
      "label": example["label"],
      "position": example["position"],
    }

  dataset = tf.data.Dataset.counter(start_position)
  # deterministic=True keeps the order (and so resuming exact) even where
  # tf.data options allow reordering.
  dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.filter(lambda example: example["ok"])
  dataset = dataset.map(augment_clip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(add_resume_position)
  return dataset.prefetch(tf.data.AUTOTUNE)


def eval_batches_per_process(num_videos: int, batch_size: int, process_count: int) -> int:
  """Batches every process yields so that all videos fit, padded."""
  per_process = -(-num_videos // process_count)
  return -(-per_process // batch_size)


def eval_views(frames: tf.Tensor, num_frames: int, input_size: int, num_clips: int, num_crops: int) -> tf.Tensor:
  """(num_clips * num_crops, T, S, S, 3) evaluation views, clip-major.

  frames: uint8 (num_clips * T, H, W, 3), the clips one after the other.
  """
  frames = tf.ensure_shape(frames, [num_clips * num_frames, None, None, 3])
  crops = augment.eval_augment(frames, input_size, num_crops)
  # (crop, clip * T, ...) -> (clip * crop, T, ...): views clip-major.
  crops = tf.reshape(crops, [num_crops, num_clips, num_frames, input_size, input_size, 3])
  return tf.reshape(
    tf.transpose(crops, [1, 0, 2, 3, 4, 5]), [num_clips * num_crops, num_frames, input_size, input_size, 3]
  )


def make_eval_dataset(
  annotation_file: str,
  video_root: str,
  label_list: str,
  *,
  num_frames: int,
  input_size: int,
  batch_size: int,
  num_clips: int = 1,
  num_crops: int = 1,
  process_index: int = 0,
  process_count: int = 1,
  max_failure_fraction: float = 0.01,
  failures: FailureLog | None = None,
) -> tf.data.Dataset:
  """This process's evaluation batches, one pass, every video once overall.

  Views are clip-major: view v is clip v // num_crops, crop v % num_crops
  (clips as in sampling.eval_frame_indices, crops as in
  augment.eval_augment).

  Returns:
    A dataset of {'video': (b, num_clips * num_crops, T, S, S, 3) float32,
    'label': (b,) int32 (-1 for padding), 'mask': (b,) bool (False for
    padding and for videos that failed), 'index': (b,) int64 line of the
    video in the annotation file, counting videos from 0 (-1 for padding)}.
  """
  check_process(process_index, process_count)
  records, source = _load_inputs(annotation_file, video_root, label_list)
  indices = np.arange(process_index, len(records), process_count)
  config = _Config(records, source, failures or FailureLog(), max_failure_fraction * len(indices))
  total = batch_size * eval_batches_per_process(len(records), batch_size, process_count)
  padded = np.concatenate([indices, np.full(total - len(indices), -1, np.int64)])

  def choose(num_video_frames):
    return sampling.eval_clips_frame_indices(num_video_frames, num_frames, num_clips)

  @python_calls.call()
  def load(index):
    frames = None if index < 0 else _decode_or_skip(config, int(index), choose)
    if frames is None:
      blank = np.zeros((num_clips * num_frames, input_size, input_size, 3), np.uint8)
      return blank, np.int32(-1), False
    return frames, np.int32(records[index].label), True

  def decode_and_crop(index):
    frames, label, ok = tf.numpy_function(load, [index], [tf.uint8, tf.int32, tf.bool], stateful=False)
    views = eval_views(frames, num_frames, input_size, num_clips, num_crops)
    return {"video": views, "label": tf.ensure_shape(label, []), "mask": tf.ensure_shape(ok, []), "index": index}

  dataset = tf.data.Dataset.from_tensor_slices(padded)
  dataset = dataset.map(decode_and_crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE)
