"""Zero-shot evaluation: the paper's protocols over datasets whose classes training never saw.

HMDB-51 and UCF-101 are evaluated on their three official test splits; Kinetics-600 on the three published splits of
160 of its 220 classes new to Kinetics-400 (`input_pipeline.subsets.KINETICS600_ZERO_SHOT_SPLITS`), with labels
renumbered within each split. Results are the mean and standard deviation
over the splits, as the paper reports them.
"""

from collections.abc import Sequence
import dataclasses

from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from input_pipeline import annotations
from input_pipeline import datasets
from input_pipeline import subsets


@dataclasses.dataclass(frozen=True)
class ZeroShotTask:
  """One zero-shot benchmark: a dataset evaluated on several splits (files or class subsets)."""

  name: str
  splits: tuple[datasets.EvalSet, ...]


def tasks(config: ml_collections.ConfigDict, workdir: epath.Path) -> list[ZeroShotTask]:
  """The evaluation sets of `config.zero_shot`, one entry per split, by the fields of each task:
  `class_splits` (a JSON file of class splits, as the Kinetics-600 protocol's), else `known_label_list` (the classes
  not among the known ones, in `num_subsets` random subsets of `subset_size`), else `val_files` are the splits (as
  HMDB-51's and UCF-101's split files). Class subsets are written to workdir as annotation files and label lists."""
  found = []
  for name, task in config.zero_shot.items():
    # Every list read, labels, class names and videos checked, now: not after training.
    label_list = task.label_list
    names = datasets.read_class_names(label_list, f"zero_shot.{name}.label_list")
    root = datasets.check_exists(task.root, f"zero_shot.{name}.root", "folder or .tar")
    files = [datasets.check_exists(f, f"zero_shot.{name}.val_files") for f in task.val_files]
    if not files:
      raise ValueError(f"config.zero_shot.{name}.val_files is empty")
    records_of = {f: annotations.read_annotations(f, len(names)) for f in files}
    if task.get("class_splits"):
      class_splits = subsets.read_class_splits(
        datasets.check_exists(task.class_splits, f"zero_shot.{name}.class_splits"), names
      )
    elif task.get("known_label_list"):
      known = annotations.read_label_list(
        datasets.check_exists(task.known_label_list, f"zero_shot.{name}.known_label_list")
      )
      novel = subsets.novel_classes(known, names)
      class_splits = subsets.random_class_splits(novel, task.num_subsets, task.subset_size, task.seed)
    else:
      for f, records in records_of.items():
        datasets.check_videos_present(config, records, f, root)
      splits = [datasets.EvalSet(f"{name}/split{i + 1}", f, root, label_list, names) for i, f in enumerate(files)]
      found.append(ZeroShotTask(name, tuple(splits)))
      continue
    records = [r for f in files for r in records_of[f]]
    splits = []
    for i, ids in enumerate(class_splits):
      chosen = subsets.restrict_to_classes(records, ids)
      if not chosen:
        raise ValueError(
          f"config.zero_shot.{name}.val_files list no video of the classes of split {i + 1} "
          f"({', '.join(names[c] for c in ids[:3])}, ...)"
        )
      datasets.check_videos_present(config, chosen, f"split {i + 1} of config.zero_shot.{name}", root)
      directory = workdir / "zero_shot" / name / f"split{i + 1}"
      splits.append(_class_subset(directory, f"{name}/split{i + 1}", records, names, ids, root))
    multihost_utils.sync_global_devices("zero-shot subsets written")
    found.append(ZeroShotTask(name, tuple(splits)))
  return found


def _class_subset(directory, split_name: str, records, names, class_ids, root) -> datasets.EvalSet:
  """The videos of `class_ids`, labels renumbered in their order, written to `directory` (by process 0)."""
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    chosen = subsets.restrict_to_classes(records, class_ids)
    (directory / "val.txt").write_text("".join(f"{r.path} {r.label}\n" for r in chosen))
    annotations.write_label_list(directory / "labels.csv", [names[c] for c in class_ids])
  subset_names = tuple(names[c] for c in class_ids)
  return datasets.EvalSet(split_name, str(directory / "val.txt"), root, str(directory / "labels.csv"), subset_names)


def summary(results: Sequence[dict]) -> dict:
  """Mean and standard deviation over splits, as the paper reports them (the population std, ddof 0; the paper does
  not say which)."""
  top1 = np.array([r["top1"] for r in results])
  top5 = np.array([r["top5"] for r in results])
  return {
    "splits": list(results),
    "top1_mean": float(top1.mean()),
    "top1_std": float(top1.std()),
    "top5_mean": float(top5.mean()),
    "top5_std": float(top5.std()),
  }


def top1_text(summary: dict) -> str:
  """'44.6 +- 1.2%': one decimal, as the paper gives zero-shot results."""
  return f"{100 * summary['top1_mean']:.1f} +- {100 * summary['top1_std']:.1f}%"
