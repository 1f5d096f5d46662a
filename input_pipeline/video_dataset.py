"""tf.data pipelines of training and evaluation batches decoded on the fly.

Videos are read from a folder or an uncompressed tar (VideoSource), decoded
with PyAV inside tf.numpy_function (libav releases the GIL, so tf.data's
parallel map decodes one video per core) and augmented with TF ops.

Processes. Batch sizes are global: every process reads its own block of
rows of each global batch (process p of P: rows p * b ... (p + 1) * b - 1,
b = batch_size / P), and the global batches are the same whatever the number
of processes. Training: every epoch has its own seeded permutation of the
whole annotation list, cut to whole global batches (the N % batch_size left
over differ from epoch to epoch, as with the official drop_last), and global
batch k holds the videos at slots k * batch_size ... (k + 1) * batch_size - 1
of the stream of epochs. Evaluation: global batch k holds lines
k * batch_size ... of the list, the last batch padded with mask=False rows;
every process yields the same number of batches and no video is dropped.

Determinism and resuming. The training stream is a pure function of the
seed, the global batch size and a *position*: the number of slots of the
stream already read by all processes together. Each clip's frame sampling
and augmentation come from a seed derived from (seed, epoch, slot), so the
same video gets the same clip whichever source and however many processes
read it. Every batch carries `resume_position` (the same value for each
example, and in each process): the position to pass as start_position, with
any number of processes, to continue with exactly the batches that would
have come next. Restoring skips to it without decoding anything.

Exiting. tf.data keeps calling Python from its own threads while an
iterator is alive; if one of them is inside (or entering) such a call when
the interpreter finalises, the process hangs (a TensorFlow limitation that
any numpy_function pipeline has). At exit we therefore make new calls fail
fast and wait until none is running, so that training scripts end normally.

Bad videos. A video that is missing, unreadable, truncated or without frames
is logged with its path and counted in a FailureLog; in training a stand-in
takes its place (a video drawn at random from the list, seeded by the slot,
so that the batch does not depend on who reads it), evaluation masks it
out; each is one warning, the first time it fails. When more distinct
videos than max_failure_fraction of the whole list have failed on a
process (the videos of its share it met, over epochs in training), the
FailureLog holds a TooManyFailuresError (count, allowed share, last path and
reason) and Batches, the pipeline's iterator, raises it, in Python, with the
next batch. Not tf.data: an exception inside a tf.data function reaches the
caller as an OpError whose message is TensorFlow's rendering of the Python
traceback, which its C++ log prints too (once per prefetched batch).
"""

import atexit
from collections.abc import Iterator, Sequence
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time

import numpy as np
import tensorflow as tf

from input_pipeline import annotations
from input_pipeline import augment
from input_pipeline import sampling
from input_pipeline import video_decode
from xclip_jax import console


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


# The videos warned about in this process: each once, though every evaluation of a run reads its list again.
_warned_paths: set[str] = set()
_warned_lock = threading.Lock()


class FailureLog:
  """Thread-safe record of the videos that were skipped; report `count`."""

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0
    self.paths: set[str] = set()
    self._last: tuple[str, str] | None = None  # path and reason of the latest failure
    self._allowed: float | None = None  # set once more videos failed than this allowance
    self._stopped: TooManyFailuresError | None = None

  @property
  def error(self) -> TooManyFailuresError | None:
    """Set once more than the allowed videos failed (or stop() was called); Batches raises it. Its count is of all
    the videos that failed by the time it is read, not only the one that passed the allowance: the pipeline, reading
    ahead, goes on meeting (and warning about) others."""
    with self._lock:
      if self._stopped is not None:
        return self._stopped
      if self._allowed is None:
        return None
      path, reason = self._last
      return TooManyFailuresError(
        f"{console.count(len(self.paths), 'video')} failed to decode, more than "
        f"data.max_failure_fraction allows ({self._allowed:g} here); the last was {path}: {reason}"
      )

  def add(self, path: str, reason: str, max_failures: float):
    """Records a failure; once more than max_failures videos failed, sets `error` (the pipeline goes on)."""
    with self._lock:
      self.count += 1
      first_failure = path not in self.paths
      self.paths.add(path)
      self._last = (path, reason)
      if len(self.paths) > max_failures and self._allowed is None:
        self._allowed = max_failures
    with _warned_lock:
      first_warning = first_failure and path not in _warned_paths
      _warned_paths.add(path)
    if first_warning:
      logging.warning("skipping video %s: %s", path, reason)

  def stop(self, error: "TooManyFailuresError"):
    """Sets `error` (unless one is set already): Batches raises it, outside tf.data, whose errors carry tracebacks."""
    with self._lock:
      if self._stopped is None and self._allowed is None:
        self._stopped = error


@dataclasses.dataclass(frozen=True)
class Batches:
  """A pipeline: its tf.data `dataset`, and its batches as numpy arrays, which stop with its FailureLog's error once
  too many videos failed. An evaluation's also says how many videos its list holds over all processes."""

  dataset: tf.data.Dataset
  failures: FailureLog
  num_videos: int | None = None

  def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
    for batch in self.dataset.as_numpy_iterator():
      # Checked as each batch comes out: the failure that set it may be in a batch still being prefetched.
      error = self.failures.error
      if error is not None:
        raise error
      yield batch


@dataclasses.dataclass(frozen=True)
class _Config:
  """What decoding a record needs; shared by train and eval."""

  records: Sequence[annotations.VideoRecord]
  source: video_decode.VideoSource
  failures: FailureLog


def _load_inputs(annotation_file, video_root, label_list):
  num_classes = len(annotations.read_label_list(label_list))
  records = annotations.read_annotations(annotation_file, num_classes)
  return records, video_decode.VideoSource(video_root)


def process_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  """Rows of every global batch that one process reads."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  if batch_size % process_count:
    raise ValueError(f"the global batch size {batch_size} is not divisible by the {process_count} processes")
  return batch_size // process_count


def _decode_or_skip(config: _Config, record_index: int, choose_indices, max_failures: float):
  """Decoded frames of a record, or None after logging the failure (allowing `max_failures`)."""
  record = config.records[record_index]
  try:
    video_bytes = config.source.read_bytes(record.path)
    frames, _ = video_decode.decode_sampled_frames(video_bytes, choose_indices)
    return frames
  except video_decode.VideoDecodeError as e:
    config.failures.add(record.path, str(e), max_failures)
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


# Stand-ins tried for one slot before the pipeline gives up on the data.
MAX_STAND_INS = 20


class TrainOrder:
  """The training stream: global positions 0, 1, 2, ... -> (epoch, slot, annotation line)."""

  def __init__(self, num_videos: int, seed: int, batch_size: int):
    self.batch_size = batch_size
    self.slots_per_epoch = num_videos // batch_size * batch_size
    if not self.slots_per_epoch:
      raise ValueError(f"{num_videos} videos do not fill one global batch of {batch_size}")
    self._num_videos = num_videos
    self._seed = seed
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
    epoch, slot = divmod(position, self.slots_per_epoch)
    return epoch, slot, int(self._permutation(epoch)[slot])

  def failure_allowance(self, fraction: float) -> float:
    """How many distinct videos may fail on each process, `fraction` of the whole list's: over its epochs a process
    meets up to all of the list's broken videos, so a share of its own slots would stop a long run on a list that
    has no more than `fraction` broken."""
    return fraction * self.slots_per_epoch

  def stand_in(self, epoch: int, slot: int, attempt: int) -> int:
    """The line read in place of the slot's video once it and attempt - 1 stand-ins failed."""
    if attempt > MAX_STAND_INS:
      raise TooManyFailuresError(
        f"the video at slot {slot} of epoch {epoch} and {MAX_STAND_INS} stand-ins for it failed to decode"
      )
    return int(np.random.default_rng([self._seed, epoch, slot, attempt]).integers(self._num_videos))

  def positions(self, start_position: int, process_index: int, process_count: int) -> tf.data.Dataset:
    """This process's positions, its rows of every global batch from start_position on."""
    rows = process_batch_size(self.batch_size, process_index, process_count)
    if start_position % self.batch_size:
      raise ValueError(
        f"start_position {start_position} is not a multiple of the global batch size {self.batch_size}; "
        "pass a batch's resume_position"
      )
    first = start_position + process_index * rows
    return tf.data.Dataset.counter().map(lambda i: first + i // rows * self.batch_size + i % rows)

  def add_resume_position(self, batch):
    """Replaces a batch's stream positions by the position of the next global batch."""
    position = batch.pop("position")
    batch["resume_position"] = tf.fill(tf.shape(position), (position[0] // self.batch_size + 1) * self.batch_size)
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
) -> Batches:
  """Endless stream of this process's training batches.

  Args:
    annotation_file: `relative/path label` lines.
    video_root: folder or uncompressed .tar the paths are relative to.
    label_list: `id,name` CSV of the classes.
    num_frames: T, frames per clip (one per segment).
    input_size: side of the square crops.
    batch_size: examples per global batch; this process yields its
      batch_size // process_count rows of each.
    seed: seeds the epoch order, the frame sampling and the augmentation.
    process_index: this process, in [0, process_count).
    process_count: number of processes reading in parallel.
    max_failure_fraction: share of the list's videos allowed to fail (on each
      process, which meets up to all of them over its epochs).
    start_position: where to start, from a batch's `resume_position`.
    failures: where skipped videos are counted (a fresh log if None).

  Returns:
    Batches of {'video': (b, T, S, S, 3) float32, 'label': (b,) int32,
    'resume_position': (b,) int64}.
  """
  records, source = _load_inputs(annotation_file, video_root, label_list)
  order = TrainOrder(len(records), seed, batch_size)
  positions = order.positions(start_position, process_index, process_count)
  config = _Config(records, source, failures or FailureLog())
  max_failures = order.failure_allowance(max_failure_fraction)

  @python_calls.call()
  def load(position):
    epoch, slot, record_index = order.locate(int(position))
    for attempt in itertools.count(1):
      sampling_rng, augment_seed = clip_seeds(seed, epoch, slot)
      choose = functools.partial(sampling.train_frame_indices, num_segments=num_frames, rng=sampling_rng)
      frames = _decode_or_skip(config, record_index, choose, max_failures)
      if frames is not None:
        return frames, np.int32(records[record_index].label), augment_seed
      try:
        record_index = order.stand_in(epoch, slot, attempt)
      except TooManyFailuresError as error:
        config.failures.stop(error)
      if config.failures.error is not None:
        # No batch from here on is used (Batches raises the error): no more stand-ins to decode.
        return np.zeros((num_frames, input_size, input_size, 3), np.uint8), np.int32(-1), augment_seed

  def decode(position):
    frames, label, augment_seed = tf.numpy_function(load, [position], [tf.uint8, tf.int32, tf.int64], stateful=False)
    return {
      "frames": tf.ensure_shape(frames, [num_frames, None, None, 3]),
      "label": tf.ensure_shape(label, []),
      "augment_seed": tf.ensure_shape(augment_seed, [2]),
      "position": position,
    }

  def augment_clip(example):
    return {
      "video": augment.train_augment(example["frames"], example["augment_seed"], input_size),
      "label": example["label"],
      "position": example["position"],
    }

  # deterministic=True keeps the order (and so resuming exact) even where
  # tf.data options allow reordering.
  dataset = positions.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.map(augment_clip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  dataset = dataset.map(order.add_resume_position)
  return finish(dataset, config.failures)


def finish(dataset: tf.data.Dataset, failures: FailureLog, num_videos: int | None = None) -> Batches:
  """The end of every pipeline here and in tfds_dataset: prefetching, with tf.data's autotuning off, and the Batches
  that stop on `failures`' error.

  Freeing an iterator waits for tf.data's autotuning thread to wake up, and that thread sleeps up to a minute
  between rounds: ending the demo's 5-minute training stream stalled for 15-60 s. Without autotuning, AUTOTUNE
  parallelism is one call per core (what decoding wants; as fast on the 2-core machine) and prefetch buffers still
  grow when they run dry.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return Batches(dataset.prefetch(tf.data.AUTOTUNE).with_options(options), failures, num_videos)


def eval_failure_allowance(fraction: float, num_videos: int) -> float:
  """How many videos may fail on each process of an evaluation of `num_videos` (over all processes): `fraction` of
  the whole list's, as one process may hold them all; the evaluation then checks the sum over processes."""
  return fraction * num_videos


def eval_lines(num_videos: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
  """This process's annotation lines, batch after batch: its rows of every global batch (-1: padding)."""
  rows = process_batch_size(batch_size, process_index, process_count)
  num_batches = -(-num_videos // batch_size)
  lines = np.full(num_batches * batch_size, -1, np.int64)
  lines[:num_videos] = np.arange(num_videos)
  return lines.reshape(num_batches, process_count, rows)[:, process_index].reshape(-1)


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
) -> Batches:
  """This process's evaluation batches, one pass, every video once overall.

  batch_size is global: this process yields its batch_size // process_count
  rows of each global batch. Views are clip-major: view v is clip
  v // num_crops, crop v % num_crops (clips as in
  sampling.eval_frame_indices, crops as in augment.eval_augment).

  Returns:
    Batches of {'video': (b, num_clips * num_crops, T, S, S, 3) float32,
    'label': (b,) int32 (-1 for padding), 'mask': (b,) bool (False for
    padding and for videos that failed), 'index': (b,) int64 line of the
    video in the annotation file, counting videos from 0 (-1 for padding)}.
  """
  records, source = _load_inputs(annotation_file, video_root, label_list)
  lines = eval_lines(len(records), batch_size, process_index, process_count)
  config = _Config(records, source, failures or FailureLog())
  max_failures = eval_failure_allowance(max_failure_fraction, len(records))

  def choose(num_video_frames):
    return sampling.eval_clips_frame_indices(num_video_frames, num_frames, num_clips)

  @python_calls.call()
  def load(index):
    frames = None if index < 0 else _decode_or_skip(config, int(index), choose, max_failures)
    if frames is None:
      blank = np.zeros((num_clips * num_frames, input_size, input_size, 3), np.uint8)
      return blank, np.int32(-1), False
    return frames, np.int32(records[index].label), True

  def decode_and_crop(index):
    frames, label, ok = tf.numpy_function(load, [index], [tf.uint8, tf.int32, tf.bool], stateful=False)
    views = eval_views(frames, num_frames, input_size, num_clips, num_crops)
    return {"video": views, "label": tf.ensure_shape(label, []), "mask": tf.ensure_shape(ok, []), "index": index}

  dataset = tf.data.Dataset.from_tensor_slices(lines)
  dataset = dataset.map(decode_and_crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  return finish(dataset, config.failures, len(records))
