"""Mixup / CutMix against the official blending semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xclip_jax.train import mixup

B, T, H, W = 6, 3, 8, 10
# Compiled once (probabilities are traced), then reused across tests.
_blend = jax.jit(mixup.mixup_cutmix, static_argnames="num_classes")


def _constant_videos():
  """Video b is filled with the value b; its label is class b."""
  videos = jnp.broadcast_to(jnp.arange(B, dtype=jnp.float32)[:, None, None, None, None], (B, T, H, W, 2))
  return videos, jnp.arange(B)


def test_label_smoothing_values():
  smoothed = mixup.smooth_labels(jnp.array([2, 0]), 10, 0.1)
  np.testing.assert_allclose(smoothed[0], [0.01, 0.01, 0.91] + [0.01] * 7, rtol=1e-6)
  one_hot = jax.nn.one_hot(jnp.array([2, 0]), 10)
  np.testing.assert_allclose(mixup.smooth_labels(one_hot, 10, 0.1), smoothed)


@pytest.mark.parametrize("seed", range(4))
def test_mixup_blends_videos_and_labels_with_one_weight(seed):
  videos, labels = _constant_videos()
  mixed, soft = _blend(
    jax.random.key(seed), videos, labels, num_classes=B, switch_prob=jnp.array(0.0), label_smoothing=jnp.array(0.0)
  )
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
  # Video value = sum_k weight_k * k for the label weights of that example.
  expected = soft @ jnp.arange(B, dtype=jnp.float32)
  np.testing.assert_allclose(mixed[:, 0, 0, 0, 0], expected, rtol=1e-5)
  np.testing.assert_allclose(mixed, jnp.broadcast_to(expected[:, None, None, None, None], mixed.shape), rtol=1e-5)
  # Partners come from one permutation of the batch: each class is given
  # away exactly once, so class weights sum to the batch size.
  np.testing.assert_allclose(soft.sum(0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_pastes_one_box_in_every_frame_and_weights_labels_by_area(seed):
  videos, labels = _constant_videos()
  mixed, soft = _blend(
    jax.random.key(seed), videos, labels, num_classes=B, switch_prob=jnp.array(1.0), label_smoothing=jnp.array(0.0)
  )
  mixed = np.asarray(mixed)
  pasted = mixed != np.asarray(videos)
  # The same box in every frame, channel and video (wherever the partner
  # differs, i.e. for every video not paired with itself).
  box = pasted.any(axis=(0, 1, 4))
  for b in range(B):
    if pasted[b].any():
      np.testing.assert_array_equal(pasted[b, :, :, :, 0], np.broadcast_to(box, (T, H, W)))
  rows, cols = np.nonzero(box)
  if rows.size:
    assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
  own_share = 1.0 - box.sum() / (H * W)
  own_weight = np.asarray(soft)[np.arange(B), np.arange(B)]
  partner_is_self = ~pasted.any(axis=(1, 2, 3, 4))
  np.testing.assert_allclose(own_weight[~partner_is_self], own_share, rtol=1e-5)


def test_switch_probability_chooses_between_the_two():
  videos, labels = _constant_videos()
  cutmix_count = 0
  for seed in range(60):
    mixed, _ = _blend(
      jax.random.key(seed), videos, labels, num_classes=B, switch_prob=jnp.array(0.5), label_smoothing=jnp.array(0.1)
    )
    # Mixup gives fractional values; CutMix only copies integers.
    cutmix_count += bool(jnp.all(mixed == jnp.round(mixed)))
  assert 18 < cutmix_count < 42


def test_mismatched_labels_are_refused():
  videos, _ = _constant_videos()
  with pytest.raises(ValueError, match="num_classes=4"):
    mixup.mixup_cutmix(jax.random.key(0), videos, jnp.zeros((B, 5)), 4)
