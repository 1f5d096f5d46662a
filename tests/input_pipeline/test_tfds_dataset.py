"""tfds_dataset: training and evaluation batches from build_tfds records."""

import itertools
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import build_tfds
from input_pipeline import tfds_dataset
from input_pipeline import video_dataset
from tests.fixtures import video_fixtures

NUM_VIDEOS = 6
CLIP = dict(num_frames=4, input_size=32)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Records of six indexed videos whose label is their line, and of the same
  list with a junk file inserted at line 3."""
  root = tmp_path_factory.mktemp("videos")
  for i in range(NUM_VIDEOS):
    video_fixtures.write_indexed_video(root / f"{i}.mp4", 12 + 3 * i)
  (root / "junk.mp4").write_bytes(b"not a video")
  (root / "labels.csv").write_text("id,name\n" + "".join(f"{i},video{i}\n" for i in range(NUM_VIDEOS)))
  lines = [f"{i}.mp4 {i}" for i in range(NUM_VIDEOS)]
  (root / "good.txt").write_text("\n".join(lines) + "\n")
  (root / "with_junk.txt").write_text("\n".join(lines[:3] + ["junk.mp4 0"] + lines[3:]) + "\n")
  dirs = {}
  for name in ("good", "with_junk"):
    dirs[name] = str(root / f"records_{name}")
    build_tfds.build_split(
      annotations_path=str(root / f"{name}.txt"),
      root=str(root),
      labels_path=str(root / "labels.csv"),
      output_dir=dirs[name],
      videos_per_shard=2,
      max_bad_fraction=0.5,
    )
  return dirs


def _batches(batches, count):
  return list(itertools.islice(batches.as_numpy_iterator(), count))


def test_train_batches_have_the_format_of_video_dataset(records):
  (batch,) = _batches(tfds_dataset.make_train_dataset(records["good"], batch_size=3, seed=0, **CLIP), 1)
  assert sorted(batch) == ["label", "resume_position", "video"]
  assert batch["video"].shape == (3, 4, 32, 32, 3)
  assert batch["video"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  assert batch["resume_position"].tolist() == [3, 3, 3]


def test_two_hosts_read_disjoint_parts_that_cover_the_data(records):
  seen = []
  for process_index in (0, 1):
    batches = _batches(
      tfds_dataset.make_train_dataset(
        records["good"], batch_size=2, seed=5, process_index=process_index, process_count=2, **CLIP
      ),
      NUM_VIDEOS // 2,
    )
    seen.append({int(b["label"][0]) for b in batches})
  assert len(seen[0]) == len(seen[1]) == NUM_VIDEOS // 2
  assert seen[0] | seen[1] == set(range(NUM_VIDEOS))


def test_stream_resumes_exactly_from_a_resume_position(records):
  make = lambda start: tfds_dataset.make_train_dataset(
    records["with_junk"], batch_size=2, seed=1, start_position=start, max_failure_fraction=0.5, **CLIP
  )
  batches = _batches(make(0), 5)
  resumed = _batches(make(int(batches[1]["resume_position"][0])), 3)
  for expected, got in zip(batches[2:], resumed):
    np.testing.assert_array_equal(got["video"], expected["video"])
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_array_equal(got["resume_position"], expected["resume_position"])


def test_a_video_the_build_skipped_is_counted_and_training_goes_on(records):
  failures = video_dataset.FailureLog()
  batches = _batches(
    tfds_dataset.make_train_dataset(
      records["with_junk"], batch_size=2, seed=0, max_failure_fraction=0.5, failures=failures, **CLIP
    ),
    6,
  )
  assert failures.paths == {"junk.mp4"}
  assert failures.count >= 1
  # Twelve clips from one epoch and a half: every good video was read.
  assert {int(label) for b in batches for label in b["label"]} == set(range(6))


def test_too_many_skipped_videos_stop_training(records):
  batches = tfds_dataset.make_train_dataset(
    records["with_junk"], batch_size=NUM_VIDEOS + 1, seed=0, max_failure_fraction=0.0, **CLIP
  )
  # Raised by the iterator, in Python, not inside tf.data (an OpError carrying the traceback, which TF's log prints).
  with pytest.raises(video_dataset.TooManyFailuresError, match="the last was junk.mp4"):
    _batches(batches, 1)


def test_evaluation_sees_every_video_once_across_hosts(records):
  failures = video_dataset.FailureLog()
  seen, num_batches = [], set()
  for process_index in (0, 1):
    batches = _batches(
      tfds_dataset.make_eval_dataset(
        records["with_junk"],
        "train",
        batch_size=4,
        num_clips=2,
        num_crops=3,
        process_index=process_index,
        process_count=2,
        max_failure_fraction=0.5,
        failures=failures,
        **CLIP,
      ),
      100,
    )
    num_batches.add(len(batches))
    for batch in batches:
      assert batch["video"].shape == (2, 6, 4, 32, 32, 3)
      seen += [(int(i), int(label)) for i, label, m in zip(batch["index"], batch["label"], batch["mask"]) if m]
  assert num_batches == {2}  # 7 lines in 2 global batches of 4 (one padding row), 2 rows of each per host.
  # Lines 0-2 and 4-6 are videos 0-5; line 3 (junk) is masked out.
  assert sorted(seen) == [(0, 0), (1, 1), (2, 2), (4, 3), (5, 4), (6, 5)]
  assert failures.paths == {"junk.mp4"}


def test_an_evaluation_says_how_many_videos_its_list_holds_over_all_processes(records):
  # The annotation file's 7 lines, the one skipped when the records were built among them.
  batches = tfds_dataset.make_eval_dataset(
    records["with_junk"], "train", batch_size=4, process_index=1, process_count=2, **CLIP
  )
  assert batches.num_videos == 7


def test_evaluation_allows_failures_among_its_videos_not_its_padding_rows(records):
  # 7 lines in one global batch of 8 with 1 padding row; the junk line is 1 failure of 7 videos. 13% allows 0.91 of
  # them (1.04 if the padding row counted as a video).
  batches = tfds_dataset.make_eval_dataset(
    records["with_junk"], "train", batch_size=8, max_failure_fraction=0.13, **CLIP
  )
  # The reason says where the video went: the build left it out.
  message = r"^1 video failed .* \(0\.91 here\); the last was junk\.mp4: left out by build_tfds: "
  with pytest.raises(video_dataset.TooManyFailuresError, match=message):
    _batches(batches, 1)


def _with_metadata(records_dir, tmp_path, edit):
  """A copy of a records folder whose metadata.json `edit` changed."""
  copy = tmp_path / "records"
  shutil.copytree(records_dir, copy)
  metadata = json.loads((copy / "metadata.json").read_text())
  edit(metadata["train"])
  (copy / "metadata.json").write_text(json.dumps(metadata))
  return str(copy)


def test_records_that_are_not_where_the_metadata_says_are_an_error_not_other_videos(records, tmp_path):
  # The metadata says line 2 was skipped instead of line 3 (the junk): as many records, but line 3's place in the
  # shards holds line 2's record.
  def move_skipped_line(split):
    split["skipped"][0]["annotation_index"] = 2

  data_dir = _with_metadata(records["with_junk"], tmp_path, move_skipped_line)
  batches = tfds_dataset.make_eval_dataset(data_dir, "train", batch_size=7, max_failure_fraction=1.0, **CLIP)
  with pytest.raises(tf.errors.InvalidArgumentError, match="metadata.json does not match the shards"):
    _batches(batches, 1)


@pytest.mark.parametrize("skipped_lines,accounted_for", [([], 7), ([3, 5], 5)], ids=["fewer records", "more records"])
def test_metadata_that_accounts_for_another_number_of_records_is_refused(
  records, tmp_path, skipped_lines, accounted_for
):
  # The split holds 6 records, of 7 lines with line 3 skipped.
  def set_skipped_lines(split):
    split["skipped"] = [{"annotation_index": line, "path": f"{line}.mp4", "reason": "junk"} for line in skipped_lines]

  data_dir = _with_metadata(records["with_junk"], tmp_path, set_skipped_lines)
  with pytest.raises(
    ValueError, match=f"split 'train': the split has 6 records but its metadata accounts for {accounted_for} "
  ):
    tfds_dataset.make_train_dataset(data_dir, batch_size=2, seed=0, **CLIP)


def test_pipelines_run_without_tf_data_autotuning(records):
  # Freeing an autotuned iterator waits for the autotuning thread's next round, up to a minute (video_dataset.finish).
  train = tfds_dataset.make_train_dataset(records["good"], "train", batch_size=3, seed=0, **CLIP)
  evaluation = tfds_dataset.make_eval_dataset(records["good"], "train", batch_size=3, **CLIP)
  assert train.dataset.options().autotune.enabled is False
  assert evaluation.dataset.options().autotune.enabled is False


def test_a_split_that_build_tfds_did_not_write_is_refused(records):
  with pytest.raises(ValueError, match="no build_tfds metadata for split 'validation'"):
    tfds_dataset.make_train_dataset(records["good"], "validation", batch_size=1, seed=0, **CLIP)


def test_process_exits_while_a_training_iterator_is_alive(records):
  # Slow frame choice keeps tf.data threads inside Python calls at exit,
  # which hangs the interpreter (2 runs in 3 here) unless they run inside
  # video_dataset.python_calls.
  script = f"""
import sys, time
sys.path.insert(0, {str(pathlib.Path(__file__).parents[2])!r})
from input_pipeline import sampling, tfds_dataset
train_frame_indices = sampling.train_frame_indices
def slow_frame_indices(*args):
  time.sleep(0.05)
  return train_frame_indices(*args)
sampling.train_frame_indices = slow_frame_indices
dataset = tfds_dataset.make_train_dataset(
    {records["good"]!r}, batch_size=2, seed=0, num_frames=4, input_size=32)
next(dataset.as_numpy_iterator())
print('one batch')
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "one batch" in result.stdout


def test_a_slot_whose_stand_ins_all_fail_stops_the_iterator_with_a_python_error(records, monkeypatch):
  """The junk video's slot, with no stand-in allowed: the error comes out of the iterator, not from inside tf.data."""
  monkeypatch.setattr(video_dataset, "MAX_STAND_INS", 0)
  batches = tfds_dataset.make_train_dataset(
    records["with_junk"], batch_size=NUM_VIDEOS + 1, seed=0, max_failure_fraction=1.0, **CLIP
  )
  with pytest.raises(video_dataset.TooManyFailuresError, match=r"^the video at slot \d+ of epoch 0 and 0 stand-ins"):
    _batches(batches, 1)
