"""The model's LayerNorm in bfloat16 keeps its statistics in float32 (mean and variance of bfloat16 inputs)."""

import jax
import jax.numpy as jnp
import numpy as np

from xclip_jax.model import layers


def test_bfloat16_layer_norm_statistics_are_float32():
  # Inputs exactly representable in bfloat16, far from zero mean: 32 + k/4 (bfloat16 steps by 1/4 between 32 and 64).
  # Their mean (about 48) rounded to bfloat16 is off by up to 1/8, and their mean square (about 2400, where bfloat16
  # steps by 16) makes a variance E[x^2] - E[x]^2 of about 85 off by up to 10%: normalised values off by up to 0.05.
  # With float32 statistics only the bfloat16 rounding of the output remains: under 2^-8 of values up to about 1.7.
  x = 32 + np.random.default_rng(0).integers(0, 128, size=(4, 256)) / 4
  assert np.array_equal(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), x)
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + layers.LAYER_NORM_EPS)

  norm = layers.layer_norm("ln", jnp.bfloat16)
  variables = norm.init(jax.random.key(0), jnp.zeros((1, 256), jnp.bfloat16))
  y = norm.apply(variables, jnp.asarray(x, jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=0, atol=2 * 2**-8)
