"""Zero-shot evaluation: the paper's protocols over datasets whose classes training never saw.

HMDB-51 and UCF-101 are evaluated on their three official test splits; Kinetics-600 on random subsets of the classes
that Kinetics-400 lacks, with labels renumbered within each subset. Results are the mean and standard deviation
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
  """The evaluation sets of `config.zero_shot`: one entry per split (HMDB-51/UCF-101 split files, or K600 novel-class
  subsets, written to workdir as annotation files and label lists)."""
  found = []
  for name, task in config.zero_shot.items():
    label_list = datasets.check_exists(task.label_list, f"zero_shot.{name}.label_list")
    root = datasets.check_exists(task.root, f"zero_shot.{name}.root", "folder or .tar")
    names = annotations.read_label_list(label_list)
    files = [datasets.check_exists(f, f"zero_shot.{name}.val_files") for f in task.val_files]
    if not files:
      raise ValueError(f"config.zero_shot.{name}.val_files is empty")
    if not task.get("known_label_list"):
      splits = [
        datasets.EvalSet(f"{name}/split{i + 1}", f, root, label_list, tuple(names)) for i, f in enumerate(files)
      ]
    else:
      # Novel classes (not among the training classes), in random subsets; labels renumbered within each subset.
      known = annotations.read_label_list(
        datasets.check_exists(task.known_label_list, f"zero_shot.{name}.known_label_list")
      )
      novel = subsets.novel_classes(known, names)
      records = [r for f in files for r in annotations.read_annotations(f, len(names))]
      splits = []
      for i, class_ids in enumerate(subsets.random_class_splits(novel, task.num_subsets, task.subset_size, task.seed)):
        split_dir = workdir / "zero_shot" / name / f"subset{i + 1}"
        if jax.process_index() == 0:
          split_dir.mkdir(parents=True, exist_ok=True)
          chosen = subsets.restrict_to_classes(records, class_ids)
          (split_dir / "val.txt").write_text("".join(f"{r.path} {r.label}\n" for r in chosen))
          (split_dir / "labels.csv").write_text(
            "id,name\n" + "".join(f"{j},{names[c]}\n" for j, c in enumerate(class_ids))
          )
        subset_names = tuple(names[c] for c in class_ids)
        splits.append(
          datasets.EvalSet(
            f"{name}/subset{i + 1}", str(split_dir / "val.txt"), root, str(split_dir / "labels.csv"), subset_names
          )
        )
      multihost_utils.sync_global_devices("zero-shot subsets written")
    found.append(ZeroShotTask(name, tuple(splits)))
  return found


def summary(results: Sequence[dict]) -> dict:
  """Mean and standard deviation over splits, as the paper reports them."""
  top1 = np.array([r["top1"] for r in results])
  top5 = np.array([r["top5"] for r in results])
  return {
    "splits": list(results),
    "top1_mean": float(top1.mean()),
    "top1_std": float(top1.std()),
    "top5_mean": float(top5.mean()),
    "top5_std": float(top5.std()),
  }
