"""Mixup, CutMix and label smoothing against the official CutmixMixupBlending (microsoft/VideoX X-CLIP
datasets/blending.py), whose maths tests/train/official_blending.py re-derives in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train import official_blending
from xclip_jax.train import mixup

B, T, H, W, K = 6, 3, 8, 10, 5
# Compiled once (probabilities are traced), then reused across tests.
_blend = jax.jit(mixup.mixup_cutmix, static_argnames="num_classes")
_draw = jax.jit(mixup.draw, static_argnames=("batch_size", "height", "width"))


def test_label_smoothing_values():
  # The official one-hot values, written out: off = s / K, on = 1 - s + s / K (s = 0.1; K = 4, then 10).
  smoothed = mixup.smooth_labels(jnp.array([2, 0]), 4, 0.1)
  np.testing.assert_allclose(smoothed, [[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]], rtol=1e-6)
  smoothed = mixup.smooth_labels(jnp.array([2, 0]), 10, 0.1)
  np.testing.assert_allclose(smoothed[0], [0.01, 0.01, 0.91] + [0.01] * 7, rtol=1e-6)
  one_hot = jax.nn.one_hot(jnp.array([2, 0]), 10)
  np.testing.assert_allclose(mixup.smooth_labels(one_hot, 10, 0.1), smoothed)


@pytest.mark.parametrize("switch_prob", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_blend_is_the_official_maths_for_its_draws(seed, switch_prob):
  """Videos and smoothed labels equal the NumPy reference of the official Mixup / CutMix (area-corrected lam) for the
  draws `mixup.draw` reports, and those draws are what the outputs show."""
  rng = np.random.default_rng(seed)
  videos = rng.normal(size=(B, T, H, W, 2)).astype(np.float32)
  labels = rng.integers(0, K, B)
  key, switch = jax.random.key(seed), jnp.array(switch_prob)
  mixed, soft = _blend(key, videos, labels, num_classes=K, switch_prob=switch, label_smoothing=jnp.array(0.1))
  draws = jax.device_get(_draw(key, batch_size=B, height=H, width=W, switch_prob=switch))
  assert bool(draws.cutmix) == (switch_prob == 1.0)
  box = official_blending.rand_bbox(H, W, draws.lam, draws.centre)
  expected_videos, expected_labels = official_blending.blend(
    videos,
    official_blending.smoothed_one_hot(labels, K, 0.1),
    cutmix=bool(draws.cutmix),
    partner=draws.partner,
    lam=draws.lam,
    box=box,
  )
  np.testing.assert_allclose(mixed, expected_videos, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(soft, expected_labels, rtol=1e-6, atol=1e-7)
  # The reader the step tests use finds the same partner, lam and box in the output.
  for b, reading in enumerate(official_blending.read_blend(videos, mixed)):
    if reading["kind"] is None:
      assert draws.partner[b] == b or box[0] == box[1] or box[2] == box[3], (b, draws)
      continue
    assert reading["partner"] == draws.partner[b] and reading["kind"] == ("cutmix" if draws.cutmix else "mixup")
    assert reading.get("box", box) == box and abs(reading.get("lam", draws.lam) - draws.lam) < 1e-6, (reading, draws)


def test_draws_follow_the_official_distributions():
  """Over 8000 draws (seed 0): CutMix with probability 0.5; lam ~ Beta(0.8, 0.8) for Mixup and Beta(1, 1) for CutMix
  (mean and variance within 5 standard errors; the other alpha's variance is 10 standard errors away); partners a
  uniform permutation; the box centre uniform over rows and columns."""
  n = 8000
  draws = jax.device_get(
    jax.vmap(lambda key: mixup.draw(key, B, H, W, 0.8, 1.0, 0.5))(jax.random.split(jax.random.key(0), n))
  )
  cutmix, lam = draws.cutmix, draws.lam.astype(np.float64)
  assert abs(cutmix.mean() - 0.5) < 5 * np.sqrt(0.25 / n), cutmix.mean()
  for alpha, sample in ((0.8, lam[~cutmix]), (1.0, lam[cutmix])):
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)), excess kurtosis -6 / (2a + 3); var(s^2) ~ (2 + excess) var^2 / m.
    variance, excess = 1 / (4 * (2 * alpha + 1)), -6 / (2 * alpha + 3)
    m = len(sample)
    assert abs(sample.mean() - 0.5) < 5 * np.sqrt(variance / m), (alpha, sample.mean())
    assert abs(sample.var() - variance) < 5 * np.sqrt((2 + excess) * variance**2 / m), (alpha, sample.var(), variance)
  assert ((lam > 0) & (lam < 1)).all()
  np.testing.assert_array_equal(np.sort(draws.partner, axis=1), np.broadcast_to(np.arange(B), (n, B)))
  counts = np.zeros((B, B))
  np.add.at(counts, (np.broadcast_to(np.arange(B), (n, B)), draws.partner), 1)
  assert np.abs(counts - n / B).max() < 5 * np.sqrt(n / B * (1 - 1 / B)), counts
  for axis, size in ((0, H), (1, W)):
    counts = np.bincount(draws.centre[:, axis], minlength=size)
    assert len(counts) == size and np.abs(counts - n / size).max() < 5 * np.sqrt(n / size * (1 - 1 / size)), counts


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha, cutmix", [(0.0, 1.0, True), (0.8, 0.0, False)])
def test_a_method_whose_alpha_is_zero_is_never_drawn(mixup_alpha, cutmix_alpha, cutmix):
  # Beta(0, 0) is undefined (NaN in jax): with mixup=0 every batch is CutMix, with cutmix=0 every batch Mixup.
  draws = jax.device_get(
    jax.vmap(lambda key: mixup.draw(key, B, H, W, mixup_alpha, cutmix_alpha, 0.5))(
      jax.random.split(jax.random.key(0), 64)
    )
  )
  assert (draws.cutmix == cutmix).all() and np.isfinite(draws.lam).all()


def test_mismatched_labels_are_refused():
  videos = jnp.zeros((B, T, H, W, 2))
  with pytest.raises(ValueError, match="num_classes=4"):
    mixup.mixup_cutmix(jax.random.key(0), videos, jnp.zeros((B, 5)), 4)
