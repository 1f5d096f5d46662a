"""A video folder, a tar of it and its TFDS records give the same clips."""

import itertools
import pathlib

import numpy as np
import pytest

from benchmarks import synthetic_data
from input_pipeline import build_tfds
from input_pipeline import normalization
from input_pipeline import sampling
from input_pipeline import tfds_dataset
from input_pipeline import video_dataset
from input_pipeline import video_decode
from tests.fixtures import video_fixtures

NUM_VIDEOS = 3
# Indexed videos for evaluation: one shorter than the 8 frames of a clip.
INDEXED_LENGTHS = (5, 20, 27)
MEAN = np.array(normalization.MEAN_RGB, np.float32)
STD = np.array(normalization.STD_RGB, np.float32)
# Stored frames are JPEG quality 90 (build_tfds's default). On the noisy
# textured footage below that moves a frame by 2.1 grey levels on average
# (2.35 at most per augmented frame), while consecutive frames differ by 11:
# a per-frame mean difference under 4 levels is JPEG, more is another frame,
# crop, flip or colour.
JPEG_TOLERANCE = 4.0


def _sources(root, annotation_name, tmp_path_factory):
  """(annotations, labels, {source name: make_*_dataset arguments})."""
  names = [f"clips/{i}.mp4" for i in range(NUM_VIDEOS)]
  video_fixtures.write_tar(root / "videos.tar", root, names)
  annotations = root / annotation_name
  annotations.write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
  labels = root / "labels.csv"
  labels.write_text("id,name\n" + "".join(f"{i},class{i}\n" for i in range(NUM_VIDEOS)))
  records = tmp_path_factory.mktemp("records")
  build_tfds.build_split(
    annotations_path=str(annotations), root=str(root), labels_path=str(labels), output_dir=str(records)
  )
  common = (str(annotations), str(root / "videos.tar"), str(labels))
  return {
    "folder": (video_dataset, (str(annotations), str(root), str(labels))),
    "tar": (video_dataset, common),
    "records": (tfds_dataset, (str(records), "train")),
  }


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
  root = tmp_path_factory.mktemp("textured")
  for i in range(NUM_VIDEOS):
    synthetic_data.write_textured_video(root / f"clips/{i}.mp4", 40, width=64, height=48, seed=i)
  return _sources(root, "train.txt", tmp_path_factory)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
  root = tmp_path_factory.mktemp("indexed")
  for i, length in enumerate(INDEXED_LENGTHS):
    video_fixtures.write_indexed_video(root / f"clips/{i}.mp4", length)
  return _sources(root, "test.txt", tmp_path_factory)


def _train_clips(source, seed):
  module, inputs = source
  dataset = module.make_train_dataset(*inputs, num_frames=8, input_size=32, batch_size=2, seed=seed)
  batches = list(itertools.islice(dataset.as_numpy_iterator(), 3))
  return (np.concatenate([b["video"] for b in batches]) * STD, [b["resume_position"][0] for b in batches])


def _per_frame_difference(clips, other):
  return np.abs(clips - other).mean(axis=(2, 3, 4))


def test_training_clips_agree_across_sources(textured):
  folder, folder_positions = _train_clips(textured["folder"], seed=7)
  tar, tar_positions = _train_clips(textured["tar"], seed=7)
  records, record_positions = _train_clips(textured["records"], seed=7)
  np.testing.assert_array_equal(tar, folder)
  assert folder_positions == tar_positions == record_positions
  # Six clips over two epochs: each frame is the same up to JPEG coding.
  assert _per_frame_difference(records, folder).max() < JPEG_TOLERANCE
  # The bound is tight enough to see other frames, crops and colours.
  other_seed, _ = _train_clips(textured["records"], seed=8)
  assert _per_frame_difference(other_seed, folder).mean() > 5 * JPEG_TOLERANCE


def _shown_frames(views, video_path):
  """Index of the decoded frame that each frame of each view shows."""
  video_bytes = video_path.read_bytes()
  frames = video_decode.decode_frames(video_bytes, range(video_decode.count_frames(video_bytes)))
  levels = frames.mean(axis=(1, 2, 3))
  shown = (views * STD + MEAN).mean(axis=(2, 3, 4))
  return np.abs(shown[..., None] - levels).argmin(axis=-1)


@pytest.mark.parametrize("source", ["folder", "tar", "records"])
def test_evaluation_views_show_the_official_frames(indexed, source):
  module, inputs = indexed[source]
  (batch,) = module.make_eval_dataset(
    *inputs, num_frames=8, input_size=32, batch_size=NUM_VIDEOS, num_clips=2, num_crops=3
  ).as_numpy_iterator()
  root = pathlib.Path(indexed["folder"][1][1])
  for i, length in enumerate(INDEXED_LENGTHS):
    # Views are clip-major: clip 0 in three crops, then clip 1.
    expected = [sampling.eval_frame_indices(length, 8, 2, clip) for clip in (0, 1) for _ in range(3)]
    np.testing.assert_array_equal(_shown_frames(batch["video"][i], root / f"clips/{i}.mp4"), expected)
