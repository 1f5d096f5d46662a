"""build_tfds: records of JPEG frames in a TFDS folder, resumable conversion."""

import collections
from concurrent import futures
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import build_tfds
from input_pipeline import video_decode
from tests.fixtures import video_fixtures

REPO = pathlib.Path(__file__).resolve().parents[2]
LENGTHS = (20, 24, 28, 32, 36)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """Five indexed 64x48 videos, a junk file, and their annotation files."""
  root = tmp_path_factory.mktemp("videos")
  for i, length in enumerate(LENGTHS):
    video_fixtures.write_indexed_video(root / f"class{i % 2}/{i}.mp4", length)
  (root / "junk.mp4").write_bytes(b"not a video")
  (root / "labels.csv").write_text("id,name\n0,even\n1,odd\n")
  lines = [f"class{i % 2}/{i}.mp4 {i % 2}" for i in range(len(LENGTHS))]
  (root / "good.txt").write_text("\n".join(lines) + "\n")
  # Line 2 is junk, line 4 is missing.
  lines[2:2] = ["junk.mp4 0"]
  lines[4:4] = ["gone.mp4 1"]
  (root / "with_bad.txt").write_text("\n".join(lines) + "\n")
  return root


def _build(videos, output_dir, annotations="good.txt", **kwargs):
  return build_tfds.build_split(
    annotations_path=str(videos / annotations),
    root=str(videos),
    labels_path=str(videos / "labels.csv"),
    output_dir=str(output_dir),
    **kwargs,
  )


def _build_with_labels_in(tmp_path, videos, split: str):
  """The split `split` of videos/good.txt into tmp_path/out, with the label list tmp_path/labels.csv."""
  return build_tfds.build_split(
    annotations_path=str(videos / "good.txt"),
    root=str(videos),
    labels_path=str(tmp_path / "labels.csv"),
    output_dir=str(tmp_path / "out"),
    split=split,
  )


def _examples(builder, split="train"):
  dataset = builder.as_dataset(split=split, decoders={"frames": tfds.decode.SkipDecoding()})
  return list(dataset.as_numpy_iterator())


def _source_frames_of(jpegs, video_path):
  """Index of the decoded mp4 frame that each stored JPEG frame shows.

  Frames of an indexed video differ by 3-5 grey levels; H.264 and JPEG each
  move a flat frame by about one level, so the nearest mean finds the frame.
  """
  video = video_decode.decode_frames(video_path.read_bytes(), range(video_decode.count_frames(video_path.read_bytes())))
  levels = video.mean(axis=(1, 2, 3))
  stored = [tf.io.decode_jpeg(j).numpy().mean() for j in jpegs]
  assert all(np.abs(levels - level).min() < 1.5 for level in stored)
  return [int(np.abs(levels - level).argmin()) for level in stored]


def test_stored_frame_indices_cap_the_frame_rate_then_the_count():
  np.testing.assert_array_equal(build_tfds.stored_frame_indices(30, 30.0, 10.0, None), np.arange(0, 30, 3))
  # 25 -> 10 fps keeps the frames shown at 0, .1, .2 ... s.
  np.testing.assert_array_equal(build_tfds.stored_frame_indices(10, 25.0, 10.0, None), [0, 2, 5, 7])
  np.testing.assert_array_equal(build_tfds.stored_frame_indices(10, 30.0, None, 4), [0, 2, 5, 7])
  np.testing.assert_array_equal(build_tfds.stored_frame_indices(30, 30.0, 10.0, 5), [0, 6, 12, 18, 24])
  # A cap above the video's rate or length keeps every frame.
  np.testing.assert_array_equal(build_tfds.stored_frame_indices(7, 15.0, 30.0, 8), np.arange(7))


def test_resized_shape_rounds_to_the_nearest_pixel():
  # 322 x 256 / 322 is 255.99999999999997 in floating point; 572 x 256 / 322 = 454.76.
  assert build_tfds.resized_shape(322, 572, 256) == (256, 455)


def test_resized_shape_shrinks_the_short_side_and_never_enlarges():
  assert build_tfds.resized_shape(256, 340, 128) == (128, 170)
  assert build_tfds.resized_shape(340, 256, 128) == (170, 128)
  assert build_tfds.resized_shape(48, 64, 256) == (48, 64)


def test_records_hold_every_frame_with_label_path_and_line(videos, tmp_path):
  builder = _build(videos, tmp_path, videos_per_shard=2)
  # A TFDS dataset like any other, found from its folder.
  builder = tfds.builder_from_directory(str(tmp_path))
  assert builder.info.splits["train"].num_examples == len(LENGTHS)
  assert builder.info.splits["train"].num_shards == 3
  assert builder.info.features["label"].names == ["even", "odd"]
  examples = _examples(builder)
  assert [e["annotation_index"] for e in examples] == list(range(5))
  assert [e["path"].decode() for e in examples] == [f"class{i % 2}/{i}.mp4" for i in range(5)]
  assert [e["label"] for e in examples] == [0, 1, 0, 1, 0]
  for i, (example, length) in enumerate(zip(examples, LENGTHS)):
    assert example["num_frames"] == length
    assert _source_frames_of(example["frames"], videos / f"class{i % 2}/{i}.mp4") == list(range(length))
  assert tf.io.decode_jpeg(examples[0]["frames"][0]).shape == (48, 64, 3)


def test_frame_rate_cap_and_short_side_shape_the_stored_frames(videos, tmp_path):
  builder = _build(videos, tmp_path, fps=10.0, short_side=24)
  example = _examples(builder)[0]
  assert example["num_frames"] == 7  # 20 frames at 30 fps, kept at 10 fps.
  assert _source_frames_of(example["frames"], videos / "class0/0.mp4") == list(range(0, 20, 3))
  assert tf.io.decode_jpeg(example["frames"][0]).shape == (24, 32, 3)
  # The caps, for a reader to compare with the frames its model takes.
  assert builder.info.metadata["train"]["fps"] == 10.0 and builder.info.metadata["train"]["max_frames"] is None


def test_bad_videos_are_left_out_and_listed_in_the_metadata(videos, tmp_path):
  builder = _build(videos, tmp_path, annotations="with_bad.txt", videos_per_shard=3, max_bad_fraction=0.3)
  examples = _examples(builder)
  assert [e["annotation_index"] for e in examples] == [0, 1, 3, 5, 6]
  metadata = builder.info.metadata["train"]
  assert metadata["annotation_count"] == 7
  assert metadata["videos_per_shard"] == 3
  skipped = {v["annotation_index"]: v["path"] for v in metadata["skipped"]}
  assert skipped == {2: "junk.mp4", 4: "gone.mp4"}


def test_with_a_frame_rate_cap_files_that_are_no_video_are_left_out_too(videos, tmp_path):
  video_fixtures.write_audio_only(tmp_path / "audio.mp4")
  (tmp_path / "videos.txt").write_text(
    f"{videos / 'class0/0.mp4'} 0\n{videos / 'junk.mp4'} 0\n{tmp_path / 'audio.mp4'} 1\n"
  )
  builder = _build(videos, tmp_path / "out", annotations=tmp_path / "videos.txt", fps=10.0, max_bad_fraction=0.7)
  assert [e["annotation_index"] for e in _examples(builder)] == [0]
  reasons = {v["annotation_index"]: v["reason"] for v in builder.info.metadata["train"]["skipped"]}
  assert reasons.keys() == {1, 2}
  assert "not a readable video" in reasons[1] and "no video stream" in reasons[2]


def test_no_bad_video_allowed_builds_a_list_of_good_ones(videos, tmp_path):
  assert _build(videos, tmp_path, max_bad_fraction=0.0).info.splits["train"].num_examples == len(LENGTHS)


def test_too_many_bad_videos_stop_before_the_metadata(videos, tmp_path):
  with pytest.raises(RuntimeError, match=r"2 of 7 videos .*junk\.mp4"):
    _build(videos, tmp_path, annotations="with_bad.txt", videos_per_shard=3, max_bad_fraction=0.2)
  assert not (tmp_path / "dataset_info.json").exists()
  # Raising the threshold finishes from the markers, without converting.
  builder = _build(videos, tmp_path, annotations="with_bad.txt", videos_per_shard=3, max_bad_fraction=0.3)
  assert builder.info.splits["train"].num_examples == 5


def test_a_split_of_no_readable_video_is_refused_whatever_the_fraction_allows(videos, tmp_path):
  (tmp_path / "bad.txt").write_text("junk.mp4 0\ngone.mp4 1\n")
  with pytest.raises(RuntimeError, match=r"2 of 2 videos .*junk\.mp4"):
    _build(videos, tmp_path / "out", annotations=tmp_path / "bad.txt", max_bad_fraction=1.0)
  assert not (tmp_path / "out/dataset_info.json").exists()
  # The folder still takes a split that has videos.
  assert _build(videos, tmp_path / "out", split="validation").info.splits["validation"].num_examples == 5


def test_interrupted_build_resumes_and_keeps_finished_shards(videos, tmp_path, monkeypatch):
  reference = _build(videos, tmp_path / "reference", videos_per_shard=2)
  encode = build_tfds.VideoEncoder.__call__
  converted, interrupt_at = [], {3}

  def encode_and_note(self, task):
    if task[0] in interrupt_at:
      raise KeyboardInterrupt
    converted.append(task[0])
    return encode(self, task)

  monkeypatch.setattr(build_tfds.VideoEncoder, "__call__", encode_and_note)
  output = tmp_path / "resumed"
  with pytest.raises(KeyboardInterrupt):
    _build(videos, output, videos_per_shard=2)
  finished = [p.name for p in (output / "_build/train").glob("*.done.json")]
  assert finished == ["videos-train.tfrecord-00000-of-00003.done.json"]
  assert not (output / "dataset_info.json").exists()

  converted.clear()
  interrupt_at.clear()
  resumed = _build(videos, output, videos_per_shard=2)
  assert converted == [2, 3, 4]  # shard 0 (videos 0, 1) was kept.
  for name in reference.info.splits["train"].filenames:
    assert (output / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
  assert resumed.info.splits["train"].num_examples == len(LENGTHS)


def test_resuming_with_other_settings_is_refused(videos, tmp_path):
  _build(videos, tmp_path, jpeg_quality=90)
  with pytest.raises(
    ValueError,
    match=r"config\.json.*'jpeg_quality': \(90, "
    r"80\)",
  ):
    _build(videos, tmp_path, jpeg_quality=80)


def test_a_split_whose_build_folder_is_removed_is_converted_again_alone(videos, tmp_path):
  """What the refusal of a rerun with a fixed list says to do: remove OUTPUT_DIR/_build/<split>. The split is
  converted again from the new list, its shards of the earlier build go, the other splits stay as they were."""
  _build(videos, tmp_path, videos_per_shard=2)  # 5 videos, 3 shards
  _build(videos, tmp_path, split="validation", videos_per_shard=2)
  validation = {p.name: p.read_bytes() for p in tmp_path.glob("videos-validation.tfrecord-*")}
  (tmp_path / "fixed.txt").write_text("".join(f"class{i % 2}/{i}.mp4 {i % 2}\n" for i in range(3)))
  build_dir = tmp_path / "_build" / "train"
  message = f"rerun with the earlier flags, or remove {build_dir} to convert split 'train' again with these (the other"
  with pytest.raises(ValueError, match=re.escape(message)):
    _build(videos, tmp_path, annotations=tmp_path / "fixed.txt", videos_per_shard=2)
  shutil.rmtree(build_dir)
  builder = _build(videos, tmp_path, annotations=tmp_path / "fixed.txt", videos_per_shard=2)
  assert [e["annotation_index"] for e in _examples(builder)] == [0, 1, 2]
  assert sorted(p.name for p in tmp_path.glob("videos-train.tfrecord-*")) == builder.info.splits["train"].filenames
  assert builder.info.splits["train"].num_shards == 2
  assert {p.name: p.read_bytes() for p in tmp_path.glob("videos-validation.tfrecord-*")} == validation
  assert builder.info.splits["validation"].num_examples == len(LENGTHS)


def test_bad_settings_are_refused_before_converting(videos, tmp_path):
  with pytest.raises(
    ValueError,
    match=r"name='K-400' must be .*; "
    r"jpeg_quality=0 must be in \[1, 100\]",
  ):
    _build(videos, tmp_path, name="K-400", jpeg_quality=0)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fps", [0.0, float("nan"), float("inf")])
def test_a_frame_rate_that_is_not_a_positive_number_is_refused(videos, tmp_path, fps):
  with pytest.raises(ValueError, match=re.escape(f"fps={fps} must be a positive number")):
    _build(videos, tmp_path, fps=fps)
  assert not list(tmp_path.iterdir())


def test_splits_share_the_folder_and_its_label_list(videos, tmp_path):
  _build(videos, tmp_path)
  builder = _build(videos, tmp_path, annotations="with_bad.txt", split="validation", max_bad_fraction=0.3)
  assert builder.info.splits["train"].num_examples == 5
  assert builder.info.splits["validation"].num_examples == 5
  other_labels = videos / "other_labels.csv"
  other_labels.write_text("id,name\n0,a\n1,b\n")
  with pytest.raises(ValueError, match="split 'train'"):
    build_tfds.build_split(
      annotations_path=str(videos / "good.txt"),
      root=str(videos),
      labels_path=str(other_labels),
      output_dir=str(tmp_path),
      split="test",
    )


def test_a_split_may_read_the_same_classes_from_a_file_of_other_line_ends(videos, tmp_path):
  _build(videos, tmp_path / "out")
  (tmp_path / "labels.csv").write_bytes(b"id,name\r\n0,even\r\n1,odd\r\n")  # labels.csv as a Windows editor saves it
  builder = _build_with_labels_in(tmp_path, videos, "validation")
  assert builder.info.splits["validation"].num_examples == len(LENGTHS)


def test_a_split_may_be_resumed_with_the_same_classes_from_a_file_of_other_line_ends(videos, tmp_path):
  _build(videos, tmp_path / "out")
  (tmp_path / "labels.csv").write_bytes(b"id,name\r\n0,even\r\n1,odd\r\n")
  builder = _build_with_labels_in(tmp_path, videos, "train")
  assert builder.info.splits["train"].num_examples == len(LENGTHS)


def test_a_split_of_other_classes_is_refused_naming_the_first_that_differs(videos, tmp_path):
  _build(videos, tmp_path / "out")
  (tmp_path / "labels.csv").write_text("id,name\n0,even\n1,uneven\n")
  with pytest.raises(ValueError, match=re.escape("class 1 is 'odd' there, 'uneven' here")):
    _build_with_labels_in(tmp_path, videos, "validation")


def test_a_split_converted_before_its_config_held_the_class_names_is_compared_by_its_file(videos, tmp_path):
  _build(videos, tmp_path / "out")
  config_path = tmp_path / "out/_build/train/config.json"
  config = json.loads(config_path.read_text())
  del config["label_names"]
  config_path.write_text(json.dumps(config))
  (tmp_path / "labels.csv").write_text("id,name\n0,even\n1,uneven\n")
  with pytest.raises(ValueError, match="split 'train' was converted with"):
    _build_with_labels_in(tmp_path, videos, "validation")


def test_command_line_converts_in_a_worker_process(videos, tmp_path):
  """... and keeps TensorFlow's and the libraries' log lines off the terminal, in OUTPUT_DIR/_build/logs."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "input_pipeline.build_tfds",
      f"--annotations={videos / 'good.txt'}",
      f"--root={videos}",
      f"--labels={videos / 'labels.csv'}",
      f"--output_dir={tmp_path}",
      "--num_workers=1",
      "--videos_per_shard=2",
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
    text=True,
    timeout=120,
  )
  info = json.loads((tmp_path / "dataset_info.json").read_text())
  assert [int(n) for n in info["splits"][0]["shardLengths"]] == [2, 2, 1]
  assert os.path.exists(tmp_path / "videos-train.tfrecord-00002-of-00003")
  # Not a terminal: a plain line per shard, no live bar; nothing on stderr (no absl or TensorFlow C++ line).
  shards = [f"videos/train: {done}/5 videos (shard {i}/3)" for i, done in ((1, 2), (2, 4), (3, 5))]
  assert result.stdout.splitlines()[:3] == shards, result.stdout
  assert result.stdout.splitlines()[3].startswith(f"Wrote {tmp_path}: "), result.stdout
  assert result.stderr == "", result.stderr
  log = (tmp_path / "_build" / "logs" / "process_0.log").read_text()
  assert re.search(r"^I\d{4} .*\] Wrote ", log, re.M), log  # what the terminal shows, in absl's format


def test_a_missing_root_is_refused_before_the_workers_start(videos, tmp_path):
  with pytest.raises(ValueError, match=r"video root '.*nowhere' is neither a folder nor a \.tar file"):
    build_tfds.build_split(
      annotations_path=str(videos / "good.txt"),
      root=str(tmp_path / "nowhere"),
      labels_path=str(videos / "labels.csv"),
      output_dir=str(tmp_path / "out"),
      num_workers=1,
    )


def _command(videos, output_dir, *args):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "input_pipeline.build_tfds",
      f"--root={videos}",
      f"--labels={videos / 'labels.csv'}",
      f"--output_dir={output_dir}",
      "--num_workers=0",
      *args,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_bad_input_is_one_error_line_and_its_traceback_goes_to_the_log(videos, tmp_path):
  (tmp_path / "bad.txt").write_text("class0/0.mp4 0\nclass1/1.mp4 2\n")
  result = _command(videos, tmp_path, f"--annotations={tmp_path / 'bad.txt'}")
  assert result.returncode == 2
  assert result.stderr == f"error: {tmp_path / 'bad.txt'}:2: label 2 is outside the label list of 2 classes\n"
  log = (tmp_path / "_build" / "logs" / "process_0.log").read_text()
  assert "Traceback (most recent call last)" in log and "read_annotations" in log, log


def test_a_flag_out_of_range_is_one_error_line(videos, tmp_path):
  result = _command(videos, tmp_path, f"--annotations={videos / 'good.txt'}", "--num_workers=-1")
  assert (result.returncode, result.stderr) == (2, "error: --num_workers=-1: -1 is not a non-negative integer\n")


def test_too_many_bad_videos_are_one_error_line_and_the_shards_stay(videos, tmp_path):
  args = (f"--annotations={videos / 'with_bad.txt'}", "--videos_per_shard=3", "--max_bad_fraction=0.2")
  result = _command(videos, tmp_path, *args)
  assert result.returncode == 2
  # After a warning per bad video.
  assert "Traceback" not in result.stderr
  assert re.fullmatch(r"error: 2 of 7 videos .*junk\.mp4.* and rerun\.", result.stderr.splitlines()[-1])
  assert len(list((tmp_path / "_build" / "train").glob("*.done.json"))) == 3


def _wait_until_received(pids, signum, timeout=1.0):
  """Until each process holds `signum` pending (the workers block it), ignores it (multiprocessing's resource
  tracker) or has ended, for at most `timeout` s: a process that takes it otherwise (a worker that no longer blocks
  it, printing a traceback) has that second to show it before the command is stopped."""
  bit = 1 << (signum - 1)

  def received(pid):
    try:
      status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
      return True
    masks = dict(
      line.split(":\t", 1) for line in status.splitlines() if line.startswith(("SigPnd", "ShdPnd", "SigIgn"))
    )
    return "(zombie)" in status or any(int(mask, 16) & bit for mask in masks.values())

  deadline = time.monotonic() + timeout
  while not all(map(received, pids)) and time.monotonic() < deadline:
    time.sleep(0.01)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_is_one_line_and_ends_the_command_by_that_signal_and_the_shards_done_stay(
  videos, tmp_path, stop_signal
):
  """Sent to every process of the command, as Ctrl-C on a terminal does, while a worker waits on a read that hangs;
  to the workers first, whose tracebacks would otherwise race with the stop that ends them. Ended by the signal (a
  shell's status 130 or 143), so that a shell stops the loop or script that ran it."""
  fifo = tmp_path / "hangs.mp4"
  os.mkfifo(fifo)  # opening it for reading waits for a writer, which never comes: the build cannot end first
  (tmp_path / "list.txt").write_text(f"{videos / 'class0/0.mp4'} 0\n{videos / 'class1/1.mp4'} 1\n{fifo} 0\n")
  output = tmp_path / "out"
  command = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "input_pipeline.build_tfds",
      f"--annotations={tmp_path / 'list.txt'}",
      f"--root={videos}",
      f"--labels={videos / 'labels.csv'}",
      f"--output_dir={output}",
      "--num_workers=2",
      "--videos_per_shard=2",
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,  # a process group of its own, for the signal
  )
  first_marker = output / "_build/train/videos-train.tfrecord-00000-of-00002.done.json"
  try:
    deadline = time.monotonic() + 120
    while not first_marker.exists() and command.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    workers = pathlib.Path(f"/proc/{command.pid}/task/{command.pid}/children").read_text().split()
    for worker in workers:
      os.kill(int(worker), stop_signal)
    _wait_until_received(workers, stop_signal)
    os.killpg(command.pid, stop_signal)
    stdout, stderr = command.communicate(timeout=60)
  finally:
    if command.poll() is None:
      os.killpg(command.pid, signal.SIGKILL)
  assert stderr == "stopped: rerun the same command to go on from the shards written\n"
  assert stdout == "videos/train: 2/3 videos (shard 1/2)\n"
  assert command.returncode == -stop_signal
  assert [p.name for p in (output / "_build/train").glob("*.done.json")] == [first_marker.name]


def test_the_workers_results_are_let_go_once_written():
  """A split's converted videos would otherwise all stay in the main process's memory until it ends."""
  submitted = collections.deque(futures.Future() for _ in range(3))
  for future in submitted:
    future.set_result((b"video", None))
  results = build_tfds._results_in_order(submitted)
  assert [next(results), next(results)] == [(b"video", None)] * 2
  assert len(submitted) == 1
