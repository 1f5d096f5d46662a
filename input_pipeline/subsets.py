"""Few-shot training lists and class subsets for zero-shot evaluation.

Few-shot: K distinct videos per class drawn from a training list with a seed.
Zero-shot: evaluation on a subset of classes, with labels renumbered to the
subset's order (so the text side only gets the subset's class names):
* Kinetics-600: the paper's protocol (X-CLIP follows Chen and Huang,
  "Elaborative Rehearsal for Zero-shot Action Recognition", ICCV 2021): the
  220 Kinetics-600 classes that are new to Kinetics-400, evaluated on three
  published splits of 160 of them, shipped here as
  `KINETICS600_ZERO_SHOT_SPLITS` (read by `read_class_splits`).
* Other datasets: the classes not among the training classes
  (`novel_classes`), in random subsets (`random_class_splits`). Kinetics-600
  renamed 12 Kinetics-400 classes (`KINETICS_400_TO_600_RENAMES`), which a
  plain name match would count as novel (232 classes instead of 220).
* HMDB-51 and UCF-101 use their three official splits, which users give as
  annotation files (annotations.read_annotations reads them).
"""

import collections
from collections.abc import Mapping, Sequence
import json
import pathlib

import numpy as np

from input_pipeline import annotations
from xclip_jax import console


def k_shot_subset(
  records: Sequence[annotations.VideoRecord],
  num_classes: int,
  shots: int,
  seed: int,
  *,
  list_path: str | None = None,
  class_names: Sequence[str] | None = None,
) -> list[annotations.VideoRecord]:
  """K distinct videos of every class, chosen with the seed, in the list's order.

  A video listed on several lines (or spelt two ways, `a.mp4` and `./a.mp4`) counts once: it is drawn at most once,
  as its first line, and a class needs K distinct videos. For a list without repeats the draw is the one of earlier
  versions (the same seed gives the same subset).

  Args:
    records: the videos of the training list.
    num_classes: the classes of the label list, 0..num_classes-1.
    shots: K.
    seed: chooses the videos.
    list_path: the file the records were read from, for the error to name.
    class_names: the label list's names, for the error to name the class.

  Raises:
    ValueError: a class of the label list has fewer than `shots` distinct videos.
  """
  if shots < 1:
    raise ValueError(f"shots must be positive, got {shots}")
  first_positions = collections.defaultdict(dict)  # label -> {same_video(path): the position of its first line}
  lines_by_class = collections.Counter()
  for position, record in enumerate(records):
    first_positions[record.label].setdefault(annotations.same_video(record.path), position)
    lines_by_class[record.label] += 1
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    # In the list's order: without repeats, the positions (and so the draw) are those of every line of the class.
    positions = list(first_positions[label].values())
    if len(positions) < shots:
      name = f" ({class_names[label]!r})" if class_names is not None else ""
      where = f"{list_path}: " if list_path is not None else ""
      lines = lines_by_class[label]
      on_lines = f" (listed on {console.count(lines, 'line')})" if lines != len(positions) else ""
      raise ValueError(
        f"{where}class {label}{name} has {console.count(len(positions), 'video')}{on_lines} in the list, fewer than "
        f"{shots} shots"
      )
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


# The three splits of Kinetics-600's 220 novel classes, as names (see the file's "source").
KINETICS600_ZERO_SHOT_SPLITS = pathlib.Path(__file__).with_name("kinetics600_zero_shot.json")

# Kinetics-400 classes that Kinetics-600 names differently: the same actions, so known, not novel.
KINETICS_400_TO_600_RENAMES = {
  "baby waking up": "waking up",
  "balloon blowing": "inflating balloons",
  "changing wheel": "changing wheel (not on bike)",
  "cooking sausages": "cooking sausages (not on barbeque)",
  "dying hair": "dyeing hair",
  "garbage collecting": "person collecting garbage",
  "hugging": "hugging (not baby)",
  "making bed": "making the bed",
  "opening bottle": "opening bottle (not wine)",
  "passing American football (not in game)": "passing american football (not in game)",
  "throwing ball": "throwing ball (not baseball or American football)",
  "tying tie": "tying necktie",
}


def novel_classes(
  known_names: Sequence[str], names: Sequence[str], renames: Mapping[str, str] = KINETICS_400_TO_600_RENAMES
) -> list[int]:
  """Ids (into names) of the classes that are not known: neither among known_names nor a known class renamed."""
  known = set(known_names) | {renames[name] for name in known_names if name in renames}
  return [class_id for class_id, name in enumerate(names) if name not in known]


def read_class_splits(path, names: Sequence[str]) -> list[list[int]]:
  """The class splits of a JSON file ({"splits": [[class name, ...], ...]}) as ids into names.

  Raises:
    ValueError: the file is not such a list (or lists no split, or an empty one), a split repeats a class, or names a
      class that names lacks.
  """
  form = "{'splits': [[name, ...], ...]}"
  try:
    splits = json.loads(pathlib.Path(path).read_text())["splits"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{path}: not a class-splits file ({form}): {error}") from None
  if not isinstance(splits, list) or not splits:  # no split: the evaluation's mean and std would be NaN
    raise ValueError(f"{path}: lists no class split ({form})")
  ids = {name: class_id for class_id, name in enumerate(names)}
  result = []
  for i, split in enumerate(splits):
    if not isinstance(split, list) or not split or not all(isinstance(name, str) for name in split):
      raise ValueError(f"{path}: split {i + 1} is not a list of class names ({form})")
    missing = [name for name in split if name not in ids]
    if missing:
      raise ValueError(f"{path}: split {i + 1} names {len(missing)} classes not in the label list, e.g. {missing[:3]}")
    repeated = sorted({name for name in split if split.count(name) > 1})
    if repeated:
      raise ValueError(f"{path}: split {i + 1} repeats classes: {repeated[:3]}")
    result.append([ids[name] for name in split])
  return result


def random_class_splits(
  class_ids: Sequence[int], num_splits: int = 3, split_size: int = 160, seed: int = 0
) -> list[list[int]]:
  """num_splits random subsets of split_size classes each, sorted, seeded."""
  if not 0 < split_size <= len(class_ids):
    raise ValueError(f"cannot draw {split_size} of {len(class_ids)} classes")
  rng = np.random.default_rng(seed)
  return [sorted(rng.choice(class_ids, split_size, replace=False).tolist()) for _ in range(num_splits)]
