"""Mixup / CutMix on a batch of videos, on device (official datasets/blending.py).

Semantics of the official CutmixMixupBlending:
* labels become smoothed one-hot vectors: on = 1 - s + s/C, off = s/C;
* with probability switch_prob the batch gets CutMix, otherwise Mixup;
* the partner of every video is a random permutation of the batch;
* Mixup: lam ~ Beta(mixup_alpha, mixup_alpha), videos and labels both
  lam * x + (1 - lam) * x[perm];
* CutMix: lam ~ Beta(cutmix_alpha, cutmix_alpha); one box of sides
  int(W * sqrt(1 - lam)) x int(H * sqrt(1 - lam)) around a uniform centre,
  clipped to the frame, is pasted from the partner into every frame; the
  label weight is then 1 - box area / frame area.
One lam, one box and one permutation serve the whole batch (`draw`).
A method whose alpha is 0 is never chosen (as timm's Mixup; Beta(0, 0) is undefined).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Draw(NamedTuple):
  """The random choices of one blend of a batch (`draw`)."""

  cutmix: jax.Array  # () bool: CutMix, else Mixup
  partner: jax.Array  # (B,) int32, a permutation of the batch: video i is blended with video partner[i]
  lam: jax.Array  # () float32: the chosen method's Beta draw (CutMix's before the box's area corrects it)
  centre: jax.Array  # (2,) int32: (row, column) of CutMix's box centre, uniform over the frame


def smooth_labels(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """Int labels (B,) or one-hot / soft labels (B, C) -> smoothed (B, C)."""
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes)
  elif labels.shape[-1] != num_classes:
    raise ValueError(f"labels of shape {labels.shape} do not have num_classes={num_classes} columns")
  return labels * (1.0 - label_smoothing) + label_smoothing / num_classes


def draw(
  rng: jax.Array,
  batch_size: int,
  height: int,
  width: int,
  mixup_alpha: float = 0.8,
  cutmix_alpha: float = 1.0,
  switch_prob: float = 0.5,
) -> Draw:
  """The random choices of `mixup_cutmix(rng, ...)` for a batch of `batch_size` videos of `height` x `width`."""
  rng_switch, rng_perm, rng_lam, rng_box = jax.random.split(rng, 4)
  use_cutmix = jax.random.uniform(rng_switch) < switch_prob
  use_cutmix = (use_cutmix & (cutmix_alpha > 0)) | (mixup_alpha <= 0)
  partner = jax.random.permutation(rng_perm, batch_size)
  # Both Beta draws from one key, so that a method's lam does not depend on the other's alpha.
  lam = jnp.where(
    use_cutmix,
    jax.random.beta(rng_lam, cutmix_alpha, cutmix_alpha),
    jax.random.beta(rng_lam, mixup_alpha, mixup_alpha),
  )
  rng_y, rng_x = jax.random.split(rng_box)
  centre = jnp.stack([jax.random.randint(rng_y, (), 0, height), jax.random.randint(rng_x, (), 0, width)])
  return Draw(use_cutmix, partner.astype(jnp.int32), lam.astype(jnp.float32), centre.astype(jnp.int32))


def _cutmix_box(height, width, lam, centre):
  """Returns (top, bottom, left, right) of the official rand_bbox."""
  cut_ratio = jnp.sqrt(1.0 - lam)
  cut_height = jnp.floor(height * cut_ratio).astype(jnp.int32)
  cut_width = jnp.floor(width * cut_ratio).astype(jnp.int32)
  centre_y, centre_x = centre[0], centre[1]
  top = jnp.clip(centre_y - cut_height // 2, 0, height)
  bottom = jnp.clip(centre_y + cut_height // 2, 0, height)
  left = jnp.clip(centre_x - cut_width // 2, 0, width)
  right = jnp.clip(centre_x + cut_width // 2, 0, width)
  return top, bottom, left, right


def blend(choices: Draw, videos: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Applies the drawn Mixup or CutMix to videos (B, T, H, W, C) and soft labels (B, K)."""
  partner = choices.partner
  height, width = videos.shape[2], videos.shape[3]

  def cutmix(_):
    top, bottom, left, right = _cutmix_box(height, width, choices.lam, choices.centre)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right))[None, None, :, :, None]
    mixed = jnp.where(inside, videos[partner], videos)
    box_lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, box_lam.astype(jnp.float32)

  def mixup(_):
    lam = choices.lam
    mixed = lam * videos + (1.0 - lam) * videos[partner]
    return mixed.astype(videos.dtype), lam.astype(jnp.float32)

  mixed_videos, lam = jax.lax.cond(choices.cutmix, cutmix, mixup, None)
  mixed_labels = lam * labels + (1.0 - lam) * labels[partner]
  return mixed_videos, mixed_labels


def mixup_cutmix(
  rng: jax.Array,
  videos: jax.Array,
  labels: jax.Array,
  num_classes: int,
  mixup_alpha: float = 0.8,
  cutmix_alpha: float = 1.0,
  switch_prob: float = 0.5,
  label_smoothing: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
  """Blends a batch with Mixup or CutMix; jit-able.

  Args:
    rng: a jax PRNG key.
    videos: (B, T, H, W, C) float videos.
    labels: (B,) int labels or (B, num_classes) one-hot / soft labels.
    num_classes: number of classes C.
    mixup_alpha: Beta parameter of Mixup's lam (0: CutMix only).
    cutmix_alpha: Beta parameter of CutMix's lam (0: Mixup only).
    switch_prob: probability of CutMix instead of Mixup.
    label_smoothing: s of the smoothed one-hot labels.

  Returns:
    (videos, soft labels (B, num_classes) float32).
  """
  if videos.ndim != 5:
    raise ValueError(f"expected videos (B, T, H, W, C), got {videos.shape}")
  if labels.shape[0] != videos.shape[0]:
    raise ValueError(f"{labels.shape[0]} labels for {videos.shape[0]} videos")
  labels = smooth_labels(labels, num_classes, label_smoothing)
  batch_size, _, height, width, _ = videos.shape
  choices = draw(rng, batch_size, height, width, mixup_alpha, cutmix_alpha, switch_prob)
  return blend(choices, videos, labels)
