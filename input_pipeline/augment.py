"""The official X-CLIP clip augmentation as TF ops, one random decision per clip.

Training (datasets/build.py of the official code):
  Resize short side to int(256 / 224 * input_size)  (bilinear)
  MultiScaleCrop(scales=(1, .875, .75, .66), max_wh_scale_gap=1, 5 fixed
                 offsets)
  Resize to input_size x input_size                 (bilinear, aspect not kept)
  Flip(p=.5), ColorJitter(p=.8), GrayScale(p=.2), Normalize.
Evaluation: short side int(256 / 224 * input_size) and a centre crop (1 crop),
or short side input_size and three crops along the long side (3 crops).

Differences from the official code, on purpose:
* The official ColorJitter draws new jitter factors for every frame; here the
  whole clip gets one draw, so the frames stay consistent with each other.
* Colour operations run in float on 0-255 values without rounding to 8 bits
  between them (the official code goes through 8-bit PIL images). Resizes do
  round to integers, as the official 8-bit resizes do.

Bilinear resizing uses half-pixel centres without antialiasing, as OpenCV's
INTER_LINEAR that mmcv calls.
"""

import tensorflow as tf

from input_pipeline import normalization

CROP_SCALES = (1, 0.875, 0.75, 0.66)
# ITU-R 601-2 luma, as PIL's convert('L') used by the official grayscale.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_BRIGHTNESS = (0.6, 1.4)
_CONTRAST = (0.6, 1.4)
_SATURATION = (0.8, 1.2)
_HUE = (-0.1, 0.1)
_JITTER_PROB = 0.8
_GRAYSCALE_PROB = 0.2
_FLIP_PROB = 0.5


def resize_scale(input_size: int) -> int:
  """Short side before cropping: int(256 / 224 * input_size) as officially."""
  return int(256 / 224 * input_size)


def multi_scale_crop_sizes(input_size: int) -> list[tuple[int, int]]:
  """(width, height) candidates of MultiScaleCrop, in the official order.

  The short side after resizing is resize_scale(input_size); scale pairs
  whose indices differ by more than one (max_wh_scale_gap=1) are left out,
  and sides within 2 pixels of the input size snap to it.
  """
  base = resize_scale(input_size)
  sides = [int(base * scale) for scale in CROP_SCALES]
  sizes = []
  for i, height in enumerate(sides):
    for j, width in enumerate(sides):
      if abs(i - j) <= 1:
        sizes.append(tuple(input_size if abs(side - input_size) < 3 else side for side in (width, height)))
  return sizes


def _resize_short_side(frames: tf.Tensor, short_side: int) -> tf.Tensor:
  """Bilinear resize to the given short side; keeps the aspect ratio."""
  shape = tf.shape(frames)
  height = tf.cast(shape[1], tf.float64)
  width = tf.cast(shape[2], tf.float64)
  factor = short_side / tf.minimum(height, width)
  # mmcv.rescale_size: int(side * factor + 0.5).
  new_size = tf.cast(tf.stack([height, width]) * factor + 0.5, tf.int32)
  return tf.cond(tf.reduce_all(new_size == shape[1:3]), lambda: frames, lambda: _resize(frames, new_size))


def _resize(frames: tf.Tensor, size) -> tf.Tensor:
  resized = tf.image.resize(frames, size, method="bilinear", antialias=False)
  return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def _normalize(frames: tf.Tensor) -> tf.Tensor:
  return (frames - normalization.MEAN_RGB) / normalization.STD_RGB


def _luma(frames: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(frames * _LUMA_WEIGHTS, axis=-1, keepdims=True)


def _blend(frames, other, factor):
  return tf.clip_by_value(factor * frames + (1.0 - factor) * other, 0.0, 255.0)


def _color_jitter(frames: tf.Tensor, params: dict[str, tf.Tensor]):
  """torchvision ColorJitter(.4, .4, .2, .1) with the clip's factors."""
  operations = [
    lambda x: tf.clip_by_value(x * params["brightness"], 0.0, 255.0),
    # Contrast blends with the mean grey level of each frame.
    lambda x: _blend(x, tf.reduce_mean(_luma(x), axis=(1, 2, 3), keepdims=True), params["contrast"]),
    lambda x: _blend(x, _luma(x), params["saturation"]),
    lambda x: tf.image.adjust_hue(x / 255.0, params["hue"]) * 255.0,
  ]
  for step in range(len(operations)):
    # switch_case calls the branch it picks right away, so each lambda sees this step's `frames`.
    frames = tf.switch_case(params["jitter_order"][step], [lambda op=op: op(frames) for op in operations])  # noqa: B023
  return frames


def sample_train_params(
  seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor, input_size: int = 224
) -> dict[str, tf.Tensor]:
  """Draws the random decisions for one clip of frames height x width.

  Args:
    seed: shape [2] integer stateless seed.
    height: frame height after the short-side resize.
    width: frame width after the short-side resize.
    input_size: side of the square output.

  Returns:
    crop_box: int32 [top, left, crop height, crop width] (MultiScaleCrop);
    flip, jitter, grayscale: bool, whether each is applied;
    brightness, contrast, saturation, hue: float32 jitter factors;
    jitter_order: int32 [4], the order of the four jitter operations
      (0 brightness, 1 contrast, 2 saturation, 3 hue).
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 10)

  def uniform(i, minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform([], seeds[i], minval, maxval)

  def integer(i, maxval):
    return tf.random.stateless_uniform([], seeds[i], 0, maxval, tf.int32)

  crop_sizes = multi_scale_crop_sizes(input_size)
  crop_width, crop_height = tf.unstack(tf.constant(crop_sizes, tf.int32)[integer(0, len(crop_sizes))])
  # The five fixed offsets of MultiScaleCrop, in quarters of the slack:
  # upper left, upper right, lower left, lower right, centre.
  offsets = tf.constant([[0, 0], [4, 0], [0, 4], [4, 4], [2, 2]], tf.int32)
  offset = offsets[integer(1, 5)]
  top = offset[1] * ((tf.cast(height, tf.int32) - crop_height) // 4)
  left = offset[0] * ((tf.cast(width, tf.int32) - crop_width) // 4)
  return {
    "crop_box": tf.stack([top, left, crop_height, crop_width]),
    "flip": uniform(2) < _FLIP_PROB,
    "jitter": uniform(3) < _JITTER_PROB,
    "brightness": uniform(4, *_BRIGHTNESS),
    "contrast": uniform(5, *_CONTRAST),
    "saturation": uniform(6, *_SATURATION),
    "hue": uniform(7, *_HUE),
    # Like torchvision, the jitter operations run in a random order.
    "jitter_order": tf.argsort(tf.random.stateless_uniform([4], seeds[8])),
    "grayscale": uniform(9) < _GRAYSCALE_PROB,
  }


# XLA fuses the per-pixel colour operations into a few passes over the clip:
# about 6x faster than running them op by op on CPU (6.5 vs 37 ms for 8
# frames of 224x224 with every colour operation on).
@tf.function(jit_compile=True)
def _flip_colour_normalize(frames: tf.Tensor, params: dict[str, tf.Tensor]):
  frames = tf.cond(params["flip"], lambda: tf.reverse(frames, axis=[2]), lambda: frames)
  frames = tf.cond(params["jitter"], lambda: _color_jitter(frames, params), lambda: frames)
  frames = tf.cond(params["grayscale"], lambda: tf.tile(_luma(frames), [1, 1, 1, 3]), lambda: frames)
  return _normalize(frames)


def apply_train_params(frames: tf.Tensor, params: dict[str, tf.Tensor], input_size: int = 224) -> tf.Tensor:
  """Augments frames already resized to the short side resize_scale(S)."""
  top, left, crop_height, crop_width = tf.unstack(params["crop_box"])
  frames = frames[:, top : top + crop_height, left : left + crop_width]
  frames = tf.ensure_shape(_resize(frames, [input_size, input_size]), [None, input_size, input_size, 3])
  return _flip_colour_normalize(frames, params)


def train_augment(frames: tf.Tensor, seed: tf.Tensor, input_size: int = 224) -> tf.Tensor:
  """Training augmentation of one clip.

  Args:
    frames: uint8 (T, H, W, 3) RGB clip.
    seed: shape [2] integer stateless seed; the same seed gives the same
      crop, flip and colours for the same frames.
    input_size: side of the square output.

  Returns:
    float32 (T, input_size, input_size, 3), normalised with normalization.MEAN_RGB/STD_RGB.
  """
  frames = _resize_short_side(tf.cast(frames, tf.float32), resize_scale(input_size))
  shape = tf.shape(frames)
  params = sample_train_params(seed, shape[1], shape[2], input_size)
  return apply_train_params(frames, params, input_size)


def eval_augment(frames: tf.Tensor, input_size: int = 224, num_crops: int = 1) -> tf.Tensor:
  """Evaluation crops of one clip: (num_crops, T, S, S, 3) float32, normalised.

  num_crops=1: short side to int(256 / 224 * S), centre crop S.
  num_crops=3: short side to S, crops at the start, end and middle of the
  long side (the official ThreeCrop order).
  """
  if num_crops not in (1, 3):
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
  frames = tf.cast(frames, tf.float32)
  if num_crops == 1:
    frames = _resize_short_side(frames, resize_scale(input_size))
    shape = tf.shape(frames)
    top = (shape[1] - input_size) // 2
    left = (shape[2] - input_size) // 2
    crops = [frames[:, top : top + input_size, left : left + input_size]]
  else:
    frames = _resize_short_side(frames, input_size)
    shape = tf.shape(frames)
    # Along the width when the frame is landscape (or square), else along
    # the height, as ThreeCrop checks which side equals the crop size.
    along_width = tf.equal(shape[1], input_size)
    step = tf.where(along_width, shape[2] - input_size, shape[1] - input_size) // 2
    crops = []
    for position in (0, 2, 1):
      left = tf.where(along_width, position * step, 0)
      top = tf.where(along_width, 0, position * step)
      crops.append(frames[:, top : top + input_size, left : left + input_size])
  crops = tf.ensure_shape(tf.stack(crops), [num_crops, None, input_size, input_size, 3])
  return _normalize(crops)
