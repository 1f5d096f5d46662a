"""Few-shot training lists and class subsets for zero-shot evaluation.

Few-shot: K videos per class drawn from a training list with a seed.
Zero-shot: evaluation on a subset of classes, with labels renumbered to the
subset's order (so the text side only gets the subset's class names):
* Kinetics-600 novel classes are the K600 classes whose names are not in
  Kinetics-400, split into three random subsets of 160 as in the X-CLIP
  paper. Matching by name gives 232 novel classes with the official label
  lists (the paper counts 220, treating some renamed K400 classes such as
  'dying hair' -> 'dyeing hair' as known); for the published splits, pass
  their class ids to restrict_to_classes.
* HMDB-51 and UCF-101 use their three official splits, which users give as
  annotation files (annotations.read_annotations reads them).
"""

import collections
from collections.abc import Sequence

import numpy as np

from input_pipeline import annotations


def k_shot_subset(
  records: Sequence[annotations.VideoRecord], num_classes: int, shots: int, seed: int
) -> list[annotations.VideoRecord]:
  """K videos of every class, chosen with the seed, in the list's order.

  Raises:
    ValueError: a class of the label list has fewer than `shots` videos.
  """
  if shots < 1:
    raise ValueError(f"shots must be positive, got {shots}")
  positions_by_class = collections.defaultdict(list)
  for position, record in enumerate(records):
    positions_by_class[record.label].append(position)
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    positions = positions_by_class[label]
    if len(positions) < shots:
      raise ValueError(f"class {label} has {len(positions)} videos in the list, fewer than {shots} shots")
    chosen.extend(rng.choice(positions, shots, replace=False).tolist())
  return [records[position] for position in sorted(chosen)]


def restrict_to_classes(
  records: Sequence[annotations.VideoRecord], class_ids: Sequence[int]
) -> list[annotations.VideoRecord]:
  """Keeps the videos of class_ids; label class_ids[i] becomes i."""
  new_label = {class_id: i for i, class_id in enumerate(class_ids)}
  if len(new_label) != len(class_ids):
    raise ValueError(f"class ids repeat: {sorted(class_ids)}")
  return [annotations.VideoRecord(r.path, new_label[r.label]) for r in records if r.label in new_label]


def novel_classes(known_names: Sequence[str], names: Sequence[str]) -> list[int]:
  """Ids (into names) of the classes whose name is not among known_names."""
  known = set(known_names)
  return [class_id for class_id, name in enumerate(names) if name not in known]


def random_class_splits(
  class_ids: Sequence[int], num_splits: int = 3, split_size: int = 160, seed: int = 0
) -> list[list[int]]:
  """num_splits random subsets of split_size classes each, sorted, seeded."""
  if not 0 < split_size <= len(class_ids):
    raise ValueError(f"cannot draw {split_size} of {len(class_ids)} classes")
  rng = np.random.default_rng(seed)
  return [sorted(rng.choice(class_ids, split_size, replace=False).tolist()) for _ in range(num_splits)]
