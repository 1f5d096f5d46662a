"""Generic layers in PyTorch's parameter layouts: Linear, multi-head attention, CLIP's MLP and block, DropPath.

Weights keep PyTorch's (out, in) layout and names, so that converting official checkpoints is a renaming. LayerNorm
statistics and softmax run in float32.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's LayerNorm default; Flax's default (1e-6) would break parity.
LAYER_NORM_EPS = 1e-5


# Initialisers reproducing the distributions of the official code (PyTorch defaults where it sets none), for weights
# in PyTorch's (out, in, ...) layout.
def torch_linear_weight_init():
  """nn.Linear's and nn.Conv2d's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=1, out_axis=0)


def torch_linear_bias_init(fan_in: int):
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


TRUNC_NORMAL_02 = nn.initializers.truncated_normal(stddev=0.02)
XAVIER_UNIFORM = nn.initializers.xavier_uniform(in_axis=1, out_axis=0)


def apply_weight(x, weight):
  """x @ weight.T for a weight in PyTorch's (out, in) layout.

  Contracting both operands on their last axis runs about 3% faster in XLA's CPU matmul than x @ kernel with Flax's
  (in, out) layout; keeping PyTorch's layout also makes conversion a renaming.
  """
  return jnp.einsum("...i,oi->...o", x, weight)


class Linear(nn.Module):
  """torch.nn.Linear: `weight` in PyTorch's (out, in) layout and `bias`."""

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  weight_init: Any = torch_linear_weight_init()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", self.weight_init, (self.features, x.shape[-1]))
    y = apply_weight(x.astype(self.dtype), weight.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
    return y


def layer_norm(name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


class QuickGELU(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x * jax.nn.sigmoid(1.702 * x)


def dot_product_attention(q, k, v, num_heads: int, mask=None):
  """Multi-head attention core on (..., L, D) projections, as PyTorch computes it (q scaled before q.k).

  Heads are moved before the sequence axis so that both products are plain batched matmuls, and the softmax is
  normalised after the product with v (one division of (L, head_dim) instead of (L, L)); both are faster on CPU.
  """
  *batch, q_len, width = q.shape
  head_dim = width // num_heads
  heads_first = lambda t: jnp.moveaxis(t.reshape(*t.shape[:-1], num_heads, head_dim), -2, -3)
  q, k, v = heads_first(q * (head_dim**-0.5)), heads_first(k), heads_first(v)
  logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
  out = jnp.matmul(weights.astype(v.dtype), v) / weights.sum(axis=-1, keepdims=True).astype(v.dtype)
  return jnp.moveaxis(out, -3, -2).reshape(*batch, q_len, width)


class MultiheadAttention(nn.Module):
  """Self-attention with the parameters of torch.nn.MultiheadAttention (fused `in_proj`, `out_proj`)."""

  num_heads: int
  dtype: Any = jnp.float32
  in_proj_init: Any = None  # None: torch's xavier_uniform
  out_proj_init: Any = None  # None: torch's nn.Linear default

  @nn.compact
  def __call__(self, x, mask=None, num_queries=None):
    """Self-attention over the L tokens of x; only the first `num_queries` tokens (default all) are queries."""
    width = x.shape[-1]
    qkv = Linear(3 * width, dtype=self.dtype, weight_init=self.in_proj_init or XAVIER_UNIFORM, name="in_proj")(x)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    out = dot_product_attention(q[..., :num_queries, :], k, v, self.num_heads, mask)
    return Linear(
      width, dtype=self.dtype, weight_init=self.out_proj_init or torch_linear_weight_init(), name="out_proj"
    )(out)


class MLP(nn.Module):
  """`c_fc` -> QuickGELU -> `c_proj`, as in CLIP's residual blocks."""

  dtype: Any = jnp.float32
  fc_init: Any = None
  proj_init: Any = None

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = Linear(
      4 * width,
      dtype=self.dtype,
      weight_init=self.fc_init or torch_linear_weight_init(),
      bias_init=torch_linear_bias_init(width),
      name="c_fc",
    )(x)
    x = QuickGELU()(x)
    return Linear(
      width,
      dtype=self.dtype,
      weight_init=self.proj_init or torch_linear_weight_init(),
      bias_init=torch_linear_bias_init(4 * width),
      name="c_proj",
    )(x)


class DropPath(nn.Module):
  """Stochastic depth with the official code's mask shape.

  The official DropPath draws one decision per entry of the first axis of a sequence-first (L, N, D) tensor, that is
  per token position (and, for message tokens, per frame), shared across the batch. `axis` names that axis here.
  """

  rate: float
  axis: int

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if self.rate == 0.0 or deterministic:
      return x
    keep = 1.0 - self.rate
    shape = [1] * x.ndim
    shape[self.axis] = x.shape[self.axis]
    mask = jax.random.bernoulli(self.make_rng("droppath"), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class ResidualAttentionBlock(nn.Module):
  """CLIP's pre-LN transformer block (text encoder and MIT)."""

  num_heads: int
  dtype: Any = jnp.float32
  inits: dict | None = None  # optional {'in_proj', 'out_proj', 'c_fc', 'c_proj'} initialisers

  @nn.compact
  def __call__(self, x, mask=None):
    inits = self.inits or {}
    attn = MultiheadAttention(
      self.num_heads, self.dtype, in_proj_init=inits.get("in_proj"), out_proj_init=inits.get("out_proj"), name="attn"
    )
    x = x + attn(layer_norm("ln_1", self.dtype)(x), mask)
    mlp = MLP(self.dtype, fc_init=inits.get("c_fc"), proj_init=inits.get("c_proj"), name="mlp")
    return x + mlp(layer_norm("ln_2", self.dtype)(x))
