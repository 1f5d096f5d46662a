"""`python -m xclip_jax.classify`: a user's video scored against class names."""

import json

import numpy as np
import pytest
import video_fixtures

from input_pipeline import video_decode
import xclip_jax
from xclip_jax import classify


@pytest.fixture(scope="module")
def golden_model(golden_dir):
  return xclip_jax.load_pretrained(golden_dir / "xclip_official.pth")


def test_classify_ranks_all_classes_by_probability(golden_model, golden_dir, tmp_path):
  class_names = json.loads((golden_dir / "meta.json").read_text())["class_names"]
  video = video_fixtures.write_indexed_video(tmp_path / "clip.mp4", num_frames=20)
  (top,) = classify.classify(golden_model, [video], class_names, top_k=len(class_names))
  names = [name for name, _ in top]
  probabilities = np.array([p for _, p in top])
  assert sorted(names) == sorted(class_names)
  assert np.all(np.diff(probabilities) <= 0)
  np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)
  # The same clip through the API gives the same ranking.
  clip = classify.load_clip(video, golden_model.config.num_frames, golden_model.config.image_resolution)
  assert clip.shape == (4, 32, 32, 3)
  logits = np.asarray(golden_model.logits(clip[None], xclip_jax.tokenize(class_names)))[0]
  assert names[0] == class_names[int(np.argmax(logits))]


def test_unreadable_video_is_reported(golden_model, tmp_path):
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  with pytest.raises(video_decode.VideoDecodeError):
    classify.classify(golden_model, [tmp_path / "broken.mp4"], ["a", "b"])
