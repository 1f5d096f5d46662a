"""Crops, flips, colours and normalisation against the official rules."""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import augment

# The official X-CLIP normalisation (img_norm_cfg of its datasets/build.py): ImageNet's mean (0.485, 0.456, 0.406)
# and std (0.229, 0.224, 0.225) times 255, not OpenAI CLIP's own (0.481, 0.458, 0.408), (0.269, 0.261, 0.276).
MEAN = np.array((123.675, 116.28, 103.53), np.float32)
STD = np.array((58.395, 57.12, 57.375), np.float32)
# resize_scale(28) == 32, so a frame with a short side of 32 is not resized.
INPUT_SIZE = 28


def _known_clip(num_frames=3, height=32, width=48):
  """Pixel (y, x) of frame t is (4x + t, 4y + t, 200 - 2x): all distinct."""
  t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
  return np.stack([4 * x + t, 4 * y + t, 200 - 2 * x], -1).astype(np.uint8)


def _denormalize(video):
  return np.asarray(video) * STD + MEAN


@tf.function
def _sample(seed, height, width):
  return augment.sample_train_params(seed, height, width, 32)


def _params(**changes):
  params = {
    "crop_box": [0, 0, INPUT_SIZE, INPUT_SIZE],
    "flip": False,
    "jitter": False,
    "brightness": 1.0,
    "contrast": 1.0,
    "saturation": 1.0,
    "hue": 0.0,
    "jitter_order": [0, 1, 2, 3],
    "grayscale": False,
  }
  params.update(changes)
  return {k: tf.constant(v) for k, v in params.items()}


def test_multi_scale_crop_sizes_follow_the_official_candidates():
  # base 256: int(256 * s) = 256, 224, 192, 168; |i - j| <= 1; 224 snaps.
  assert augment.multi_scale_crop_sizes(224) == [
    (256, 256),
    (224, 256),
    (256, 224),
    (224, 224),
    (192, 224),
    (224, 192),
    (192, 192),
    (168, 192),
    (192, 168),
    (168, 168),
  ]
  # base 36: 36, 31, 27, 23; 31 is within 2 pixels of 32 and snaps to it.
  assert augment.multi_scale_crop_sizes(32) == [
    (36, 36),
    (32, 36),
    (36, 32),
    (32, 32),
    (27, 32),
    (32, 27),
    (27, 27),
    (23, 27),
    (27, 23),
    (23, 23),
  ]


def test_crop_boxes_use_the_fixed_grid_and_every_candidate():
  height, width = 36, 50
  sizes = set(augment.multi_scale_crop_sizes(32))
  seen_sizes, seen_offsets = set(), set()
  for i in range(300):
    params = _sample(tf.constant([i, 3]), height, width)
    top, left, crop_height, crop_width = params["crop_box"].numpy().tolist()
    assert (crop_width, crop_height) in sizes
    x_step, y_step = (width - crop_width) // 4, (height - crop_height) // 4
    grid = {(i * x_step, j * y_step): (i, j) for i, j in [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]}
    assert (left, top) in grid
    seen_sizes.add((crop_width, crop_height))
    if x_step and y_step:  # Otherwise offsets coincide.
      seen_offsets.add(grid[left, top])
  assert seen_sizes == sizes
  assert len(seen_offsets) == 5


def test_decision_rates_match_the_official_probabilities():
  draws = [_sample(tf.constant([i, 11]), 36, 48) for i in range(400)]
  rate = lambda key: np.mean([bool(d[key]) for d in draws])
  assert 0.42 < rate("flip") < 0.58
  assert 0.72 < rate("jitter") < 0.88
  assert 0.13 < rate("grayscale") < 0.27
  for key, (low, high) in [
    ("brightness", (0.6, 1.4)),
    ("contrast", (0.6, 1.4)),
    ("saturation", (0.8, 1.2)),
    ("hue", (-0.1, 0.1)),
  ]:
    values = np.array([float(d[key]) for d in draws])
    assert values.min() >= low and values.max() <= high
    assert values.max() - values.min() > 0.8 * (high - low)
  assert all(sorted(d["jitter_order"].numpy()) == [0, 1, 2, 3] for d in draws)
  # Every order occurs (24 of them, 400 draws), and the factors are drawn independently of each other.
  assert len({tuple(d["jitter_order"].numpy()) for d in draws}) == 24
  factors = np.array([[float(d[key]) for key in ("brightness", "contrast", "saturation", "hue")] for d in draws])
  correlations = np.corrcoef(factors.T)[np.triu_indices(4, k=1)]
  assert np.abs(correlations).max() < 0.2, correlations


def test_crop_and_normalisation_on_a_known_frame():
  clip = _known_clip()
  video = augment.apply_train_params(tf.constant(clip, tf.float32), _params(crop_box=[4, 12, 28, 28]), INPUT_SIZE)
  expected = (clip[:, 4:32, 12:40].astype(np.float32) - MEAN) / STD
  np.testing.assert_allclose(video, expected, atol=1e-5)


def test_flip_grayscale_and_brightness_on_a_known_frame():
  clip = _known_clip().astype(np.float32)
  crop = clip[:, 0:28, 0:28]
  flipped = augment.apply_train_params(clip, _params(flip=True), INPUT_SIZE)
  np.testing.assert_allclose(_denormalize(flipped), crop[:, :, ::-1], atol=1e-3)
  gray = augment.apply_train_params(clip, _params(grayscale=True), INPUT_SIZE)
  luma = crop @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(_denormalize(gray), np.repeat(luma[..., None], 3, -1), atol=1e-3)
  # Last in the order, so that only its own clipping keeps the crop's blues (146-200) x 1.4 within 255.
  bright = augment.apply_train_params(clip, _params(jitter=True, brightness=1.4, jitter_order=[1, 2, 3, 0]), INPUT_SIZE)
  assert (crop * 1.4).max() > 255
  np.testing.assert_allclose(_denormalize(bright), np.minimum(crop * 1.4, 255.0), atol=1e-3)


def test_contrast_saturation_and_hue_on_a_known_frame():
  """torchvision's ColorJitter operations, computed here in NumPy: contrast blends with each frame's mean grey,
  saturation with each pixel's grey, hue turns the HSV hue."""
  clip = _known_clip().astype(np.float32)
  crop = clip[:, 0:28, 0:28]
  luma = crop @ np.array([0.299, 0.587, 0.114], np.float32)
  contrast = augment.apply_train_params(clip, _params(jitter=True, contrast=1.3), INPUT_SIZE)
  frame_grey = luma.mean(axis=(1, 2))[:, None, None, None]
  np.testing.assert_allclose(_denormalize(contrast), np.clip(1.3 * crop - 0.3 * frame_grey, 0, 255), atol=1e-3)
  saturation = augment.apply_train_params(clip, _params(jitter=True, saturation=0.8), INPUT_SIZE)
  np.testing.assert_allclose(_denormalize(saturation), np.clip(0.8 * crop + 0.2 * luma[..., None], 0, 255), atol=1e-3)
  hue = augment.apply_train_params(clip, _params(jitter=True, hue=0.1), INPUT_SIZE)
  turned = [
    colorsys.hsv_to_rgb((h + 0.1) % 1.0, s, v)
    for h, s, v in (colorsys.rgb_to_hsv(*p) for p in crop.reshape(-1, 3) / 255)
  ]
  np.testing.assert_allclose(_denormalize(hue), 255 * np.reshape(turned, crop.shape), atol=0.05)


def test_smaller_crop_is_resized_bilinearly_to_the_input_size():
  clip = _known_clip()
  video = augment.apply_train_params(tf.constant(clip, tf.float32), _params(crop_box=[0, 0, 14, 14]), INPUT_SIZE)
  # Upsampling by 2 with half-pixel centres: output pixel 2k+1 sits at
  # 0.75 * source k + 0.25 * source k+1, so the x-ramp 4x + t gives
  # 8k + 1 + t; results are rounded as the official 8-bit resize does.
  red = _denormalize(video)[..., 0]
  k = np.arange(13)
  np.testing.assert_allclose(red[0, 5, 2 * k + 1], 4 * k + 1, atol=1e-3)


def test_one_decision_for_every_frame_of_a_clip():
  # Identical frames must stay identical whatever crop, flip or colour.
  frame = _known_clip(num_frames=1, height=40, width=60)[0]
  clip = np.stack([frame] * 4)
  for i in range(12):
    video = augment.train_augment(clip, tf.constant([i, 0]), INPUT_SIZE)
    assert video.shape == (4, INPUT_SIZE, INPUT_SIZE, 3)
    np.testing.assert_array_equal(video[1:], np.repeat(video[:1], 3, 0))


def test_same_seed_same_clip_other_seed_other_clip():
  clip = _known_clip(height=40, width=60)
  first = augment.train_augment(clip, tf.constant([5, 6]), INPUT_SIZE)
  again = augment.train_augment(clip, tf.constant([5, 6]), INPUT_SIZE)
  other = augment.train_augment(clip, tf.constant([5, 7]), INPUT_SIZE)
  np.testing.assert_array_equal(first, again)
  assert np.abs(np.asarray(first) - np.asarray(other)).max() > 0.1


def test_eval_centre_crop_on_a_known_frame():
  clip = _known_clip(height=32, width=48)
  video = augment.eval_augment(clip, INPUT_SIZE, num_crops=1)
  assert video.shape == (1, 3, INPUT_SIZE, INPUT_SIZE, 3)
  # top = (32 - 28) // 2, left = (48 - 28) // 2.
  np.testing.assert_allclose(_denormalize(video[0]), clip[:, 2:30, 10:38], atol=1e-3)


@pytest.mark.parametrize("height,width", [(28, 48), (48, 28)])
def test_eval_three_crops_along_the_long_side(height, width):
  clip = _known_clip(height=height, width=width)
  crops = _denormalize(augment.eval_augment(clip, INPUT_SIZE, num_crops=3))
  assert crops.shape == (3, 3, INPUT_SIZE, INPUT_SIZE, 3)
  step = (max(height, width) - INPUT_SIZE) // 2
  # Official ThreeCrop order: start, end, middle of the long side.
  for crop, start in zip(crops, (0, 2 * step, step)):
    window = clip[:, :, start : start + INPUT_SIZE] if width > height else clip[:, start : start + INPUT_SIZE]
    np.testing.assert_allclose(crop, window, atol=1e-3)


def test_eval_resizes_the_short_side_like_mmcv():
  # 64x96 -> short side 32 (resize_scale(28)): int(96 * 0.5 + 0.5) = 48.
  clip = np.zeros((2, 64, 96, 3), np.uint8)
  clip[:, :, 48:] = 255
  video = _denormalize(augment.eval_augment(clip, INPUT_SIZE, num_crops=1))
  # Centre crop of a 32x48 frame starts at x = 10: the edge at 24 lands on
  # crop column 14.
  np.testing.assert_allclose(video[0, 0, 0, :14, 0], 0.0, atol=1e-3)
  np.testing.assert_allclose(video[0, 0, 0, 14:, 0], 255.0, atol=1e-3)


def _resized(clip, height, width):
  """The clip resized as the official 8-bit pipeline does: bilinear with half-pixel centres, then rounded."""
  return np.round(tf.image.resize(np.asarray(clip, np.float32), [height, width], method="bilinear").numpy())


def test_eval_rounds_the_short_side_resize_like_mmcv_and_its_pixels_to_integers():
  # 64x99 -> short side 32: int(99 * 0.5 + 0.5) = 50 wide (49 without mmcv's + 0.5); the centre crop starts at x = 11.
  clip = _known_clip(num_frames=2, height=64, width=99)
  video = augment.eval_augment(clip, INPUT_SIZE, num_crops=1)
  expected = _resized(clip, 32, 50)[:, 2:30, 11:39]
  np.testing.assert_allclose(_denormalize(video[0]), expected, atol=1e-3)


def test_train_crops_come_from_the_frames_resized_to_the_short_side_of_the_crop_candidates():
  # 64x96 -> resize_scale(28) = 32 on the short side: 32x48, where the crop boxes are drawn.
  clip = _known_clip(num_frames=2, height=64, width=96)
  for i in range(4):
    seed = tf.constant([i, 2])
    params = augment.sample_train_params(seed, 32, 48, INPUT_SIZE)
    expected = augment.apply_train_params(tf.constant(_resized(clip, 32, 48)), params, INPUT_SIZE)
    np.testing.assert_allclose(augment.train_augment(clip, seed, INPUT_SIZE), expected, atol=1e-4)


def test_normalisation_uses_the_official_mean_and_std():
  clip = np.full((1, 32, 32, 3), 128, np.uint8)
  video = augment.eval_augment(clip, INPUT_SIZE)
  # (128 - 123.675) / 58.395, (128 - 116.28) / 57.12, (128 - 103.53) / 57.375.
  np.testing.assert_allclose(video[0, 0, 0, 0], [0.0740646, 0.2051821, 0.4264924], rtol=1e-5)
