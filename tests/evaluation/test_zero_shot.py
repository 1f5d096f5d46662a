"""A zero-shot evaluation of Kinetics-600 runs on exactly the classes of each published split, renumbered."""

import json

import jax
import ml_collections
import pytest

from input_pipeline import annotations
from input_pipeline import subsets
from tests.fixtures import tiny
from tests.fixtures import video_fixtures
from xclip_jax.evaluation import evaluate
from xclip_jax.evaluation import zero_shot
from xclip_jax.parallel import sharding


def _with_class_splits(config, tmp_path, name, label_list, class_splits):
  """`config` with the zero-shot task `name`: the classes of each split of `class_splits` among `label_list`, over
  tmp_path's val.txt and videos/."""
  with config.unlocked():
    config.zero_shot = ml_collections.ConfigDict(
      {
        name: {
          "root": str(tmp_path / "videos"),
          "val_files": (str(tmp_path / "val.txt"),),
          "label_list": str(label_list),
          "class_splits": str(class_splits),
        }
      }
    )
  return config


def _with_kinetics600_protocol(config, labels_dir, tmp_path):
  """`config` with the K600 zero-shot task over tmp_path's val.txt and videos/."""
  labels = labels_dir / "kinetics_600_labels.csv"
  return _with_class_splits(config, tmp_path, "k600_novel", labels, subsets.KINETICS600_ZERO_SHOT_SPLITS)


def test_each_split_evaluates_its_160_classes_and_only_their_videos(labels_dir, tmp_path):
  k600 = annotations.read_label_list(labels_dir / "kinetics_600_labels.csv")
  published = json.loads(subsets.KINETICS600_ZERO_SHOT_SPLITS.read_text())["splits"]
  # Videos of: a class of splits 1 and 2 but not 3 ("acting in play"), a class of splits 1 and 3 but not 2
  # ("adjusting glasses"), and a Kinetics-400 class (never evaluated).
  classes = ["acting in play", "adjusting glasses", "abseiling"]
  lines = []
  for i, name in enumerate(classes):
    video_fixtures.write_indexed_video(tmp_path / "videos" / f"{i}.mp4", num_frames=8)
    lines.append(f"{i}.mp4 {k600.index(name)}\n")
  (tmp_path / "val.txt").write_text("".join(lines))
  config = _with_kinetics600_protocol(tiny.experiment_config(eval_batch_size=1), labels_dir, tmp_path)
  (task,) = zero_shot.tasks(config, tmp_path / "workdir")
  assert [split.class_names for split in task.splits] == [tuple(names) for names in published]

  model = tiny.model()
  mesh = sharding.make_mesh(config.mesh)
  param_shardings = sharding.tree_shardings(model.params, mesh)
  eval_step = evaluate.make_eval_step(model.module, mesh, param_shardings)
  params = jax.device_put(model.params, param_shardings)
  text_encoder = evaluate.make_text_encoder(model.module)
  expected_videos = {1: ["acting in play", "adjusting glasses"], 2: ["acting in play"], 3: ["adjusting glasses"]}
  for number, eval_set in enumerate(task.splits, start=1):
    results = evaluate.run_eval_set(config, eval_set, eval_step, text_encoder, params, mesh, 1, 1)
    assert sorted(results["per_class"]) == expected_videos[number]
    # 160 classes to choose from; each video counted once, in the row (true class) of its class's place in the split.
    assert len(results["confusion_matrix"]) == 160
    rows = [i for i, row in enumerate(results["confusion_matrix"]) if sum(row)]
    assert rows == sorted(published[number - 1].index(name) for name in expected_videos[number])
    assert results["num_videos"] == len(expected_videos[number])


def test_a_split_whose_classes_have_no_video_is_refused_naming_the_config_field(labels_dir, tmp_path):
  """Not the generated split's file: the user's val_files lack its classes (here: only a Kinetics-400 class)."""
  k600 = annotations.read_label_list(labels_dir / "kinetics_600_labels.csv")
  video_fixtures.write_indexed_video(tmp_path / "videos" / "0.mp4", num_frames=8)
  (tmp_path / "val.txt").write_text(f"0.mp4 {k600.index('abseiling')}\n")
  config = _with_kinetics600_protocol(tiny.experiment_config(), labels_dir, tmp_path)
  with pytest.raises(
    ValueError, match=r"^config\.zero_shot\.k600_novel\.val_files list no video of the classes of split 1 "
  ):
    zero_shot.tasks(config, tmp_path / "workdir")


def test_a_split_keeps_the_order_its_file_gives_its_classes(tmp_path):
  """Labels are renumbered in the split's order, so the class names (the texts), and the label list written for the
  split, must follow that order too, whatever the label list's."""
  # Names with a comma and quotes: the split's label list must quote them.
  (tmp_path / "labels.csv").write_text('id,name\n0,archery\n1,bowling\n2,"cooking, outdoors"\n3,"diving ""high"""\n')
  (tmp_path / "splits.json").write_text(json.dumps({"splits": [['diving "high"', "archery", "cooking, outdoors"]]}))
  (tmp_path / "videos").mkdir()
  for name in ("a", "b", "c"):
    (tmp_path / "videos" / f"{name}.mp4").write_bytes(b"")  # looked for, not read
  (tmp_path / "val.txt").write_text("a.mp4 0\nb.mp4 3\nc.mp4 1\n")
  config = _with_class_splits(
    tiny.experiment_config(), tmp_path, "custom", tmp_path / "labels.csv", tmp_path / "splits.json"
  )
  ((split,),) = [task.splits for task in zero_shot.tasks(config, tmp_path / "workdir")]
  assert split.class_names == ('diving "high"', "archery", "cooking, outdoors")
  assert annotations.read_label_list(split.label_list) == ['diving "high"', "archery", "cooking, outdoors"]
  # archery's video is label 1 of the split, diving's label 0; bowling is in no split.
  assert (tmp_path / "workdir/zero_shot/custom/split1/val.txt").read_text() == "a.mp4 1\nb.mp4 0\n"


LONG_NAME = "a very long class name " * 20


@pytest.mark.parametrize(
  "labels, lines, error",
  [
    ("archery\nbowling", "a.mp4 0\nb.mp4 7\n", r"split1\.txt:2: label 7 is outside the label list of 2 classes"),
    ("archery\nbowling", "a.mp4 0\ngone.mp4 1\n", r"split1\.txt: 1 of its 2 videos are missing from .*videos"),
    (f"archery\n{LONG_NAME}", "a.mp4 0\nb.mp4 1\n", r"labels\.csv: class 1 \('a very long.*'\) is \d+ tokens long"),
  ],
  ids=["label outside the list", "videos missing", "class name too long"],
)
def test_split_files_are_checked_when_the_tasks_are_read_before_training(tmp_path, labels, lines, error):
  """As the training lists are: found after training, the problem would cost the run's final evaluation."""
  names = labels.split("\n")
  (tmp_path / "labels.csv").write_text("id,name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(names)))
  (tmp_path / "videos").mkdir()
  for name in ("a", "b"):
    (tmp_path / "videos" / f"{name}.mp4").write_bytes(b"")
  (tmp_path / "split1.txt").write_text(lines)
  config = tiny.experiment_config()
  with config.unlocked():
    config.zero_shot = ml_collections.ConfigDict(
      {
        "files": {
          "root": str(tmp_path / "videos"),
          "val_files": (str(tmp_path / "split1.txt"),),
          "label_list": str(tmp_path / "labels.csv"),
        }
      }
    )
  with pytest.raises(ValueError, match=error):
    zero_shot.tasks(config, tmp_path / "workdir")
