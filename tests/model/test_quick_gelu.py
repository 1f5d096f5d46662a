"""QuickGELU's hand-written gradients, alone and followed by a weight (the MLP's c_proj): the derivatives of
x * sigmoid(1.702 x), keeping only x (and the weight) for the backward pass, in JAX and once XLA compiled it."""

import re

import flax.linen as nn
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
  expected = _quick_gelu_derivative(x)
  grad = jax.grad(lambda v: layers.quick_gelu(v).astype(jnp.float32).sum())(jnp.asarray(x, dtype))
  assert grad.dtype == dtype
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=rtol, atol=rtol * 1e-2)


def _quick_gelu_derivative(x):
  h = 1e-6
  return (_quick_gelu(x + h) - _quick_gelu(x - h)) / (2 * h)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2**-6)])
def test_gradients_through_a_weight_are_the_derivatives(dtype, rtol):
  # loss = sum(c * (quick_gelu(x) @ w.T)): d/dw = c.T @ quick_gelu(x), d/dx = (c @ w) * quick_gelu'(x), in float64
  # from the dtype's values. bfloat16 sums its products in float32 but rounds the results to 8 bits.
  rng = np.random.default_rng(0)
  as_dtype = lambda a: np.asarray(jnp.asarray(a, dtype), np.float64)
  x, w, c = (
    as_dtype(rng.normal(0, 2, (2, 5, 16))),
    as_dtype(rng.normal(0, 0.3, (6, 16))),
    as_dtype(rng.normal(size=(2, 5, 6))),
  )
  loss = lambda x, w: (jnp.asarray(c, dtype) * layers.quick_gelu_then_weight(x, w)).astype(jnp.float32).sum()
  x_grad, w_grad = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x, dtype), jnp.asarray(w, dtype))
  assert x_grad.dtype == w_grad.dtype == dtype
  expected_w = np.einsum("bto,bti->oi", c, _quick_gelu(x))
  expected_x = (c @ w) * _quick_gelu_derivative(x)
  np.testing.assert_allclose(
    np.asarray(w_grad, np.float64), expected_w, rtol=rtol, atol=rtol * np.abs(expected_w).max()
  )
  np.testing.assert_allclose(
    np.asarray(x_grad, np.float64), expected_x, rtol=rtol, atol=rtol * np.abs(expected_x).max()
  )


def test_the_mlp_keeps_one_hidden_activation_for_the_backward_pass(capsys):
  """c_fc's output, from which QuickGELU's gradient and c_proj's input are recomputed: autodiff of the formula would
  also keep c_proj's input, the sigmoid and its scaled input."""
  width = 8
  mlp = layers.MLP()
  x = jnp.ones((3, width))
  params = mlp.init(jax.random.key(0), x)["params"]
  jax.ad_checkpoint.print_saved_residuals(lambda p, v: mlp.apply({"params": p}, v), params, x)
  saved = capsys.readouterr().out.splitlines()
  hidden = [line for line in saved if re.match(rf"f32\[3,{4 * width}\] ", line)]
  assert len(hidden) == 1, saved


class _Blocks(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(8):
      x = x + layers.MLP(name=f"mlp_{i}")(x)
    return x


def test_compiled_the_mlps_keep_one_hidden_activation_each():
  """XLA must not compute the backward pass's recomputation in the forward pass and keep it (it did, across an
  optimization_barrier): the gradient of 8 blocks then needs 8 kept hidden activations, plus at most 4 for the
  backward's working buffers (recomputed activation, its gradient, the input's gradient) and the blocks' inputs (a
  quarter of a hidden activation each). Keeping 2 per block, as autodiff through QuickGELU does, needs 17."""
  blocks, x = _Blocks(), jnp.ones((4, 50, 64))
  params = blocks.init(jax.random.key(0), x)["params"]
  grad = jax.jit(jax.grad(lambda p, v: (blocks.apply({"params": p}, v) ** 2).sum()))
  temporaries = grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes
  hidden_activation = 4 * 50 * 4 * 64 * 4
  assert temporaries <= (8 + 4) * hidden_activation, temporaries / hidden_activation
