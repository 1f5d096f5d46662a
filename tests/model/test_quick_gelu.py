"""QuickGELU's hand-written gradient: the derivative of x * sigmoid(1.702 x), keeping only x for the backward pass."""

import re

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from xclip_jax.model import layers


def _quick_gelu(x):
  return x / (1 + np.exp(-1.702 * x))


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2**-8)])
def test_gradient_is_the_derivative(dtype, rtol):
  # Central differences in float64 of the formula, at points exactly representable in the dtype, over the range
  # where the sigmoid bends (its derivative changes sign near x = -0.94).
  x = np.asarray(jnp.asarray(np.linspace(-6, 6, 241), dtype), np.float64)
  h = 1e-6
  expected = (_quick_gelu(x + h) - _quick_gelu(x - h)) / (2 * h)
  grad = jax.grad(lambda v: layers.quick_gelu(v).astype(jnp.float32).sum())(jnp.asarray(x, dtype))
  assert grad.dtype == dtype
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=rtol, atol=rtol * 1e-2)


def test_the_mlp_keeps_two_hidden_activations_for_the_backward_pass(capsys):
  """c_fc's output (for QuickGELU's gradient) and c_proj's input (for its weight gradient): nothing more of the hidden
  width, which autodiff of the formula would add (the sigmoid and its scaled input)."""
  width = 8
  mlp = layers.MLP()
  x = jnp.ones((3, width))
  params = mlp.init(jax.random.key(0), x)["params"]
  jax.ad_checkpoint.print_saved_residuals(lambda p, v: mlp.apply({"params": p}, v), params, x)
  saved = capsys.readouterr().out.splitlines()
  hidden = [line for line in saved if re.match(rf"f32\[3,{4 * width}\] ", line)]
  assert len(hidden) == 2, saved
