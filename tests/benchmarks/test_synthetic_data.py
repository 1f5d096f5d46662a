"""The benchmarks' generated videos and class names."""

import av
import numpy as np

from benchmarks import synthetic_data
from input_pipeline import annotations
from xclip_jax.model import tokenizer
from xclip_jax.model import xclip


def test_videos_have_the_shape_size_and_keyframes_of_kinetics_clips(tmp_path):
  path = synthetic_data.write_textured_video(tmp_path / "videos" / "0.mp4")
  assert 0.3 < path.stat().st_size / 2**20 < 0.8
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    shape = (stream.codec_context.name, stream.width, stream.height, stream.average_rate, stream.frames)
    keyframes = [round(p.pts * stream.time_base * 30) for p in container.demux(stream) if p.is_keyframe and p.size]
  assert shape == ("h264", 340, 256, 30, 300)  # 10 s
  # libx264's default interval of at most 250 frames, and no scene cut in between.
  assert keyframes[0] == 0 and all(200 <= b - a <= 250 for a, b in zip(keyframes, keyframes[1:])), keyframes


def test_videos_show_their_frames(tmp_path):
  frames = synthetic_data.textured_frames(20, 64, 48, seed=3)
  path = synthetic_data.write_textured_video(tmp_path / "small.mp4", num_frames=20, width=64, height=48, seed=3)
  with av.open(str(path)) as container:
    decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
  assert len(decoded) == 20
  assert np.abs(np.asarray(decoded, np.float32) - np.asarray(frames, np.float32)).mean() < 10  # lossy, but these frames


def test_generated_class_names_are_a_label_list_of_the_token_lengths_of_kinetics_400(tmp_path, labels_dir):
  """As many names of each length the text tower runs (end token, rounded up to 4) as Kinetics-400 has."""
  names = annotations.read_label_list(synthetic_data.write_label_list(tmp_path / "labels.csv", 400))
  assert len(names) == len(set(names)) == 400
  kinetics = annotations.read_label_list(labels_dir / "kinetics_400_labels.csv")
  counts = [np.unique(xclip.text_lengths(tokenizer.tokenize(n)), return_counts=True) for n in (names, kinetics)]
  np.testing.assert_array_equal(counts[0], counts[1])
