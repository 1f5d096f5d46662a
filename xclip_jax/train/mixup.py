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
One lam, one box and one permutation serve the whole batch.
"""

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """Int labels (B,) or one-hot / soft labels (B, C) -> smoothed (B, C)."""
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes)
  elif labels.shape[-1] != num_classes:
    raise ValueError(f"labels of shape {labels.shape} do not have num_classes={num_classes} columns")
  return labels * (1.0 - label_smoothing) + label_smoothing / num_classes


def _cutmix_box(rng, height, width, lam):
  """Returns (top, bottom, left, right) of the official rand_bbox."""
  cut_ratio = jnp.sqrt(1.0 - lam)
  cut_height = jnp.floor(height * cut_ratio).astype(jnp.int32)
  cut_width = jnp.floor(width * cut_ratio).astype(jnp.int32)
  rng_y, rng_x = jax.random.split(rng)
  centre_y = jax.random.randint(rng_y, (), 0, height)
  centre_x = jax.random.randint(rng_x, (), 0, width)
  top = jnp.clip(centre_y - cut_height // 2, 0, height)
  bottom = jnp.clip(centre_y + cut_height // 2, 0, height)
  left = jnp.clip(centre_x - cut_width // 2, 0, width)
  right = jnp.clip(centre_x + cut_width // 2, 0, width)
  return top, bottom, left, right


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
    mixup_alpha: Beta parameter of Mixup's lam.
    cutmix_alpha: Beta parameter of CutMix's lam.
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
  rng_switch, rng_perm, rng_lam, rng_box = jax.random.split(rng, 4)
  partner = jax.random.permutation(rng_perm, videos.shape[0])
  height, width = videos.shape[2], videos.shape[3]

  def cutmix(_):
    lam = jax.random.beta(rng_lam, cutmix_alpha, cutmix_alpha)
    top, bottom, left, right = _cutmix_box(rng_box, height, width, lam)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right))[None, None, :, :, None]
    mixed = jnp.where(inside, videos[partner], videos)
    box_lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, box_lam.astype(jnp.float32)

  def mixup(_):
    lam = jax.random.beta(rng_lam, mixup_alpha, mixup_alpha)
    mixed = lam * videos + (1.0 - lam) * videos[partner]
    return mixed.astype(videos.dtype), lam.astype(jnp.float32)

  use_cutmix = jax.random.uniform(rng_switch) < switch_prob
  mixed_videos, lam = jax.lax.cond(use_cutmix, cutmix, mixup, None)
  mixed_labels = lam * labels + (1.0 - lam) * labels[partner]
  return mixed_videos, mixed_labels
