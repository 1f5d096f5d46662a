"""The TFDS records format that `build_tfds` writes and `tfds_dataset` reads.

A dataset folder holds, per split, TFRecord shards of one example per readable video (`features`), written in the
order of the annotation file: shard k holds the records of annotation lines [k * videos_per_shard,
(k + 1) * videos_per_shard), less the lines whose video could not be converted. `metadata.json` holds, per split, a
`SplitMetadata`: how many lines, how many per shard, and which were skipped (with path and reason). With it a reader
finds the record of any annotation line (`record_locations`) without scanning the shards.
"""

from collections.abc import Mapping, Sequence
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

DATASET_VERSION = "1.0.0"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def features(label_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """One video: its frames as JPEGs, their count, its label, its path and its line in the annotation file."""
  return tfds.features.FeaturesDict(
    {
      "frames": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
      "num_frames": tfds.features.Scalar(np.int64),
      "label": tfds.features.ClassLabel(names=label_names),
      "path": tfds.features.Text(),
      "annotation_index": tfds.features.Scalar(np.int64),
    }
  )


@dataclasses.dataclass(frozen=True)
class SplitMetadata:
  """A split's entry in metadata.json.

  skipped: {"annotation_index", "path", "reason"} of each video without a record.
  """

  annotation_count: int
  videos_per_shard: int
  skipped: tuple[dict, ...]

  def to_json(self) -> dict:
    return {
      "annotation_count": self.annotation_count,
      "videos_per_shard": self.videos_per_shard,
      "skipped": list(self.skipped),
    }

  @classmethod
  def from_json(cls, value: Mapping) -> "SplitMetadata":
    return cls(value["annotation_count"], value["videos_per_shard"], tuple(value["skipped"]))


def record_locations(metadata: SplitMetadata, shard_lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """(shard, offset) of each annotation line's record, -1 for the skipped lines.

  Raises ValueError when the shards hold another number of records than the metadata accounts for.
  """
  present = np.ones(metadata.annotation_count, bool)
  present[[v["annotation_index"] for v in metadata.skipped]] = False
  if present.sum() != sum(shard_lengths):
    raise ValueError(
      f"the split has {sum(shard_lengths)} records but its metadata accounts for {present.sum()} (of "
      f"{metadata.annotation_count} lines, {len(metadata.skipped)} skipped)"
    )
  shard = np.arange(metadata.annotation_count) // metadata.videos_per_shard
  # Rank of each record in the split minus the records of earlier shards.
  first_rank = np.concatenate([[0], np.cumsum(shard_lengths)])[shard]
  offset = np.cumsum(present) - 1 - first_rank
  return np.where(present, shard, -1), np.where(present, offset, -1)
