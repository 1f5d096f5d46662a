"""datasets.resolve: every list a run will read is checked before training starts."""

import json
import re

from etils import epath
import pytest

from configs import common
from input_pipeline import annotations
from input_pipeline import build_tfds
from input_pipeline import datasets
from input_pipeline import subsets
from input_pipeline import video_dataset
from tests.fixtures import video_fixtures


@pytest.fixture
def config(tmp_path):
  """A training config over three classes and four (empty) videos in a folder: resolve reads no video."""
  for name in ("a", "b", "c", "d"):
    (tmp_path / "videos" / "v").mkdir(parents=True, exist_ok=True)
    (tmp_path / "videos" / "v" / f"{name}.mp4").write_bytes(b"")
  (tmp_path / "labels.csv").write_text("id,name\n0,run\n1,jump\n2,swim\n")
  good = "v/a.mp4 0\nv/b.mp4 1\nv/c.mp4 2\nv/d.mp4 0\n"
  for name in ("train.txt", "val.txt"):
    (tmp_path / name).write_text(good)
  config = common.experiment_config(small=True)
  config.num_classes = 3
  config.data.root = str(tmp_path / "videos")
  config.data.label_list = str(tmp_path / "labels.csv")
  config.data.train_file = str(tmp_path / "train.txt")
  config.data.val_file = str(tmp_path / "val.txt")
  return config


def _list(tmp_path, name, text):
  (tmp_path / name).write_text(text)
  return str(tmp_path / name)


def test_good_lists_resolve_to_the_training_list(config, tmp_path):
  experiment = datasets.resolve(config, epath.Path(tmp_path / "workdir"))
  assert experiment.class_names == ("run", "jump", "swim")
  assert experiment.num_train_videos == 4


@pytest.mark.parametrize("field", ["val_file", "test_file", "single_frame_file"])
def test_a_bad_label_in_an_evaluation_list_stops_before_training(config, tmp_path, field):
  config.data[field] = _list(tmp_path, "bad.txt", "v/a.mp4 0\nv/b.mp4 3\n")
  with pytest.raises(ValueError, match=r"bad\.txt:2: label 3 is outside the label list of 3 classes"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_an_evaluation_run_checks_its_test_list(config, tmp_path):
  config.mode = "eval"
  config.data.test_file = _list(tmp_path, "test.txt", "v/a.mp4 zero\n")
  with pytest.raises(ValueError, match=r"test\.txt:1: label 'zero' is not an integer"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_an_evaluation_run_without_a_list_to_evaluate_is_refused(config, tmp_path):
  config.mode, config.data.val_file = "eval", ""
  with pytest.raises(ValueError, match=r"^config\.mode=eval has nothing to evaluate: set config\.data\.test_file"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_a_class_name_longer_than_the_text_tower_reads_is_refused_naming_the_list(config, tmp_path):
  long_name = " ".join(["dancing"] * 80)
  config.data.label_list = _list(tmp_path, "long.csv", f"id,name\n0,run\n1,{long_name}\n2,swim\n")
  message = f"{config.data.label_list}: class 1 ('dancing dancing"
  with pytest.raises(
    ValueError, match=f"^{re.escape(message)}.*'\\) is 82 tokens long, more than the 77 the text tower reads"
  ):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_training_needs_a_validation_list(config, tmp_path):
  config.data.val_file = ""
  with pytest.raises(ValueError, match=r"config\.data\.val_file is not set"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


@pytest.mark.parametrize("field", ["train_file", "val_file", "test_file", "single_frame_file"])
def test_a_missing_video_stops_before_training(config, tmp_path, field):
  # One of four videos, more than 1% of them.
  config.data[field] = _list(tmp_path, "gone.txt", "v/a.mp4 0\nv/gone.mp4 1\nv/c.mp4 2\nw/d.mp4 0\n")
  with pytest.raises(
    ValueError, match=r"gone\.txt: 2 of its 4 videos are missing from .*videos, .*: v/gone\.mp4, w/d\.mp4$"
  ):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_missing_videos_within_the_allowed_share_are_left_to_the_pipeline(config, tmp_path):
  config.data.max_failure_fraction = 0.25
  config.data.val_file = _list(tmp_path, "gone.txt", "v/a.mp4 0\nv/gone.mp4 1\nv/c.mp4 2\nv/d.mp4 0\n")
  datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_the_streams_stop_with_a_python_error_once_too_many_videos_failed(config, tmp_path):
  # The fixture's videos are empty files: the first one read fails, more than 1% of four.
  config.update(batch_size=2, eval_batch_size=2, num_frames=2, input_size=32)
  experiment = datasets.resolve(config, epath.Path(tmp_path / "workdir"))
  train = datasets.train_stream(config, experiment, 0, video_dataset.FailureLog())
  # Counted when raised: as many as the pipeline, reading ahead, met by then (and warned about).
  with pytest.raises(video_dataset.TooManyFailuresError, match=r"^[1-4] videos? failed to decode"):
    next(train.as_numpy_iterator())
  validation = datasets.eval_stream(
    config, datasets.validation_set(config, experiment), 1, 1, video_dataset.FailureLog()
  )
  with pytest.raises(video_dataset.TooManyFailuresError, match=r"^[1-4] videos? failed to decode"):
    next(validation.as_numpy_iterator())


def test_an_evaluation_run_with_a_test_list_reads_no_validation_list(config, tmp_path):
  config.mode = "eval"
  config.data.test_file = config.data.val_file
  config.data.val_file = str(tmp_path / "not_there.txt")  # the configs' default under /data, say
  datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_a_few_shot_run_checks_only_the_videos_of_its_subset(config, tmp_path):
  records = "v/a.mp4 0\nv/b.mp4 1\nv/c.mp4 2\nv/d.mp4 0\nv/gone.mp4 0\n"
  config.data.train_file = _list(tmp_path, "train.txt", records)
  config.data.shots = 1
  # A seed whose one video of class 0 is not the missing one, and one whose is, as subsets draws them.
  draws = {
    seed: {r.path for r in subsets.k_shot_subset(annotations.read_annotations(config.data.train_file, 3), 3, 1, seed)}
    for seed in range(20)
  }
  config.seed = next(seed for seed, paths in draws.items() if "v/gone.mp4" not in paths)
  assert datasets.resolve(config, epath.Path(tmp_path / "workdir")).num_train_videos == 3
  config.seed = next(seed for seed, paths in draws.items() if "v/gone.mp4" in paths)
  with pytest.raises(ValueError, match=r"the 1-shot subset of .*train\.txt: 1 of its 3 videos are missing"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir2"))
  assert not (tmp_path / "workdir2").exists()  # refused before the subset's list is written


def test_resuming_a_few_shot_run_with_another_subset_is_refused_keeping_the_one_it_trained_on(config, tmp_path):
  """Another config.seed draws another subset: rewritten, the list of the videos the checkpoints were trained on would
  be lost, and the run would go on training on other videos."""
  config.data.train_file = _list(tmp_path, "train.txt", "v/a.mp4 0\nv/b.mp4 1\nv/c.mp4 2\nv/d.mp4 0\n")
  config.data.shots = 1
  workdir = epath.Path(tmp_path / "workdir")
  draw = lambda seed: subsets.k_shot_subset(annotations.read_annotations(config.data.train_file, 3), 3, 1, seed)
  first = draw(config.seed)
  config.seed = next(seed for seed in range(20) if draw(seed) != first)
  subset = workdir / "train_1shot.txt"
  workdir.mkdir()
  trained_on = "".join(f"{r.path} {r.label}\n" for r in first)
  subset.write_text(trained_on)
  with pytest.raises(ValueError, match=f"^{subset} holds the 1-shot subset that the checkpoints in {workdir}"):
    datasets.resolve(config, workdir, resuming=True)
  assert subset.read_text() == trained_on
  # A new run in the same workdir (no checkpoint to resume) draws its own.
  datasets.resolve(config, workdir)
  assert subset.read_text() != trained_on


def _records(config, tmp_path, splits=(("train", 2), ("train_all", 3), ("val", 1)), **build_options):
  """Records of 2 videos in the split "train", 3 in "train_all" and 1 in "val", built with the config's label list
  (and build_tfds.build_split's `build_options`)."""
  for i in range(3):
    video_fixtures.write_indexed_video(tmp_path / "clips" / f"{i}.mp4", 8)
  (tmp_path / "clips" / "labels.csv").write_text("id,name\n0,run\n1,jump\n2,swim\n")
  for split, count in splits:
    (tmp_path / f"{split}.txt").write_text("".join(f"{i}.mp4 {i}\n" for i in range(count)))
    build_tfds.build_split(
      annotations_path=str(tmp_path / f"{split}.txt"),
      root=str(tmp_path / "clips"),
      labels_path=str(tmp_path / "clips" / "labels.csv"),
      output_dir=str(tmp_path / "records"),
      split=split,
      **build_options,
    )
  config.data.tfds_dir = str(tmp_path / "records")


def test_records_count_the_videos_of_the_split_the_run_reads(config, tmp_path):
  """With data.tfds_dir, an epoch is the length of data.train_split, not of the split named "train"."""
  _records(config, tmp_path)
  config.data.train_split = "train_all"
  assert datasets.resolve(config, epath.Path(tmp_path / "workdir")).num_train_videos == 3


@pytest.mark.parametrize(
  "labels, message",
  [
    ("id,name\n0,run\n1,jump\n", "was built with 3 classes, data.label_list LABELS has 2"),
    (
      "id,name\n0,run\n1,swim\n2,jump\n",
      "another label list than data.label_list LABELS: class 1 is 'jump' there, 'swim' here",
    ),
  ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_records_built_with_another_label_list_are_refused(config, tmp_path, labels, message, mode):
  """In evaluation too: scored against other class texts, top-1 and the confusion matrix would be wrong."""
  _records(config, tmp_path)
  config.mode = mode
  config.data.val_file = ""
  config.data.label_list = _list(tmp_path, "other_labels.csv", labels)
  config.num_classes = labels.count("\n") - 1
  with pytest.raises(ValueError, match=re.escape(message.replace("LABELS", config.data.label_list))):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_records_without_the_validation_split_are_refused_before_training(config, tmp_path):
  """Found at the first validation, after an epoch, it would stop the run there. The error names the config field
  that chose the split, and the splits there are."""
  _records(config, tmp_path, splits=(("train", 2),))
  message = (
    f"{config.data.tfds_dir}: no build_tfds metadata for split 'val' (config.data.val_split) in metadata.json; "
    "convert the videos with python -m input_pipeline.build_tfds --split=val, or set --config.data.val_split to a "
    "split built ('train')"
  )
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_records_without_the_training_split_are_refused_naming_its_config_field(config, tmp_path):
  _records(config, tmp_path, splits=(("val", 1),))
  config.data.train_split = "train_all"
  message = "no build_tfds metadata for split 'train_all' (config.data.train_split) in metadata.json"
  with pytest.raises(
    ValueError, match=re.escape(message) + r".*set --config\.data\.train_split to a split built \('val'\)$"
  ):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def _build_with_a_bad_video(config, tmp_path, split: str):
  """Records of `split` for 4 videos of _records' folder, one of which cannot be read: the build leaves it out."""
  (tmp_path / "clips" / "bad.mp4").write_bytes(b"not a video")
  (tmp_path / f"{split}.txt").write_text("0.mp4 0\n1.mp4 1\n2.mp4 2\nbad.mp4 0\n")
  build_tfds.build_split(
    annotations_path=str(tmp_path / f"{split}.txt"),
    root=str(tmp_path / "clips"),
    labels_path=str(tmp_path / "clips" / "labels.csv"),
    output_dir=config.data.tfds_dir,
    split=split,
    max_bad_fraction=0.5,
  )


def test_records_the_build_left_out_beyond_the_failure_allowance_are_refused_before_training(config, tmp_path):
  """Every process meets them all over its epochs: found at start, not as a stop mid-run."""
  _records(config, tmp_path, splits=(("val", 1),))
  _build_with_a_bad_video(config, tmp_path, "train")
  config.batch_size = 2  # an epoch of 4 slots
  config.data.max_failure_fraction = 0.25  # 1 allowed
  assert datasets.resolve(config, epath.Path(tmp_path / "workdir")).num_train_videos == 4
  config.data.max_failure_fraction = 0.2  # 0.8 allowed
  with pytest.raises(ValueError, match=r"its build left out 1 of the 4 videos of split 'train' .* more than the 0\.8"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_validation_records_the_build_left_out_beyond_the_failure_allowance_are_refused_before_training(
  config, tmp_path
):
  """An evaluation stops past data.max_failure_fraction of its videos: found at the first validation, the run would
  stop there, after an epoch of training."""
  _records(config, tmp_path, splits=(("train", 2),))
  _build_with_a_bad_video(config, tmp_path, "val")
  config.batch_size = 2
  message = (
    "its build left out 1 of the 4 videos of split 'val' (config.data.val_split; metadata.json lists them), a "
    "share of 0.25, more than data.max_failure_fraction=0.01 allows"
  )
  with pytest.raises(ValueError, match=re.escape(message)):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))
  config.data.max_failure_fraction = 0.25  # 1 allowed
  assert datasets.resolve(config, epath.Path(tmp_path / "workdir")).num_train_videos == 2


def test_records_of_fewer_frames_than_a_clip_takes_are_a_warning_naming_the_split_and_both_counts(
  config, tmp_path, caplog
):
  """A 2-frame model on records of 1 frame trains on one frame repeated: nothing for its cross-frame parts to learn."""
  _records(config, tmp_path, splits=(("train", 2), ("val", 1)), max_frames=1)
  config.num_frames = 2

  def warnings():
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--max_frames" in r.getMessage()]

  datasets.resolve(config, epath.Path(tmp_path / "workdir"))
  message = (
    "split {!r} stores at most 1 frame per video (build_tfds --max_frames=1), fewer than the 2 of config.num_frames"
  )
  assert [message.format(split) in w for w, split in zip(warnings(), ("val", "train"))] == [True, True]
  # A folder built before metadata.json held the cap: read from the build's _build/<split>/config.json.
  metadata_path = tmp_path / "records" / "metadata.json"
  metadata = json.loads(metadata_path.read_text())
  for split in metadata.values():
    del split["max_frames"]
  metadata_path.write_text(json.dumps(metadata))
  caplog.clear()
  datasets.resolve(config, epath.Path(tmp_path / "workdir"))
  assert len(warnings()) == 2
  caplog.clear()
  config.num_frames = 1  # what the records hold: no warning
  datasets.resolve(config, epath.Path(tmp_path / "workdir"))
  assert warnings() == []


def test_a_training_list_smaller_than_one_batch_is_refused_before_training_naming_batch_size_and_the_list(
  config, tmp_path
):
  """A config mistake, found with the other checks, not by the training stream once the run has started."""
  config.batch_size = 16
  message = (
    f"config.batch_size=16 is more than the 4 videos of data.train_file {config.data.train_file}: every training step "
    "takes a global batch of config.batch_size videos; set --config.batch_size to at most 4"
  )
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))
  config.batch_size = 4
  assert datasets.resolve(config, epath.Path(tmp_path / "workdir")).num_train_videos == 4


def test_a_training_split_of_records_smaller_than_one_batch_is_refused_naming_batch_size_and_the_split(
  config, tmp_path
):
  _records(config, tmp_path, splits=(("train", 2), ("val", 1)))
  config.batch_size = 3
  message = (
    f"config.batch_size=3 is more than the 2 videos of split 'train' (config.data.train_split) of data.tfds_dir "
    f"{config.data.tfds_dir}"
  )
  with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))


def test_a_class_short_of_shots_is_named_with_the_training_list(config, tmp_path):
  config.data.shots = 2  # 'jump' and 'swim' have one video each in train.txt
  with pytest.raises(
    ValueError,
    match=re.escape(f"{config.data.train_file}: class 1 ('jump') has 1 video in the list, fewer than 2 shots"),
  ):
    datasets.resolve(config, epath.Path(tmp_path / "workdir"))
