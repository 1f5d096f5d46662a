"""Generic layers in PyTorch's parameter layouts: Linear, multi-head attention, CLIP's MLP and block, DropPath.

Weights keep PyTorch's (out, in) layout and names, so that converting official checkpoints is a renaming. LayerNorm
statistics and softmax run in float32.
"""

import functools
import logging
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
  """torch.nn.Linear: `weight` in PyTorch's (out, in) layout and `bias`.

  With `quick_gelu_input`, the input goes through QuickGELU first (`quick_gelu_then_weight`).
  """

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  weight_init: Any = torch_linear_weight_init()
  bias_init: Any = nn.initializers.zeros
  quick_gelu_input: bool = False

  @nn.compact
  def __call__(self, x, input_norm: "LayerNorm | None" = None):
    """x @ weight.T + bias; with `input_norm`, of input_norm(x), computed together (`LayerNorm.__call__`)."""
    weight = self.param("weight", self.weight_init, (self.features, x.shape[-1]))
    if input_norm is not None:
      y = input_norm(x, then_weight=weight.astype(self.dtype))
    else:
      product = quick_gelu_then_weight if self.quick_gelu_input else apply_weight
      y = product(x.astype(self.dtype), weight.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm over the last axis (`scale`, `bias`), as Flax's nn.LayerNorm computes it (float32 statistics,
  the result in `dtype`), with a gradient that keeps only its input and two numbers per row for the backward pass:
  autodiff keeps three activations of the input's size."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, then_weight=None):
    """LayerNorm(x); with `then_weight` (a Linear's, in PyTorch's layout and the compute dtype), LayerNorm(x) @
    then_weight.T, keeping for the backward pass only x, its statistics and the weight: the normalised x, which the
    weight's gradient needs, is recomputed there (`layer_norm_then_weight`)."""
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    if then_weight is not None:
      return layer_norm_then_weight(x, scale, bias, then_weight)
    return _layer_norm(x, scale, bias).astype(self.dtype)


def layer_norm(name: str, dtype) -> LayerNorm:
  return LayerNorm(dtype=dtype, name=name)


def _layer_norm_statistics(x):
  """Flax's: float32 mean and 1 / sqrt(variance + eps), the variance as E[x^2] - E[x]^2 (at least 0)."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axis=-1, keepdims=True)
  variance = jnp.maximum(0.0, (x32 * x32).mean(axis=-1, keepdims=True) - mean * mean)
  return mean, jax.lax.rsqrt(variance + LAYER_NORM_EPS)


@jax.custom_vjp
def _layer_norm(x, scale, bias):
  return _layer_norm_fwd(x, scale, bias)[0]


def _layer_norm_fwd(x, scale, bias):
  mean, inverse_std = _layer_norm_statistics(x)
  return _normalize(x, mean, inverse_std, scale, bias), (x, mean, inverse_std, scale)


def _normalize(x, mean, inverse_std, scale, bias):
  """LayerNorm's output from its statistics, in float32."""
  return (x.astype(jnp.float32) - mean) * (inverse_std * scale) + bias


def _layer_norm_bwd(saved, cotangent):
  x, mean, inverse_std, scale = saved
  x = _once_cotangent_exists(x, cotangent)
  normalized = (x.astype(jnp.float32) - mean) * inverse_std
  rows = tuple(range(cotangent.ndim - 1))
  scale_grad = (cotangent * normalized).sum(axis=rows)
  bias_grad = cotangent.sum(axis=rows)
  g = cotangent * scale
  x_grad = inverse_std * (
    g - g.mean(axis=-1, keepdims=True) - normalized * (g * normalized).mean(axis=-1, keepdims=True)
  )
  return x_grad.astype(x.dtype), scale_grad, bias_grad


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def layer_norm_then_weight(x, scale, bias, weight):
  """apply_weight(LayerNorm(x) in the weight's dtype, weight), the LayerNorm's output recomputed in the backward pass."""
  return _layer_norm_then_weight_fwd(x, scale, bias, weight)[0]


def _layer_norm_then_weight_fwd(x, scale, bias, weight):
  normalized, (x, mean, inverse_std, scale) = _layer_norm_fwd(x, scale, bias)
  return apply_weight(normalized.astype(weight.dtype), weight), (x, mean, inverse_std, scale, bias, weight)


def _layer_norm_then_weight_bwd(saved, cotangent):
  x, mean, inverse_std, scale, bias, weight = saved
  x = _once_cotangent_exists(x, cotangent)
  normalized = _normalize(x, mean, inverse_std, scale, bias).astype(weight.dtype)  # as the forward pass computed it
  weight_grad = jnp.einsum("...o,...i->oi", cotangent, normalized)
  normalized_grad = jnp.einsum("...o,oi->...i", cotangent, weight)
  x_grad, scale_grad, bias_grad = _layer_norm_bwd((x, mean, inverse_std, scale), normalized_grad)
  return x_grad, scale_grad, bias_grad, weight_grad.astype(weight.dtype)


layer_norm_then_weight.defvjp(_layer_norm_then_weight_fwd, _layer_norm_then_weight_bwd)


class QuickGELU(nn.Module):
  @nn.compact
  def __call__(self, x):
    return quick_gelu(x)


@jax.custom_vjp
def quick_gelu(x):
  """CLIP's x * sigmoid(1.702 x). Its gradient keeps only x for the backward pass and recomputes the sigmoid there:
  autodiff would keep the sigmoid as well. (The blocks' MLPs use `quick_gelu_then_weight`.)"""
  return x * jax.nn.sigmoid(1.702 * x)


def _quick_gelu_fwd(x):
  return quick_gelu(x), x


def _quick_gelu_bwd(x, cotangent):
  x = _once_cotangent_exists(x, cotangent)
  return ((cotangent.astype(jnp.float32) * _quick_gelu_derivative(x)).astype(cotangent.dtype),)


def _once_cotangent_exists(x, cotangent):
  """x, made to depend on the cotangent, so that what a backward rule recomputes from it is computed there, not
  merged with the forward pass's values or moved into it by XLA (which would keep the result until the backward pass:
  the memory the recomputation is meant to save). XLA's CPU compiler moved such work across an optimization_barrier;
  a data dependency it cannot move. An infinite cotangent gives NaN gradients instead of infinite ones: both stop
  the run."""
  return x + (0 * cotangent[..., :1]).astype(x.dtype)


def _quick_gelu_derivative(x):
  # In float32 for bfloat16 inputs too: its two terms cancel near x = -0.94.
  x32 = x.astype(jnp.float32)
  s = jax.nn.sigmoid(1.702 * x32)
  return s + 1.702 * x32 * s * (1 - s)


quick_gelu.defvjp(_quick_gelu_fwd, _quick_gelu_bwd)


@jax.custom_vjp
def quick_gelu_then_weight(x, weight):
  """apply_weight(quick_gelu(x), weight), keeping only x and the weight for the backward pass: the weight's gradient
  needs QuickGELU's output, which is recomputed there instead of kept, one activation of the MLP's hidden width less
  per block in training."""
  return apply_weight(quick_gelu(x), weight)


def _quick_gelu_then_weight_fwd(x, weight):
  return quick_gelu_then_weight(x, weight), (x, weight)


def _quick_gelu_then_weight_bwd(saved, cotangent):
  x, weight = saved
  x = _once_cotangent_exists(x, cotangent)
  activation = quick_gelu(x)  # as the forward pass computed it, in its dtype: the same values
  weight_grad = jnp.einsum("...o,...i->oi", cotangent, activation)
  activation_grad = jnp.einsum("...o,oi->...i", cotangent, weight)
  x_grad = (activation_grad.astype(jnp.float32) * _quick_gelu_derivative(x)).astype(x.dtype)
  return x_grad, weight_grad.astype(weight.dtype)


quick_gelu_then_weight.defvjp(_quick_gelu_then_weight_fwd, _quick_gelu_then_weight_bwd)


# Attention implementations: `auto` picks one for the backend at trace time (`attention_implementation`); `hand` is
# `hand_attention`; `xla` and `cudnn` are those of jax.nn.dot_product_attention.
ATTENTION_IMPLEMENTATIONS = ("auto", "hand", "xla", "cudnn")
# cuDNN's fused attention kernels need an Ampere GPU or later; jax checks everything else when the call is traced.
_CUDNN_LEAST_COMPUTE_CAPABILITY = (8, 0)


def attention_implementation(attention: str, backend: str) -> str | None:
  """What `attention` runs on `backend` (jax.default_backend(): 'cpu', 'gpu', 'tpu').

  Returns "hand" for `hand_attention`, else the `implementation` argument of jax.nn.dot_product_attention: "xla",
  "cudnn", or None (jax's own choice, XLA's today). `auto` takes "hand" on a CPU, "cudnn" on a GPU (where cuDNN
  declines a call, `dot_product_attention` runs XLA's instead; over frames, `attention_over_frames`), None on a TPU.
  """
  if attention not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {attention!r}")
  if attention == "cudnn" and backend != "gpu":
    raise ValueError(f"attention='cudnn' needs an NVIDIA GPU, but the backend is {backend!r}; use 'auto' or 'xla'")
  if attention == "auto":
    return {"cpu": "hand", "gpu": "cudnn"}.get(backend)
  return attention


def attention_over_frames(attention: str) -> str:
  """The implementation for attention whose sequence is a video's frames (the message tokens', the MIT's): the mesh's
  `time` axis may split that sequence over devices, which cuDNN's kernel cannot partition, and over a few dozen frames
  it gains nothing; so there `auto` runs XLA's attention on a GPU."""
  return "xla" if attention == "auto" and jax.default_backend() == "gpu" else attention


def hand_attention(q, k, v, num_heads: int, causal: bool = False):
  """Multi-head attention core on (..., L, D) projections, as PyTorch computes it (q scaled before q.k).

  Heads are moved before the sequence axis so that both products are plain batched matmuls, and the softmax is
  normalised after the product with v (one division of (L, head_dim) instead of (L, L)); both are faster on CPU.
  `causal`: query i attends to keys 0..i only. Its gradient keeps q, k, v and one number per query and head (the log
  of the softmax's denominator), and recomputes the probabilities in the backward pass: autodiff would keep three
  arrays of (L, L) per head (the probabilities, the row maximum's mask and its float copy) and the heads-first copies
  of q, k, v and of the output.
  """
  return _attention_core(q * (q.shape[-1] // num_heads) ** -0.5, k, v, num_heads, causal)


def _heads_first(t, num_heads: int):
  """(..., L, D) -> (..., heads, L, D / heads)."""
  return jnp.moveaxis(t.reshape(*t.shape[:-1], num_heads, t.shape[-1] // num_heads), -2, -3)


def _heads_last(t):
  """(..., heads, L, head_dim) -> (..., L, heads * head_dim)."""
  t = jnp.moveaxis(t, -3, -2)
  return t.reshape(*t.shape[:-2], -1)


def _attention_logits(q, k, causal: bool):
  """q.k^T of heads-first arrays in float32 (bfloat16 operands too), -inf where `causal` hides a key."""
  logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32)
  if causal:
    logits = jnp.where(jnp.tril(jnp.ones(logits.shape[-2:], bool)), logits, -jnp.inf)
  return logits


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention_core(q, k, v, num_heads: int, causal: bool):
  """softmax(q.k^T) v per head of (..., L, D) arrays, q already scaled."""
  return _attention_core_fwd(q, k, v, num_heads, causal)[0]


def _attention_core_fwd(q, k, v, num_heads, causal):
  logits = _attention_logits(_heads_first(q, num_heads), _heads_first(k, num_heads), causal)
  row_max = logits.max(axis=-1, keepdims=True)
  weights = jnp.exp(logits - row_max)
  total = weights.sum(axis=-1, keepdims=True)
  out = jnp.matmul(weights.astype(v.dtype), _heads_first(v, num_heads)) / total.astype(v.dtype)
  return _heads_last(out), (q, k, v, row_max + jnp.log(total))


def _attention_core_bwd(num_heads, causal, saved, cotangent):
  q, k, v, log_total = saved
  # Tied to the cotangent before the heads are split: the split copies are made here, not kept from the forward pass.
  # Entry by entry where the shapes agree, so that no shard of a sequence split over devices (frames over `time`)
  # waits for another's; keys and values longer than the queries tie to its first row.
  anchor = lambda t: cotangent if t.shape == cotangent.shape else cotangent[..., :1, :]
  q, k, v = (_heads_first(_once_cotangent_exists(t, anchor(t)), num_heads) for t in (q, k, v))
  cotangent = _heads_first(cotangent, num_heads)
  probabilities = jnp.exp(_attention_logits(q, k, causal) - log_total)
  # Operands in their own dtype, products summed in float32, as the forward pass multiplies.
  product = lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)
  probabilities_grad = product(cotangent, jnp.swapaxes(v, -1, -2))
  logits_grad = probabilities * (probabilities_grad - (probabilities * probabilities_grad).sum(axis=-1, keepdims=True))
  logits_grad = logits_grad.astype(q.dtype)
  q_grad = product(logits_grad, k)
  k_grad = product(jnp.swapaxes(logits_grad, -1, -2), q)
  v_grad = product(jnp.swapaxes(probabilities.astype(v.dtype), -1, -2), cotangent.astype(v.dtype))
  return tuple(_heads_last(grad).astype(t.dtype) for grad, t in ((q_grad, q), (k_grad, k), (v_grad, v)))


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def dot_product_attention(q, k, v, num_heads: int, causal: bool = False, attention: str = "auto"):
  """Multi-head attention of (..., T, D) queries over (..., S, D) keys and values by the `attention` implementation.

  Every implementation scales q by head_dim**-0.5 before q.k, as PyTorch does, and runs the softmax in float32.
  """
  implementation = attention_implementation(attention, jax.default_backend())
  if implementation == "hand":
    return hand_attention(q, k, v, num_heads, causal)
  if attention == "auto" and implementation == "cudnn":
    # cuDNN's kernel where it runs: bfloat16 or float16, a head dimension it takes, an Ampere GPU or later.
    reason = _older_than_ampere()
    if reason is None:
      try:
        return _library_attention(q, k, v, num_heads, causal, "cudnn")
      except (NotImplementedError, ValueError, RuntimeError) as declined:  # what jax raises for what cuDNN lacks
        reason = " ".join(str(declined).split())
    _log_xla_instead_of_cudnn(reason)
    implementation = "xla"
  return _library_attention(q, k, v, num_heads, causal, implementation)


def _older_than_ampere() -> str | None:
  """Why cuDNN's kernel cannot run on this NVIDIA GPU, which jax does not check when tracing; None if it can."""
  capability = getattr(jax.devices()[0], "compute_capability", "")  # "9.0" on an H100
  try:
    version = tuple(int(part) for part in capability.split("."))
  except ValueError:  # no NVIDIA GPU's ("gfx90a" on ROCm): jax's own checks decline cuDNN there
    return None
  if version >= _CUDNN_LEAST_COMPUTE_CAPABILITY:
    return None
  return f"compute capability {capability}: cuDNN's fused attention needs 8.0 (Ampere) or later"


@functools.cache
def _log_xla_instead_of_cudnn(reason: str):
  logging.info("attention='auto' runs XLA's attention where cuDNN's fused kernel declines: %s", reason)


def _library_attention(q, k, v, num_heads: int, causal: bool, implementation: str | None):
  """jax.nn.dot_product_attention of (..., L, D) projections by `implementation`, q scaled first."""
  *batch, q_len, width = q.shape
  head_dim = width // num_heads
  split_heads = lambda t: t.reshape(*t.shape[:-1], num_heads, head_dim)
  # jax.nn.dot_product_attention takes ([batch,] length, heads, head_dim): further batch axes are vmapped, not
  # flattened into one, because flattening (videos, frames) would undo frames split over the mesh's `time` axis.
  attend = functools.partial(
    jax.nn.dot_product_attention,
    scale=1.0,  # q is scaled below; the default would scale the logits instead
    is_causal=causal,
    implementation=implementation,
  )
  for _ in batch[1:]:
    attend = jax.vmap(attend)
  out = attend(split_heads(q * (head_dim**-0.5)), split_heads(k), split_heads(v))
  return out.reshape(*batch, q_len, width)


class MultiheadAttention(nn.Module):
  """Self-attention with the parameters of torch.nn.MultiheadAttention (fused `in_proj`, `out_proj`)."""

  num_heads: int
  dtype: Any = jnp.float32
  in_proj_init: Any = None  # None: torch's xavier_uniform
  out_proj_init: Any = None  # None: torch's nn.Linear default
  attention: str = "auto"  # the implementation (ATTENTION_IMPLEMENTATIONS)

  @nn.compact
  def __call__(self, x, causal: bool = False, num_queries=None, input_norm: "LayerNorm | None" = None):
    """Self-attention over the L tokens of x (of input_norm(x)); only the first `num_queries` tokens (default all)
    are queries."""
    width = x.shape[-1]
    in_proj = Linear(3 * width, dtype=self.dtype, weight_init=self.in_proj_init or XAVIER_UNIFORM, name="in_proj")
    qkv = in_proj(x, input_norm)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    out = dot_product_attention(q[..., :num_queries, :], k, v, self.num_heads, causal, self.attention)
    return Linear(
      width, dtype=self.dtype, weight_init=self.out_proj_init or torch_linear_weight_init(), name="out_proj"
    )(out)


class MLP(nn.Module):
  """`c_fc` -> QuickGELU -> `c_proj`, as in CLIP's residual blocks."""

  dtype: Any = jnp.float32
  fc_init: Any = None
  proj_init: Any = None

  @nn.compact
  def __call__(self, x, input_norm: "LayerNorm | None" = None):
    """The MLP of x (of input_norm(x))."""
    width = x.shape[-1]
    x = Linear(
      4 * width,
      dtype=self.dtype,
      weight_init=self.fc_init or torch_linear_weight_init(),
      bias_init=torch_linear_bias_init(width),
      name="c_fc",
    )(x, input_norm)
    return Linear(
      width,
      dtype=self.dtype,
      weight_init=self.proj_init or torch_linear_weight_init(),
      bias_init=torch_linear_bias_init(4 * width),
      quick_gelu_input=True,
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
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, causal: bool = False):
    inits = self.inits or {}
    attn = MultiheadAttention(
      self.num_heads,
      self.dtype,
      in_proj_init=inits.get("in_proj"),
      out_proj_init=inits.get("out_proj"),
      attention=self.attention,
      name="attn",
    )
    x = x + attn(x, causal, input_norm=layer_norm("ln_1", self.dtype))
    mlp = MLP(self.dtype, fc_init=inits.get("c_fc"), proj_init=inits.get("c_proj"), name="mlp")
    return x + mlp(x, input_norm=layer_norm("ln_2", self.dtype))
