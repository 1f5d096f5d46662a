"""Frame indices against the official SampleFrames(clip_len=1) rules."""

import numpy as np
import pytest

from input_pipeline import sampling

T = 8
LENGTHS = [1, 3, 5, 7, 8, 9, 15, 16, 17, 40, 300]


def test_eval_indices_are_segment_centres():
  # int(i * n / T + n / (2 T)) for n = 40 and n = 300.
  np.testing.assert_array_equal(sampling.eval_frame_indices(40, T), [2, 7, 12, 17, 22, 27, 32, 37])
  np.testing.assert_array_equal(sampling.eval_frame_indices(300, T), [18, 56, 93, 131, 168, 206, 243, 281])


def test_eval_indices_of_videos_shorter_than_t_repeat_frames():
  # n = 5: segments of 0.625 frames, centres 0.3125, 0.9375, 1.5625, ...
  np.testing.assert_array_equal(sampling.eval_frame_indices(5, T), [0, 0, 1, 2, 2, 3, 4, 4])
  np.testing.assert_array_equal(sampling.eval_frame_indices(1, T), [0] * T)


def test_train_indices_take_one_frame_in_each_segment():
  for n in [8, 9, 15, 16, 17, 40, 300]:
    segment = n // T
    seen = set()
    for seed in range(40):
      indices = sampling.train_frame_indices(n, T, np.random.default_rng(seed))
      offsets = indices - np.arange(T) * segment
      assert ((offsets >= 0) & (offsets < segment)).all(), (n, indices)
      seen.update(offsets.tolist())
    # Every offset of the segment is drawn (frames after T * segment never
    # are, as officially).
    assert seen == set(range(segment)), n


def test_train_indices_of_videos_shorter_than_t_follow_the_fallback():
  # Official: np.around(arange(T) * n / T), halves to even, no randomness.
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(sampling.train_frame_indices(5, T, rng), [0, 1, 1, 2, 2, 3, 4, 4])
  # n = 3: round(7 * 3 / 8) = 3 is past the end and loops to 0.
  np.testing.assert_array_equal(sampling.train_frame_indices(3, T, rng), [0, 0, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(sampling.train_frame_indices(1, T, rng), [0] * T)


@pytest.mark.parametrize("n", LENGTHS)
def test_indices_stay_inside_the_video(n):
  for indices in [
    sampling.train_frame_indices(n, T, np.random.default_rng(n)),
    sampling.eval_frame_indices(n, T),
    sampling.eval_frame_indices(n, T, num_clips=4, clip_index=3),
  ]:
    assert indices.shape == (T,) and indices.dtype == np.int64
    assert indices.min() >= 0 and indices.max() < n


def test_train_indices_are_reproducible_from_the_generator_seed():
  first = sampling.train_frame_indices(300, T, np.random.default_rng(7))
  again = sampling.train_frame_indices(300, T, np.random.default_rng(7))
  other = sampling.train_frame_indices(300, T, np.random.default_rng(8))
  np.testing.assert_array_equal(first, again)
  assert (first != other).any()


def test_multi_clip_views_stratify_each_segment():
  # 4 clips of a 320-frame video: segments of 40, clip k at 40 (k + .5) / 4.
  clips = np.stack([sampling.eval_frame_indices(320, T, 4, k) for k in range(4)])
  np.testing.assert_array_equal(clips[:, 0], [5, 15, 25, 35])
  np.testing.assert_array_equal(clips - clips[:, :1], np.tile(np.arange(T) * 40, (4, 1)))
  np.testing.assert_array_equal(sampling.eval_frame_indices(320, T, 1, 0), sampling.eval_frame_indices(320, T))


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="0 frames"):
    sampling.eval_frame_indices(0, T)
  with pytest.raises(ValueError, match="clip_index"):
    sampling.eval_frame_indices(40, T, num_clips=2, clip_index=2)
