"""`python -m xclip_jax.classify`: a user's videos scored against class names."""

import json

import numpy as np
import pytest
import tiny_model
import video_fixtures

from input_pipeline import augment
from input_pipeline import video_decode
import xclip_jax
from xclip_jax import classify


@pytest.fixture(scope="module")
def golden_model(golden_dir):
  return xclip_jax.load_pretrained(golden_dir / "xclip_official.pth")


def test_classify_ranks_all_classes_by_probability(golden_model, golden_dir, tmp_path):
  class_names = json.loads((golden_dir / "meta.json").read_text())["class_names"]
  video = video_fixtures.write_indexed_video(tmp_path / "clip.mp4", num_frames=20)
  (result,) = classify.classify(golden_model, [video], class_names, top_k=len(class_names))
  assert result.video == str(video) and result.error is None
  names = [name for name, _ in result.top]
  probabilities = np.array([p for _, p in result.top])
  assert sorted(names) == sorted(class_names)
  assert np.all(np.diff(probabilities) <= 0)
  np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)
  # The same clip through the API gives the same ranking.
  clip = classify.load_clip(video, golden_model.config.num_frames, golden_model.config.image_resolution)
  assert clip.shape == (4, 32, 32, 3)
  logits = np.asarray(golden_model.logits(clip[None], xclip_jax.tokenize(class_names)))[0]
  assert names[0] == class_names[int(np.argmax(logits))]


@pytest.mark.parametrize(
  "height, width, input_size",
  [(256, 340, 224), (240, 320, 224), (360, 480, 224), (480, 270, 224), (256, 292, 224), (48, 64, 32), (20, 30, 32)],
)
def test_eval_view_is_augment_eval_augment_bit_for_bit(height, width, input_size):
  rng = np.random.default_rng(height * width)
  frames = rng.integers(0, 256, (2, height, width, 3), np.uint8)
  # Smooth ramps too: their bilinear values often fall on .5, where rounding must match exactly.
  frames[1] = (np.add.outer(np.arange(height), 3 * np.arange(width)) % 256)[:, :, None]
  expected = augment.eval_augment(frames, input_size, num_crops=1).numpy()[0]
  np.testing.assert_array_equal(classify.eval_view(frames, input_size), expected)


def test_batches_give_the_results_of_single_videos_and_unreadable_ones_are_reported(tmp_path):
  model = tiny_model.random_model()
  videos = [video_fixtures.write_indexed_video(tmp_path / f"{i}.mp4", num_frames=10 + 7 * i) for i in range(4)]
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  videos[1:1] = [tmp_path / "broken.mp4", tmp_path / "missing.mp4"]
  names = ["a", "b", "c"]
  batched = list(classify.classify(model, videos, names, top_k=3, batch_size=3))
  single = list(classify.classify(model, videos, names, top_k=3, batch_size=1))
  assert [result.video for result in batched] == [str(video) for video in videos]
  assert isinstance(batched[1].error, video_decode.VideoDecodeError)
  assert isinstance(batched[2].error, FileNotFoundError)
  for one, many in zip(single, batched):
    assert [name for name, _ in one.top] == [name for name, _ in many.top]
    np.testing.assert_allclose([p for _, p in one.top], [p for _, p in many.top], rtol=1e-5)
    assert (one.error is None) == (many.error is None) == bool(many.top)
