"""`XCLIPConfig.attention`: which attention implementation runs where, that each computes softmax attention, and the
hand-written core's own gradient (the derivatives, keeping no (L, L) array for the backward pass)."""

import json
import logging
import re
import types

import flax.linen as nn
import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import numerics
from tests.fixtures import tiny
import xclip_jax
from xclip_jax.model import layers
from xclip_jax.train import trainer
from xclip_jax.weights import native


def reference_attention(q, k, v, num_heads: int, causal: bool):
  """softmax(q.k^T / sqrt(head_dim)) v per head, in float64 numpy; (..., L, D) arrays."""
  head_dim = q.shape[-1] // num_heads
  heads_first = lambda t: np.swapaxes(t.reshape(*t.shape[:-1], num_heads, head_dim), -2, -3).astype(np.float64)
  logits = heads_first(q) @ np.swapaxes(heads_first(k), -1, -2) / np.sqrt(head_dim)
  if causal:
    logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
  weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
  weights /= weights.sum(axis=-1, keepdims=True)
  return np.swapaxes(weights @ heads_first(v), -2, -3).reshape(q.shape)


def test_auto_runs_the_hand_written_core_on_cpu_cudnn_on_gpu_and_jax_attention_on_tpu():
  assert layers.attention_implementation("auto", "cpu") == "hand"
  assert layers.attention_implementation("auto", "gpu") == "cudnn"
  # None: jax.nn.dot_product_attention's own choice of implementation.
  assert layers.attention_implementation("auto", "tpu") is None


def _as_on_a_gpu(monkeypatch, compute_capability: str | None = None):
  """The backend a GPU (traced only: nothing runs on it); the device of `compute_capability` if given."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  if compute_capability is not None:
    device = types.SimpleNamespace(compute_capability=compute_capability)
    monkeypatch.setattr(jax, "devices", lambda *args: [device])


def _library_calls(monkeypatch, with_lengths: bool = False) -> list:
  """The implementations jax.nn.dot_product_attention is called with, as `layers` calls it (and the key sequence's
  length: its arrays are ([batch,] length, heads, head_dim))."""
  calls, attention = [], jax.nn.dot_product_attention

  def recorded(query, key, *args, implementation=None, **kwargs):
    calls.append((implementation, key.shape[-3]) if with_lengths else implementation)
    return attention(query, key, *args, implementation=implementation, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", recorded)
  return calls


def test_on_a_gpu_auto_runs_xla_attention_where_cudnn_declines_and_logs_why(monkeypatch, caplog):
  """On this CPU, jax declines cuDNN when the call is traced ("cuDNN is not detected", as for float32 on a GPU):
  `auto` then computes the same attention with XLA's, and logs the reason once."""
  layers._log_xla_instead_of_cudnn.cache_clear()  # logged once per process: perhaps already, by another test
  _as_on_a_gpu(monkeypatch)
  calls = _library_calls(monkeypatch)
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 3, length, 8)).astype(np.float32) for length in (3, 5, 5))
  with caplog.at_level(logging.INFO):
    for _ in range(2):
      out = layers.dot_product_attention(q, k, v, 2, attention="auto")
      np.testing.assert_allclose(out, reference_attention(q, k, v, 2, False), rtol=1e-5, atol=1e-6)
  assert calls == ["cudnn", "xla", "cudnn", "xla"]
  assert [record.getMessage() for record in caplog.records if record.name == "root"] == [
    "attention='auto' runs XLA's attention where cuDNN's fused kernel declines: cuDNN is not detected."
  ]


def test_on_a_gpu_older_than_ampere_auto_does_not_try_cudnn(monkeypatch):
  _as_on_a_gpu(monkeypatch, compute_capability="7.5")
  calls = _library_calls(monkeypatch)
  q = np.ones((1, 4, 8), np.float32)
  np.testing.assert_allclose(layers.dot_product_attention(q, q, q, 2), reference_attention(q, q, q, 2, False))
  assert calls == ["xla"]


def test_on_a_gpu_auto_tries_cudnn_for_tokens_and_never_for_frames(monkeypatch):
  """cuDNN's kernel for the attention over a frame's tokens and over a text's, XLA's over a video's frames (the
  message tokens', the MIT's), a sequence that the mesh's `time` axis may split, which cuDNN cannot partition."""
  _as_on_a_gpu(monkeypatch)
  calls = _library_calls(monkeypatch, with_lengths=True)
  model = tiny.model()
  model.encode_text(tiny.text_ids())
  size = tiny.ARCH["image_resolution"]
  model.encode_video(np.zeros((1, tiny.ARCH["num_frames"], size, size, 3), np.float32))
  frames = tiny.ARCH["num_frames"]
  tokens = (size // tiny.ARCH["vision_patch_size"]) ** 2 + 2  # the patches, the class token, the message token
  assert {length for implementation, length in calls if implementation == "cudnn"} >= {tokens}
  assert {implementation for implementation, length in calls if length == frames} == {"xla"}


def test_a_named_cudnn_is_not_replaced(monkeypatch):
  _as_on_a_gpu(monkeypatch)
  q = np.ones((1, 4, 8), np.float32)
  with pytest.raises(RuntimeError, match="cuDNN is not detected"):
    layers.dot_product_attention(q, q, q, 2, attention="cudnn")


def test_a_named_implementation_runs_as_named():
  assert layers.attention_implementation("hand", "gpu") == "hand"
  assert layers.attention_implementation("xla", "cpu") == "xla"
  assert layers.attention_implementation("cudnn", "gpu") == "cudnn"


def test_unknown_implementation_is_refused_in_one_line():
  with pytest.raises(ValueError, match="attention must be one of") as config_error:
    xclip_jax.XCLIPConfig(**tiny.ARCH, attention="flash")
  with pytest.raises(ValueError, match="attention must be one of") as resolver_error:
    layers.attention_implementation("flash", "cpu")
  assert "\n" not in str(config_error.value) and "\n" not in str(resolver_error.value)


def test_cudnn_on_cpu_is_refused_in_one_line():
  with pytest.raises(ValueError, match="attention='cudnn' needs an NVIDIA GPU") as error:
    tiny.model(attention="cudnn").encode_text(tiny.text_ids())
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("attention", ["hand", "xla"])
@pytest.mark.parametrize("queries, causal", [(5, True), (3, False)], ids=["causal", "fewer_queries"])
def test_every_implementation_computes_softmax_attention(attention, queries, causal):
  rng = np.random.default_rng(0)
  # Two batch axes, as the frame attention's (B, T, L, D); 2 heads of 4.
  q, k, v = (rng.normal(size=(2, 3, length, 8)).astype(np.float32) for length in (queries, 5, 5))
  out = layers.dot_product_attention(q, k, v, 2, causal, attention)
  np.testing.assert_allclose(out, reference_attention(q, k, v, 2, causal), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("queries, causal", [(5, True), (3, False)], ids=["causal", "fewer_queries"])
def test_gradients_of_the_hand_written_core_are_the_derivatives(queries, causal):
  # loss = sum(c * attention(q, k, v)); central differences of the float64 reference, entry by entry.
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(2, length, 8)) for length in (queries, 5, 5))
  c = rng.normal(size=(2, queries, 8))
  reference_loss = lambda q, k, v: np.sum(c * reference_attention(q, k, v, 2, causal))
  expected = numerics.central_differences(reference_loss, [q, k, v])
  loss = lambda q, k, v: jnp.sum(jnp.asarray(c, jnp.float32) * layers.hand_attention(q, k, v, 2, causal))
  grads = jax.grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)))
  for grad, want in zip(grads, expected, strict=True):
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_the_hand_written_core_keeps_its_inputs_and_one_number_per_query_and_head(capsys):
  """q, k, v and the log of each softmax denominator: no (queries, keys) array per head (autodiff keeps three: the
  probabilities, and the row maximum's mask and its float copy) and no heads-first copy."""
  q, k, v = (jnp.ones((3, length, 8)) for length in (6, 7, 7))
  jax.ad_checkpoint.print_saved_residuals(lambda q, k, v: layers.hand_attention(q, k, v, 2), q, k, v)
  saved = sorted(re.match(r"\S+", line).group() for line in capsys.readouterr().out.splitlines())
  saved.remove("f32[]")  # the scale of q, a constant
  assert saved == ["f32[3,2,6,1]", "f32[3,6,8]", "f32[3,7,8]", "f32[3,7,8]"], saved


class _AttentionBlocks(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(8):
      x = x + layers.MultiheadAttention(4, attention="hand", name=f"attn_{i}")(x)
    return x


def test_compiled_the_attention_blocks_keep_no_probabilities():
  """Once XLA compiled the gradient of 8 attention blocks (64 tokens of width 32, 4 heads: a head's (L, L)
  probabilities are twice the size of a (L, D) activation), it keeps per block the block's input, the q, k, v
  projection and the attention's output (5 activations), plus the working buffers of one block's backward pass (the
  recomputed probabilities, their gradient and the logits' gradient: 3 x 8 activations). Measured: 56 activations;
  autodiff, keeping the probabilities, the row maximum's mask and its float copy and the heads-first copies, 137."""
  blocks, x = _AttentionBlocks(), jnp.ones((2, 64, 32))
  params = blocks.init(jax.random.key(0), x)["params"]
  grad = jax.jit(jax.grad(lambda p, v: (blocks.apply({"params": p}, v) ** 2).sum()))
  temporaries = grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes
  activation = 2 * 64 * 32 * 4
  assert temporaries <= (8 * 5 + 3 * 8 + 8) * activation, temporaries / activation


def test_bfloat16_gradients_of_the_hand_written_core_follow_float32():
  """The bfloat16 backward pass (its own rule, products in bfloat16 summed in float32) gives the float32 gradients to
  bfloat16's precision."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.bfloat16) for _ in range(3))
  cotangent = rng.normal(size=(3, 5, 8)).astype(np.float32)

  def gradients(dtype):
    loss = lambda q, k, v: jnp.sum(layers.hand_attention(q, k, v, 2, causal=True).astype(jnp.float32) * cotangent)
    return jax.grad(loss, argnums=(0, 1, 2))(*(t.astype(dtype) for t in (q, k, v)))

  for low, high in zip(gradients(jnp.bfloat16), gradients(jnp.float32), strict=True):
    assert low.dtype == jnp.bfloat16
    # bfloat16 keeps 8 significant bits: a few roundings of 2^-9 through the softmax's backward pass (measured: 0.8%
    # of the largest gradient at most). A wrong rule is off by about 100%.
    np.testing.assert_allclose(low.astype(np.float32), high, rtol=0, atol=0.02 * np.abs(high).max())


def test_checkpoints_leave_the_choice_to_the_loader(tmp_path):
  directory = tiny.model(attention="xla").save(tmp_path / "model")
  assert "attention" not in json.loads((directory / native.CONFIG_FILE).read_text())["config"]
  assert xclip_jax.load_pretrained(directory).config.attention == "auto"
  assert xclip_jax.load_pretrained(directory, attention="hand").config.attention == "hand"


def test_the_experiment_config_chooses_the_implementation(tmp_path):
  checkpoint = tiny.model().save(tmp_path / "model")
  config = tiny.experiment_config(arch="", attention="xla")
  config.init.checkpoint = str(checkpoint)
  assert trainer.load_model(config).config.attention == "xla"
