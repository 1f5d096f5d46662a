"""tf.data pipelines of training and evaluation batches from build_tfds records.

The batches, the host split, the evaluation padding and mask, and the
resumable training stream are those of video_dataset for the annotation file
the records were built from: the same TrainOrder over the annotation lines,
the same per-clip seeds (video_dataset.clip_seeds) and frame sampling, the
same augmentation. So a run can switch between decoding mp4s and reading
records and get the same clips, up to the JPEG re-encoding of the frames
(and the short-side resize and frame-rate cap of the build, if any: frame
indices then count the stored frames).

Reading. Each clip reads its video's record at its place in the stream:
`TFRecordDataset(shard).skip(offset).take(1)` skips records by their length
headers (a seek, not a read), inside a parallel, deterministic interleave.
Then only the T sampled JPEGs of the clip are decoded. Everything is a TF op
except choosing which record and which frames (microseconds of numpy per
clip, the same functions as video_dataset so that the clips agree).

Videos that the build skipped (listed in the dataset's metadata.json) have no
record: they are logged, counted in the FailureLog and replaced by the same
stand-in as an unreadable mp4 in video_dataset, or masked out in evaluation.
The folder may be on cloud storage (gs://...), which TFDS and tf.data read.
"""

from collections.abc import Sequence
import dataclasses
import itertools
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import augment
from input_pipeline import sampling
from input_pipeline import tfds_format
from input_pipeline import video_dataset

# Records read at once by the interleave; enough to overlap file opening.
_READ_CYCLE = 16


@dataclasses.dataclass(frozen=True)
class RecordIndex:
  """Where the record of each annotation line of a split lives.

  shard[i], offset[i]: file and position of line i's record (-1 if skipped);
  skipped: annotation line -> (path, reason) of the videos without a record.
  max_frames: build_tfds --max_frames, the most frames a record holds (None: no cap, or a build that did not say).
  """

  filepaths: Sequence[str]
  features: tfds.features.FeaturesDict
  shard: np.ndarray
  offset: np.ndarray
  skipped: dict[int, tuple[str, str]]
  max_frames: int | None = None

  @property
  def num_videos(self) -> int:
    return len(self.shard)

  @classmethod
  def load(cls, data_dir: str, split: str, field: str | None = None) -> "RecordIndex":
    """The index of `split`; `field`, the config field that named the split, if any, for the error where it is not
    there."""
    builder = tfds.builder_from_directory(data_dir)
    metadata = builder.info.metadata
    if metadata is None or split not in metadata:
      built = ", ".join(repr(name) for name in sorted(metadata or ())) or "none"
      named = f" ({field})" if field else ""
      choose = f", or set --{field} to a split built ({built})" if field else f" (splits built: {built})"
      raise ValueError(
        f"{data_dir}: no build_tfds metadata for split {split!r}{named} in metadata.json; convert the videos with "
        f"python -m input_pipeline.build_tfds --split={split}{choose}"
      )
    split_info = builder.info.splits[split]
    split_metadata = tfds_format.SplitMetadata.from_json(metadata[split])
    try:
      shard, offset = tfds_format.record_locations(split_metadata, split_info.shard_lengths)
    except ValueError as error:
      raise ValueError(f"{data_dir}: split {split!r}: {error}") from None
    # Counted and warned about as the videos that fail to decode when read from mp4s, saying where they went.
    skipped = {
      v["annotation_index"]: (v["path"], f"left out by build_tfds: {v['reason']}") for v in split_metadata.skipped
    }
    return cls(
      filepaths=[os.fspath(p) for p in split_info.filepaths],
      features=builder.info.features,
      shard=shard,
      offset=offset,
      skipped=skipped,
      max_frames=_max_frames(data_dir, split, metadata[split]),
    )


def _max_frames(data_dir: str, split: str, split_metadata) -> int | None:
  """The split's build_tfds --max_frames: from metadata.json, or, for a folder built before it said so there, from
  the build's _build/<split>/config.json (None where neither is left)."""
  if "max_frames" in split_metadata:
    return split_metadata["max_frames"]
  build_config = os.path.join(data_dir, "_build", split, "config.json")
  try:
    with tf.io.gfile.GFile(build_config) as f:
      return json.load(f).get("max_frames")
  except (tf.errors.OpError, OSError, ValueError, AttributeError):  # not there, unreadable, not a JSON object
    return None


def _read_records(elements: tf.data.Dataset, index: RecordIndex) -> tf.data.Dataset:
  """Adds 'record' (serialized example) to elements with 'shard', 'offset'.

  Elements with shard -1 get an empty record; the order is kept.
  """
  filepaths = tf.constant(index.filepaths)

  def read(element):
    present = element["shard"] >= 0
    records = tf.data.TFRecordDataset(filepaths[tf.maximum(element["shard"], 0)])
    records = records.skip(element["offset"]).take(tf.cast(present, tf.int64))
    records = records.concatenate(tf.data.Dataset.from_tensors(""))
    return records.take(1).map(lambda record: {**element, "record": record})

  return elements.interleave(read, cycle_length=_READ_CYCLE, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _parse(element, index: RecordIndex) -> dict[str, tf.Tensor]:
  """The record's fields, its frames still JPEG-encoded."""
  example = index.features.deserialize_example(element["record"], decoders={"frames": tfds.decode.SkipDecoding()})
  tf.debugging.assert_equal(
    example["annotation_index"],
    element["annotation_index"],
    message="record does not belong to its annotation line: metadata.json does not match the shards",
  )
  return example


def _decode_jpegs(jpegs: tf.Tensor, frame_indices: tf.Tensor) -> tf.Tensor:
  """uint8 (len(frame_indices), H, W, 3): decodes only the chosen frames."""
  return tf.map_fn(
    lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3),
    tf.gather(jpegs, frame_indices),
    fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
  )


def make_train_dataset(
  data_dir: str,
  split: str = "train",
  *,
  num_frames: int,
  input_size: int,
  batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  max_failure_fraction: float = 0.01,
  start_position: int = 0,
  failures: video_dataset.FailureLog | None = None,
) -> video_dataset.Batches:
  """Endless stream of this process's training batches, from records.

  Args:
    data_dir: folder written by build_tfds.
    split: the split to read.
    num_frames, input_size, batch_size (global), seed, process_index,
    process_count, max_failure_fraction, start_position, failures: as in
      video_dataset.make_train_dataset.

  Returns:
    Batches of {'video': (b, T, S, S, 3) float32, 'label': (b,) int32,
    'resume_position': (b,) int64}, as video_dataset.make_train_dataset.
  """
  index = RecordIndex.load(data_dir, split)
  order = video_dataset.TrainOrder(index.num_videos, seed, batch_size)
  positions = order.positions(start_position, process_index, process_count)
  failures = failures or video_dataset.FailureLog()
  max_failures = order.failure_allowance(max_failure_fraction)

  @video_dataset.python_calls.call()
  def locate(position):
    epoch, slot, line = order.locate(int(position))
    for attempt in itertools.count(1):
      if line not in index.skipped:
        break
      failures.add(*index.skipped[line], max_failures)
      try:
        line = order.stand_in(epoch, slot, attempt)
      except video_dataset.TooManyFailuresError as error:
        failures.stop(error)  # raised by Batches, outside tf.data; meanwhile this slot reads any record
        line = int(np.flatnonzero(index.shard >= 0)[0])
        break
    return (np.int64(epoch), np.int64(slot), np.int64(line), np.int64(index.shard[line]), np.int64(index.offset[line]))

  def to_element(position):
    epoch, slot, line, shard, offset = tf.numpy_function(locate, [position], [tf.int64] * 5, stateful=False)
    return {
      "position": position,
      "epoch": epoch,
      "slot": slot,
      "annotation_index": line,
      "shard": shard,
      "offset": offset,
    }

  @video_dataset.python_calls.call()
  def choose(epoch, slot, num_video_frames):
    sampling_rng, augment_seed = video_dataset.clip_seeds(seed, int(epoch), int(slot))
    return (sampling.train_frame_indices(int(num_video_frames), num_frames, sampling_rng), augment_seed)

  def decode_and_augment(element):
    example = _parse(element, index)
    frame_indices, augment_seed = tf.numpy_function(
      choose, [element["epoch"], element["slot"], example["num_frames"]], [tf.int64, tf.int64], stateful=False
    )
    frames = _decode_jpegs(example["frames"], tf.ensure_shape(frame_indices, [num_frames]))
    return {
      "video": augment.train_augment(frames, tf.ensure_shape(augment_seed, [2]), input_size),
      "label": tf.cast(example["label"], tf.int32),
      "position": element["position"],
    }

  dataset = positions.map(to_element)
  dataset = _read_records(dataset, index)
  dataset = dataset.map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  dataset = dataset.map(order.add_resume_position)
  return video_dataset.finish(dataset, failures)


def make_eval_dataset(
  data_dir: str,
  split: str,
  *,
  num_frames: int,
  input_size: int,
  batch_size: int,
  num_clips: int = 1,
  num_crops: int = 1,
  process_index: int = 0,
  process_count: int = 1,
  max_failure_fraction: float = 0.01,
  failures: video_dataset.FailureLog | None = None,
) -> video_dataset.Batches:
  """This process's evaluation batches, one pass, every video once overall.

  Args:
    data_dir: folder written by build_tfds.
    split: the split to read.
    num_frames, input_size, batch_size (global), num_clips, num_crops,
    process_index, process_count, max_failure_fraction, failures: as in
      video_dataset.make_eval_dataset.

  Returns:
    Batches of {'video': (b, num_clips * num_crops, T, S, S, 3) float32,
    'label': (b,) int32, 'mask': (b,) bool, 'index': (b,) int64}, as
    video_dataset.make_eval_dataset (views clip-major, -1 and mask=False for
    padding and for videos the build skipped).
  """
  index = RecordIndex.load(data_dir, split)
  lines = video_dataset.eval_lines(index.num_videos, batch_size, process_index, process_count)
  failures = failures or video_dataset.FailureLog()
  max_failures = video_dataset.eval_failure_allowance(max_failure_fraction, index.num_videos)

  @video_dataset.python_calls.call()
  def locate(line):
    if line in index.skipped:
      failures.add(*index.skipped[line], max_failures)
    if line < 0:
      return np.int64(-1), np.int64(-1)
    return np.int64(index.shard[line]), np.int64(index.offset[line])

  def to_element(line):
    shard, offset = tf.numpy_function(locate, [line], [tf.int64] * 2, stateful=False)
    return {"annotation_index": line, "shard": shard, "offset": offset}

  @video_dataset.python_calls.call()
  def choose(num_video_frames):
    return sampling.eval_clips_frame_indices(int(num_video_frames), num_frames, num_clips)

  def decode(element):
    example = _parse(element, index)
    frame_indices = tf.numpy_function(choose, [example["num_frames"]], tf.int64, stateful=False)
    frames = _decode_jpegs(example["frames"], tf.ensure_shape(frame_indices, [num_clips * num_frames]))
    return frames, tf.cast(example["label"], tf.int32)

  def blank():
    return (tf.zeros([num_clips * num_frames, input_size, input_size, 3], tf.uint8), tf.constant(-1, tf.int32))

  def decode_and_crop(element):
    present = element["shard"] >= 0
    frames, label = tf.cond(present, lambda: decode(element), blank)
    return {
      "video": video_dataset.eval_views(frames, num_frames, input_size, num_clips, num_crops),
      "label": label,
      "mask": present,
      "index": element["annotation_index"],
    }

  dataset = tf.data.Dataset.from_tensor_slices(lines).map(to_element)
  dataset = _read_records(dataset, index)
  dataset = dataset.map(decode_and_crop, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  return video_dataset.finish(dataset, failures, index.num_videos)
