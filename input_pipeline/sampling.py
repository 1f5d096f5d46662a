"""Which frames of a video make a clip: the official segment sampling.

X-CLIP samples with mmaction's SampleFrames(clip_len=1, frame_interval=1,
num_clips=T): the video is cut into T equal segments and one frame is taken
from each. Training takes a random frame per segment, evaluation the centre.

Multi-view evaluation (e.g. 4 clips x 3 crops): the official code builds the
4 clips by drawing the *training* rule 4 times, so its test score changes from
run to run. We keep evaluation deterministic instead: clip k of K takes, in
every segment, the frame at fraction (k + 1/2) / K of the segment, i.e. the
K clips stratify each segment the way K random draws cover it on average.
With K = 1 this is exactly the official centre rule.
"""

import numpy as np


def _check(num_frames: int, num_segments: int):
  if num_frames < 1:
    raise ValueError(f"cannot sample from a video of {num_frames} frames")
  if num_segments < 1:
    raise ValueError(f"num_segments must be positive, got {num_segments}")


def train_frame_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """One random frame per segment (SampleFrames._get_train_clips).

  Videos shorter than num_segments follow the official fallback: the
  segments then shrink below one frame and take frame round(i * n / T)
  modulo n (the official 'loop' for indices past the end), so frames repeat
  and no randomness is used.

  Args:
    num_frames: frames in the video (>= 1).
    num_segments: T, the clip length.
    rng: source of the per-segment offsets.

  Returns:
    int64 indices, shape (num_segments,).
  """
  _check(num_frames, num_segments)
  segment_length = num_frames // num_segments
  if segment_length > 0:
    starts = np.arange(num_segments) * segment_length
    return starts + rng.integers(segment_length, size=num_segments)
  # np.around rounds halves to even, as the official code does.
  # With n <= T / 2 the last index rounds up to n and loops back to 0.
  ratio = num_frames / num_segments
  indices = np.around(np.arange(num_segments) * ratio).astype(np.int64)
  return indices % num_frames


def eval_frame_indices(num_frames: int, num_segments: int, num_clips: int = 1, clip_index: int = 0) -> np.ndarray:
  """Frame of each segment for clip clip_index of num_clips (see module doc).

  For num_clips=1 this is SampleFrames._get_test_clips: the centre of each of
  T segments of n/T frames, int(i * n/T + n/(2T)); short videos repeat frames.

  Returns:
    int64 indices, shape (num_segments,), non-decreasing.
  """
  _check(num_frames, num_segments)
  if not 0 <= clip_index < num_clips:
    raise ValueError(f"clip_index {clip_index} is not in [0, num_clips={num_clips})")
  segment_length = num_frames / num_segments
  offset = segment_length * (clip_index + 0.5) / num_clips
  return (np.arange(num_segments) * segment_length + offset).astype(np.int64)


def eval_clips_frame_indices(num_video_frames: int, num_frames: int, num_clips: int) -> np.ndarray:
  """Frame indices of every evaluation clip of a video, clip after clip."""
  return np.concatenate([eval_frame_indices(num_video_frames, num_frames, num_clips, k) for k in range(num_clips)])
