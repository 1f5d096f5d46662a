"""Decoding, sources, hosts, bad input and resuming of the tf.data pipelines."""

import itertools
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from input_pipeline import video_dataset
from input_pipeline import video_decode
from tests.fixtures import video_fixtures

T = 4
SIZE = 32
# Lengths include videos shorter than T; video i is class i.
LENGTHS = [40, 3, 25, 33, 12, 20, 9, 31]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  folder = root / "videos"
  paths = []
  for i, length in enumerate(LENGTHS):
    path = f"class_{i}/video_{i}.mp4"
    video_fixtures.write_indexed_video(folder / path, length, keyframe_interval=8)
    paths.append(path)
  (folder / "broken").mkdir()
  (folder / "broken/garbage.mp4").write_bytes(b"not a video" * 50)
  video_fixtures.write_indexed_video(folder / "broken/empty.mp4", 0)
  intact = (folder / paths[0]).read_bytes()
  (folder / "broken/truncated.mp4").write_bytes(intact[: len(intact) // 2])
  tar = video_fixtures.write_tar(root / "videos.tar", folder, paths)
  labels = root / "labels.csv"
  labels.write_text("id,name\n" + "".join(f"{i},class {i}\n" for i in range(len(LENGTHS))))
  good = root / "good.txt"
  good.write_text("".join(f"{p} {i}\n" for i, p in enumerate(paths)))
  return {"folder": folder, "tar": tar, "labels": labels, "good": good, "paths": paths, "root": root}


def _annotations(data, name, lines):
  path = data["root"] / name
  path.write_text("".join(f"{line}\n" for line in lines))
  return path


def _good_lines(data):
  return [f"{p} {i}" for i, p in enumerate(data["paths"])]


def _train(data, annotation, root=None, **kwargs):
  settings = dict(num_frames=T, input_size=SIZE, batch_size=3, seed=0)
  settings.update(kwargs)
  return video_dataset.make_train_dataset(str(annotation), str(root or data["folder"]), str(data["labels"]), **settings)


def _eval(data, annotation, **kwargs):
  settings = dict(num_frames=T, input_size=SIZE, batch_size=3)
  settings.update(kwargs)
  return video_dataset.make_eval_dataset(str(annotation), str(data["folder"]), str(data["labels"]), **settings)


def _take(batches, count):
  return list(itertools.islice(batches.as_numpy_iterator(), count))


# Decoding.


def test_decodes_the_requested_frames_in_order_with_repeats(data):
  video_bytes = (data["folder"] / data["paths"][0]).read_bytes()
  assert video_decode.count_frames(video_bytes) == 40
  indices = [39, 0, 17, 17, 8, 23]
  frames = video_decode.decode_frames(video_bytes, indices)
  assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
  assert [video_fixtures.frame_index_of(f) for f in frames] == indices


@pytest.mark.parametrize("codec,keyframe_interval", [("libx264", None), ("libx264", 5), ("mpeg4", 7)])
def test_every_frame_decodes_to_its_own_index(tmp_path, codec, keyframe_interval):
  # B-frames (display order differs from decode order) and several
  # keyframes (decoding starts at the last one before the first frame).
  path = video_fixtures.write_indexed_video(
    tmp_path / "video.mp4", 30, codec=codec, keyframe_interval=keyframe_interval
  )
  video_bytes = path.read_bytes()
  assert video_decode.count_frames(video_bytes) == 30
  for index in range(30):
    frame = video_decode.decode_frames(video_bytes, [index])[0]
    assert video_fixtures.frame_index_of(frame) == index


@pytest.mark.parametrize("name", ["garbage.mp4", "empty.mp4", "truncated.mp4"])
def test_broken_videos_raise_decode_errors(data, name):
  video_bytes = (data["folder"] / "broken" / name).read_bytes()
  with pytest.raises(video_decode.VideoDecodeError):
    video_decode.decode_frames(video_bytes, [0])


def test_index_outside_the_video_is_a_value_error(data):
  video_bytes = (data["folder"] / data["paths"][1]).read_bytes()
  with pytest.raises(ValueError, match="outside a video of 3 frames"):
    video_decode.decode_frames(video_bytes, [3])


# Sources.


def test_folder_and_tar_give_the_same_bytes(data):
  folder = video_decode.VideoSource(data["folder"])
  tar = video_decode.VideoSource(data["tar"])
  for path in data["paths"]:
    assert folder.read_bytes(path) == tar.read_bytes(path)
  for source, root in ((tar, data["tar"]), (folder, data["folder"])):
    with pytest.raises(video_decode.VideoDecodeError, match=f"^not found in {re.escape(str(root))}$"):
      source.read_bytes("class_0/missing.mp4")


def test_root_must_be_a_folder_or_a_tar(tmp_path):
  (tmp_path / "videos.zip").write_bytes(b"PK")
  for root in (tmp_path / "absent", tmp_path / "videos.zip"):
    with pytest.raises(ValueError, match="neither a folder nor a .tar"):
      video_decode.VideoSource(root)
  (tmp_path / "broken.tar").write_bytes(b"not a tar" * 100)
  with pytest.raises(ValueError, match=r"broken\.tar: not an uncompressed tar"):
    video_decode.VideoSource(tmp_path / "broken.tar")


def test_tar_members_are_found_by_base_name_as_officially(data, tmp_path):
  # The official code looks up only the file name inside the tar.
  flat = video_fixtures.write_tar(tmp_path / "flat.tar", data["folder"] / "class_2", ["video_2.mp4"])
  source = video_decode.VideoSource(flat)
  assert source.read_bytes("class_2/video_2.mp4") == (data["folder"] / "class_2/video_2.mp4").read_bytes()


def test_a_tar_named_in_capitals_is_a_tar(data, tmp_path):
  upper = video_fixtures.write_tar(tmp_path / "FLAT.TAR", data["folder"] / "class_2", ["video_2.mp4"])
  assert video_decode.check_root(upper) == "tar"
  assert (
    video_decode.VideoSource(upper).read_bytes("video_2.mp4") == (data["folder"] / "class_2/video_2.mp4").read_bytes()
  )


def test_a_tar_member_is_found_by_base_name_only_where_its_folders_agree(tmp_path):
  """A folder one path lacks at its start (a tar of a top folder, a list of bare names) is not a different folder."""
  (tmp_path / "videos/val").mkdir(parents=True)
  (tmp_path / "videos/val/clip.mp4").write_bytes(b"val clip")
  tar = video_fixtures.write_tar(tmp_path / "videos.tar", tmp_path, ["videos/val/clip.mp4"])
  source = video_decode.VideoSource(tar)
  for listed in ("clip.mp4", "val/clip.mp4", "data/videos/val/clip.mp4"):
    assert source.read_bytes(listed) == b"val clip"
  for listed in ("train/clip.mp4", "other/val/clip.mp4"):
    with pytest.raises(video_decode.VideoDecodeError, match="^not found in "):
      source.read_bytes(listed)  # another folder's video of the same name: the wrong class, or the wrong split


def test_tar_members_stored_as_links_are_read_as_the_files_they_link_to(data, tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  video = (data["folder"] / "class_0/video_0.mp4").read_bytes()
  (folder / "a.mp4").write_bytes(video)
  os.link(folder / "a.mp4", folder / "hard.mp4")
  (folder / "sub").mkdir()
  (folder / "sub/soft.mp4").symlink_to("../hard.mp4")
  (folder / "sub/soft_of_soft.mp4").symlink_to("soft.mp4")
  (folder / "sub/dangling.mp4").symlink_to("../gone.mp4")
  # As `tar -cf videos.tar -C videos .` stores them: the second name of a file as a hard link.
  with tarfile.open(tmp_path / "videos.tar", "w") as tar:
    tar.add(folder, arcname=".")
    assert {m.name: m.type for m in tar.getmembers()}["./hard.mp4"] == tarfile.LNKTYPE
  source = video_decode.VideoSource(tmp_path / "videos.tar")
  for name in ("a.mp4", "hard.mp4", "sub/soft.mp4", "sub/soft_of_soft.mp4"):
    assert source.read_bytes(name) == video
  with pytest.raises(video_decode.VideoDecodeError, match="^not found in "):
    source.read_bytes("sub/dangling.mp4")


def test_a_base_name_two_tar_members_share_finds_neither_and_a_tar_cut_inside_a_member_says_so(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "a/x.mp4").write_bytes(b"a" * 5000)
  (tmp_path / "b/x.mp4").write_bytes(b"b" * 5000)
  tar = video_fixtures.write_tar(tmp_path / "videos.tar", tmp_path, ["a/x.mp4", "b/x.mp4"])
  source = video_decode.VideoSource(tar)
  assert source.read_bytes("b/x.mp4") == b"b" * 5000
  with pytest.raises(video_decode.VideoDecodeError, match="^not found in "):
    source.read_bytes("c/x.mp4")  # which x.mp4 it means, the base name does not tell
  data = tar.read_bytes()
  tar.write_bytes(data[: data.index(b"b" * 5000) + 100])  # the copy stopped inside b/x.mp4
  with pytest.raises(video_decode.VideoDecodeError, match=r"b/x\.mp4: .*videos\.tar ends inside this member"):
    source.read_bytes("b/x.mp4")


def test_folder_and_tar_streams_agree(data):
  from_folder = _take(_train(data, data["good"]), 2)
  from_tar = _take(_train(data, data["good"], root=data["tar"]), 2)
  for a, b in zip(from_folder, from_tar):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


# Training stream.


def test_train_batches_have_the_agreed_layout(data):
  batch = _take(_train(data, data["good"]), 1)[0]
  assert batch["video"].shape == (3, T, SIZE, SIZE, 3)
  assert batch["video"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["resume_position"], [3, 3, 3])


def test_train_stream_is_reproducible_and_follows_the_seed(data):
  first = _take(_train(data, data["good"], seed=4), 3)
  again = _take(_train(data, data["good"], seed=4), 3)
  other = _take(_train(data, data["good"], seed=5), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert any(
    (a["label"] != c["label"]).any() or np.abs(a["video"] - c["video"]).max() > 0 for a, c in zip(first, other)
  )


def test_each_epoch_visits_every_video_once(data):
  # 8 videos, batches of 4: two batches per epoch, epochs reshuffled.
  batches = _take(_train(data, data["good"], batch_size=4), 6)
  labels = [np.concatenate([b["label"] for b in batches[i : i + 2]]) for i in (0, 2, 4)]
  for epoch_labels in labels:
    assert sorted(epoch_labels) == list(range(len(LENGTHS)))
  assert not all((labels[0] == other).all() for other in labels[1:])


def test_two_processes_read_their_rows_of_the_single_process_batches(data):
  # The global batches (clips, labels, resume positions) do not depend on the number of processes; a broken video
  # in the list gets the same stand-in whoever reads it. 9 lines, batches of 4 from position 4: into epoch 1.
  lines = _good_lines(data)
  lines.insert(7, "broken/garbage.mp4 0")  # read at positions 6 and 11: by process 1
  annotation = _annotations(data, "hosts.txt", lines)
  settings = dict(batch_size=4, max_failure_fraction=0.5, start_position=4)
  failures = video_dataset.FailureLog()
  single = _take(_train(data, annotation, failures=failures, **settings), 2)
  assert failures.paths == {"broken/garbage.mp4"}
  parts = [_take(_train(data, annotation, process_index=p, process_count=2, **settings), 2) for p in (0, 1)]
  for k, batch in enumerate(single):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), batch[key], err_msg=key)
  assert [int(b["resume_position"][0]) for b in single] == [8, 12]


def test_epochs_are_whole_global_batches_of_a_permutation():
  order = video_dataset.TrainOrder(11, seed=3, batch_size=4)
  assert order.slots_per_epoch == 8
  for epoch in (0, 1):
    lines = [order.locate(epoch * 8 + k)[2] for k in range(8)]
    np.testing.assert_array_equal(lines, video_dataset.epoch_permutation(11, 3, epoch)[:8])
  # Process 1 of 2 reads rows 2 and 3 of every global batch.
  positions = order.positions(start_position=8, process_index=1, process_count=2)
  assert [int(p) for p in positions.take(4)] == [10, 11, 14, 15]
  with pytest.raises(ValueError, match="start_position 6 is not a multiple of the global batch size 4"):
    order.positions(start_position=6, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="global batch size 4 is not divisible by the 3 processes"):
    order.positions(start_position=0, process_index=0, process_count=3)


def test_each_slot_draws_its_own_stand_ins():
  # Seeded by the slot too: broken videos of one epoch do not all get the same stand-in.
  order = video_dataset.TrainOrder(1000, seed=3, batch_size=4)
  first_stand_ins = {order.stand_in(epoch=0, slot=slot, attempt=1) for slot in range(20)}
  assert len(first_stand_ins) > 10


def test_each_attempt_draws_another_stand_in():
  # Seeded by the attempt too: a slot whose stand-in is broken tries another video, not the same one again.
  order = video_dataset.TrainOrder(1000, seed=3, batch_size=4)
  stand_ins = {order.stand_in(epoch=0, slot=5, attempt=attempt) for attempt in range(1, 11)}
  assert len(stand_ins) > 5


def test_a_slot_gets_max_stand_ins_stand_ins_then_gives_up():
  order = video_dataset.TrainOrder(1000, seed=3, batch_size=4)
  for attempt in range(1, video_dataset.MAX_STAND_INS + 1):
    assert 0 <= order.stand_in(epoch=0, slot=5, attempt=attempt) < 1000
  with pytest.raises(video_dataset.TooManyFailuresError, match=f"and {video_dataset.MAX_STAND_INS} stand-ins for it"):
    order.stand_in(epoch=0, slot=5, attempt=video_dataset.MAX_STAND_INS + 1)


def test_resumed_stream_continues_with_identical_batches(data):
  # A broken video in the list: skipping must not shift the resumed stream.
  lines = _good_lines(data)
  lines.insert(3, "broken/garbage.mp4 0")
  annotation = _annotations(data, "with_broken.txt", lines)
  settings = dict(max_failure_fraction=0.5)
  full = _take(_train(data, annotation, **settings), 5)
  position = int(full[1]["resume_position"][0])
  resumed = _take(_train(data, annotation, start_position=position, **settings), 3)
  for a, b in zip(full[2:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_broken_and_missing_videos_are_replaced_by_good_ones_and_counted(data):
  lines = _good_lines(data) + [
    "broken/garbage.mp4 0",
    "broken/empty.mp4 1",
    "broken/truncated.mp4 2",
    "nowhere/missing.mp4 3",
  ]
  annotation = _annotations(data, "broken.txt", lines)
  failures = video_dataset.FailureLog()
  batches = _take(_train(data, annotation, batch_size=4, failures=failures, max_failure_fraction=0.5), 3)
  # One epoch of 12 slots: the 8 good videos in theirs, good stand-ins in the 4 broken ones' slots.
  labels = np.concatenate([b["label"] for b in batches])
  assert len(labels) == 12 and set(labels) == set(range(len(LENGTHS)))
  assert failures.paths == {"broken/garbage.mp4", "broken/empty.mp4", "broken/truncated.mp4", "nowhere/missing.mp4"}
  assert failures.count >= 4


# 10 lines, 2 broken, 10% allowed: of an epoch's 9 training slots (3 batches of 3), of the 10 evaluated videos.
@pytest.mark.parametrize(
  # Training passes its 0.9 at the first, but reads ahead: both may have failed by the time the error is raised.
  "make,message",
  [(_train, r"[12] videos? failed .* \(0.9 here\);"), (_eval, r"2 videos failed .* \(1 here\);")],
)
def test_too_many_failures_stop_the_iterator_with_a_python_error(data, make, message):
  # Raised by Batches, not inside tf.data, whose OpError would carry the traceback (and be logged by TensorFlow).
  lines = _good_lines(data) + ["broken/garbage.mp4 0", "broken/empty.mp4 1"]
  annotation = _annotations(data, "too_broken.txt", lines)
  with pytest.raises(video_dataset.TooManyFailuresError, match=f"^{message}"):
    _take(make(data, annotation, max_failure_fraction=0.1), 4)


def test_each_of_several_processes_stops_once_more_than_the_share_of_the_whole_list_failed(data):
  """2 of 10 videos broken, 10% allowed (1 video of the list): each of two processes, reading half of each epoch,
  meets both within two epochs (seed 1) and stops there, as a single process would."""
  lines = _good_lines(data) + ["broken/garbage.mp4 0", "broken/empty.mp4 1"]
  annotation = _annotations(data, "too_broken.txt", lines)
  for process_index in (0, 1):
    settings = dict(batch_size=2, seed=1, max_failure_fraction=0.1, process_index=process_index, process_count=2)
    with pytest.raises(video_dataset.TooManyFailuresError, match=r"^2 videos failed .* \(1 here\);"):
      _take(_train(data, annotation, **settings), 10)


def test_a_list_within_the_allowed_share_stops_no_process_however_many_epochs_it_reads(data):
  """2 of 10 videos broken, 20% allowed: within what the list may hold. Each of two processes reads half of each epoch
  and with seed 1 meets one broken video in its first epoch and the other in its second: allowed (2 videos of the
  list), not stopped as over the half it read first."""
  lines = _good_lines(data) + ["broken/garbage.mp4 0", "broken/empty.mp4 1"]
  annotation = _annotations(data, "two_broken.txt", lines)
  for process_index in (0, 1):
    failures = video_dataset.FailureLog()
    settings = dict(batch_size=2, seed=1, max_failure_fraction=0.2, process_index=process_index, process_count=2)
    batches = _train(data, annotation, failures=failures, **settings).as_numpy_iterator()
    for epoch in range(2):
      list(itertools.islice(batches, 5))
      assert len(failures.paths) == epoch + 1  # the premise: one more broken video met in each epoch


def test_an_evaluation_over_several_processes_allows_each_the_share_of_the_whole_list(data):
  """1 of 9 videos broken, 12% allowed (1.08 videos): within what the list may hold, so the process whose half holds
  it evaluates to the end, as a single process would (not stopped as over its own 5 lines' 0.6)."""
  lines = _good_lines(data) + ["broken/garbage.mp4 0"]
  annotation = _annotations(data, "one_broken.txt", lines)
  failed = 0
  for process_index in (0, 1):
    settings = dict(batch_size=2, max_failure_fraction=0.12, process_index=process_index, process_count=2)
    batches = _take(_eval(data, annotation, **settings), 10)
    failed += sum(int(np.sum(batch["index"] >= 0) - np.sum(batch["mask"])) for batch in batches)
  assert failed == 1  # the premise: one process met the broken video


def test_a_slot_whose_stand_ins_all_fail_stops_the_iterator_with_a_python_error(data):
  """Every video broken, every failure allowed: the 20 stand-ins of the first slots run out (not a TensorFlow error
  whose message holds the traceback of the callback)."""
  annotation = _annotations(data, "all_broken.txt", ["broken/garbage.mp4 0", "broken/empty.mp4 1"])
  # The slot whose decoding thread gets there first.
  message = rf"the video at slot [01] of epoch 0 and {video_dataset.MAX_STAND_INS} stand-ins for it failed to decode"
  with pytest.raises(video_dataset.TooManyFailuresError, match=f"^{message}$"):
    _take(_train(data, annotation, batch_size=2, max_failure_fraction=1.0), 1)


def test_a_skipped_video_is_one_warning_however_often_it_fails(caplog, tmp_path):
  """... in one pipeline, and in the next evaluation's, which reads the same list again."""
  garbage, empty = str(tmp_path / "garbage.mp4"), str(tmp_path / "empty.mp4")  # warned about by no other test
  failures = video_dataset.FailureLog()
  for _ in range(3):
    failures.add(garbage, "not a readable video", max_failures=10)
  failures.add(empty, "no frames", max_failures=10)
  next_evaluation = video_dataset.FailureLog()
  next_evaluation.add(garbage, "not a readable video", max_failures=10)
  assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
    f"skipping video {garbage}: not a readable video",
    f"skipping video {empty}: no frames",
  ]
  assert failures.count == 4 and failures.error is None and next_evaluation.count == 1


def test_the_error_counts_every_video_failed_by_the_time_it_is_raised(tmp_path):
  """Not only the one that passed the allowance: the pipeline reads ahead, and the user saw a warning for each."""
  failures = video_dataset.FailureLog()
  failures.add(str(tmp_path / "a.mp4"), "not a readable video", max_failures=0.16)
  assert str(failures.error).startswith("1 video failed to decode, more than data.max_failure_fraction allows (0.16")
  for name in ("b.mp4", "c.mp4", "d.mp4"):
    failures.add(str(tmp_path / name), "no frames", max_failures=0.16)
  assert str(failures.error) == (
    "4 videos failed to decode, more than data.max_failure_fraction allows (0.16 here); "
    f"the last was {tmp_path / 'd.mp4'}: no frames"
  )


def test_bad_annotation_is_refused_at_start_up(data):
  annotation = _annotations(data, "bad_label.txt", _good_lines(data) + ["class_0/video_0.mp4 8"])
  with pytest.raises(ValueError, match=r"bad_label\.txt:9: label 8"):
    _train(data, annotation)


# Evaluation.


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_evaluation_sees_every_video_once_across_hosts(data, process_count):
  lines = _good_lines(data)[:7] + ["broken/garbage.mp4 0"]
  annotation = _annotations(data, "val.txt", lines)
  failures = video_dataset.FailureLog()
  seen, failed, num_batches = [], [], set()
  for process_index in range(process_count):
    batches = _take(
      _eval(
        data,
        annotation,
        batch_size=6,
        process_index=process_index,
        process_count=process_count,
        failures=failures,
        max_failure_fraction=1.0,
      ),
      100,
    )
    num_batches.add(len(batches))
    for batch in batches:
      index, mask = batch["index"], batch["mask"]
      seen.extend(index[index >= 0])
      failed.extend(index[(index >= 0) & ~mask])
      assert (batch["label"][mask] == index[mask]).all()
      assert (batch["label"][index < 0] == -1).all()
  assert len(num_batches) == 1  # Hosts stay in step.
  assert sorted(seen) == list(range(8))
  assert failed == [7]
  assert failures.paths == {"broken/garbage.mp4"}


def test_an_evaluation_says_how_many_videos_its_list_holds_over_all_processes(data):
  # What its progress counts to: 7 lines (one unreadable) in global batches of 4, read by 2 processes.
  annotation = _annotations(data, "val.txt", _good_lines(data)[:6] + ["broken/garbage.mp4 0"])
  batches = _eval(data, annotation, batch_size=4, process_index=1, process_count=2)
  assert batches.num_videos == 7


def test_each_evaluation_process_reads_its_block_of_rows_of_every_global_batch():
  # 10 lines in 3 global batches of 4 (the last padded with -1); of 2 processes, 0 reads rows 0-1, 1 reads rows 2-3.
  assert video_dataset.eval_lines(10, batch_size=4, process_index=0, process_count=2).tolist() == [0, 1, 4, 5, 8, 9]
  assert video_dataset.eval_lines(10, batch_size=4, process_index=1, process_count=2).tolist() == [2, 3, 6, 7, -1, -1]


def test_eval_views_and_frames(data):
  annotation = _annotations(data, "one.txt", [f"{data['paths'][0]} 0"])
  batch = _take(_eval(data, annotation, batch_size=1, num_clips=2, num_crops=3), 1)[0]
  assert batch["video"].shape == (1, 6, T, SIZE, SIZE, 3)
  # Grey frames: every pixel tells the frame index. Clip k of 2 of a
  # 40-frame video takes frames int(10 i + 10 (k + .5) / 2) = 10 i + 2 | 7.
  grey = batch["video"][0, :, :, 0, 0, 0] * 58.395 + 123.675
  indices = np.round((grey - 8) / 4).astype(int)
  np.testing.assert_array_equal(indices[0], [2, 12, 22, 32])
  np.testing.assert_array_equal(indices[3], [7, 17, 27, 37])
  np.testing.assert_array_equal(indices[:3], np.repeat(indices[:1], 3, 0))


def test_train_clips_follow_the_training_sampling_rule(data):
  # Gray levels survive crops, flips, grayscale and jitter in order only:
  # frames must come out in time order, one per segment of 10 frames.
  annotation = _annotations(data, "first.txt", [f"{data['paths'][0]} 0"])
  for batch in itertools.islice(_train(data, annotation, batch_size=1).as_numpy_iterator(), 6):
    video = batch["video"][0]
    assert (np.diff(video.mean(axis=(1, 2, 3))) > 0).all()


def test_pipelines_run_without_tf_data_autotuning(data):
  # Freeing an autotuned iterator waits for the autotuning thread's next round, up to a minute (see finish).
  annotation = _annotations(data, "autotune.txt", _good_lines(data))
  for batches in (_train(data, annotation), _eval(data, annotation)):
    assert batches.dataset.options().autotune.enabled is False


def test_process_exits_while_a_training_iterator_is_alive(data):
  # A tf.data thread inside a Python call while the interpreter finalises
  # hangs the process; slow decoding makes sure calls are running at exit.
  script = f"""
import sys, time
sys.path.insert(0, {str(pathlib.Path(__file__).parents[2])!r})
from input_pipeline import video_dataset, video_decode
decode = video_decode.decode_sampled_frames
def slow_decode(*args):
  time.sleep(0.3)
  return decode(*args)
video_decode.decode_sampled_frames = slow_decode
dataset = video_dataset.make_train_dataset(
    {str(data["good"])!r}, {str(data["folder"])!r}, {str(data["labels"])!r},
    num_frames={T}, input_size={SIZE}, batch_size=1, seed=0)
iterator = dataset.as_numpy_iterator()
next(iterator)
print('one batch')
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "one batch" in result.stdout


def test_in_a_tar_of_a_top_folder_a_name_of_two_splits_is_found_by_its_folder(tmp_path):
  """videos/train/clip.mp4 and videos/val/clip.mp4: the listed train/clip.mp4 is the first, a bare clip.mp4 neither."""
  for split in ("train", "val"):
    (tmp_path / "videos" / split).mkdir(parents=True)
    (tmp_path / "videos" / split / "clip.mp4").write_bytes(split.encode())
  tar = video_fixtures.write_tar(tmp_path / "v.tar", tmp_path, ["videos/train/clip.mp4", "videos/val/clip.mp4"])
  source = video_decode.VideoSource(tar)
  assert (source.read_bytes("train/clip.mp4"), source.read_bytes("val/clip.mp4")) == (b"train", b"val")
  with pytest.raises(video_decode.VideoDecodeError, match="^not found in "):
    source.read_bytes("clip.mp4")
