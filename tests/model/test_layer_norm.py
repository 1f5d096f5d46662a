"""The model's LayerNorm: PyTorch's formula, float32 statistics for bfloat16 inputs, and a hand-written gradient that
keeps only the input for the backward pass; followed by a weight (`then_weight`), not its output either."""

import re

import flax.linen as nn
import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np

from tests.fixtures import numerics
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


def _numpy_layer_norm(x, scale, bias):
  normalized = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + layers.LAYER_NORM_EPS)
  return normalized * scale + bias


def _inputs():
  rng = np.random.default_rng(0)
  as_float32 = lambda a: np.asarray(a, np.float32).astype(np.float64)
  x = as_float32(rng.normal(0.5, 2, (2, 5, 16)))
  scale, bias, c = as_float32(rng.normal(1, 0.3, 16)), as_float32(rng.normal(0, 0.3, 16)), rng.normal(size=(2, 5, 16))
  return x, scale, bias, as_float32(c)


def test_float32_layer_norm_is_pytorchs_formula():
  x, scale, bias, _ = _inputs()
  y = layers.layer_norm("ln", jnp.float32).apply(
    {"params": {"scale": scale, "bias": bias}}, jnp.asarray(x, jnp.float32)
  )
  np.testing.assert_allclose(np.asarray(y, np.float64), _numpy_layer_norm(x, scale, bias), rtol=0, atol=1e-5)


def test_gradients_are_the_derivatives():
  # loss = sum(c * layer_norm(x)): central differences of the NumPy formula in float64, entry by entry.
  x, scale, bias, c = _inputs()
  loss = lambda x, scale, bias: np.sum(c * _numpy_layer_norm(x, scale, bias))
  expected = numerics.central_differences(loss, [x, scale, bias])
  norm = layers.layer_norm("ln", jnp.float32)
  grads = jax.grad(lambda x, p: (jnp.asarray(c, jnp.float32) * norm.apply({"params": p}, x)).sum(), argnums=(0, 1))(
    jnp.asarray(x, jnp.float32), {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
  )
  x_grad, params_grad = grads
  for name, ours, theirs in zip(
    ("x", "scale", "bias"), (x_grad, params_grad["scale"], params_grad["bias"]), expected, strict=True
  ):
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=1e-4, atol=1e-4, err_msg=name)


def test_the_backward_pass_keeps_only_the_input_and_two_numbers_per_row(capsys):
  """Autodiff of the formula keeps three arrays of the input's size: x^2's, x - mean and the normalised values."""
  norm = layers.layer_norm("ln", jnp.float32)
  x = jnp.ones((3, 5, 8))
  variables = norm.init(jax.random.key(0), x)
  jax.ad_checkpoint.print_saved_residuals(lambda v, x: norm.apply(v, x), variables, x)
  saved = capsys.readouterr().out.splitlines()
  assert len([line for line in saved if re.match(r"f32\[3,5,8\] ", line)]) == 1, saved
  assert len([line for line in saved if re.match(r"f32\[3,5,1\] ", line)]) == 2, saved


class _Blocks(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(8):
      x = x + layers.Linear(x.shape[-1], name=f"linear_{i}")(layers.layer_norm(f"ln_{i}", jnp.float32)(x))
    return x


def test_compiled_each_block_keeps_its_input_and_the_normalised_input():
  """Once XLA compiled the gradient of 8 blocks x + linear(layer_norm(x)): each keeps its input (for the LayerNorm)
  and the LayerNorm's output (for the linear's weight gradient), plus at most 6 arrays of that size for the loss and
  the backward pass's working buffers. Flax's nn.LayerNorm needs 35 in all."""
  activations = _gradient_temporaries_in_activations(_Blocks())
  assert activations <= 2 * 8 + 6, activations


def _gradient_temporaries_in_activations(blocks: nn.Module) -> float:
  """XLA's temporaries for the compiled gradient of sum(blocks(x)^2), x (4, 50, 64), in arrays of x's size."""
  x = jnp.ones((4, 50, 64))
  params = blocks.init(jax.random.key(0), x)["params"]
  grad = jax.jit(jax.grad(lambda p, v: (blocks.apply({"params": p}, v) ** 2).sum()))
  return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes / x.nbytes


def test_followed_by_a_weight_the_forward_values_are_unchanged():
  """LayerNorm(x, then_weight=w) is apply_weight(LayerNorm(x), w), bit for bit, in float32 and bfloat16."""
  x, scale, bias, _ = _inputs()
  weight = np.random.default_rng(1).normal(0, 0.3, (6, 16))
  for dtype in (jnp.float32, jnp.bfloat16):
    norm = layers.layer_norm("ln", dtype)
    variables = {"params": {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}}
    w, inputs = jnp.asarray(weight, dtype), jnp.asarray(x, dtype)
    fused = norm.apply(variables, inputs, then_weight=w)
    separate = layers.apply_weight(norm.apply(variables, inputs), w)
    assert fused.dtype == dtype
    np.testing.assert_array_equal(np.asarray(fused, np.float32), np.asarray(separate, np.float32))


def test_followed_by_a_weight_the_gradients_are_the_derivatives():
  # loss = sum(c * (layer_norm(x) @ w.T)): central differences of the NumPy formula in float64, entry by entry.
  x, scale, bias, _ = _inputs()
  rng = np.random.default_rng(1)
  weight, c = np.asarray(rng.normal(0, 0.3, (6, 16)), np.float32), np.asarray(rng.normal(size=(2, 5, 6)), np.float32)
  loss = lambda x, scale, bias, w: np.sum(c * (_numpy_layer_norm(x, scale, bias) @ w.T))
  expected = numerics.central_differences(loss, [x, scale, bias, weight.astype(np.float64)])
  norm = layers.layer_norm("ln", jnp.float32)

  def ours(x, params, w):
    return (jnp.asarray(c) * norm.apply({"params": params}, x, then_weight=w)).sum()

  x_grad, params_grad, w_grad = jax.grad(ours, argnums=(0, 1, 2))(
    jnp.asarray(x, jnp.float32),
    {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)},
    jnp.asarray(weight),
  )
  for name, grad, want in zip(
    ("x", "scale", "bias", "weight"), (x_grad, params_grad["scale"], params_grad["bias"], w_grad), expected, strict=True
  ):
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_followed_by_a_weight_the_backward_pass_keeps_no_normalised_input(capsys):
  """The input, two numbers per row and the weight: the normalised input, which the weight's gradient needs, is
  recomputed in the backward pass."""
  norm = layers.layer_norm("ln", jnp.float32)
  x, weight = jnp.ones((3, 5, 8)), jnp.ones((6, 8))
  variables = norm.init(jax.random.key(0), x)
  jax.ad_checkpoint.print_saved_residuals(lambda v, x, w: norm.apply(v, x, then_weight=w), variables, x, weight)
  saved = capsys.readouterr().out.splitlines()
  assert len([line for line in saved if re.match(r"f32\[3,5,8\] ", line)]) == 1, saved
  assert len([line for line in saved if re.match(r"f32\[3,5,1\] ", line)]) == 2, saved


class _FusedBlocks(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(8):
      x = x + layers.Linear(x.shape[-1], name=f"linear_{i}")(x, input_norm=layers.layer_norm(f"ln_{i}", jnp.float32))
    return x


def test_compiled_followed_by_a_weight_each_block_keeps_only_its_input():
  """As above, with the LayerNorm and the weight computed together: each block keeps its input alone, plus at most 7
  arrays of that size for the loss and the working buffers. Measured: 14.1 in all; 21.1 with the LayerNorm alone."""
  activations = _gradient_temporaries_in_activations(_FusedBlocks())
  assert activations <= 8 + 7, activations
