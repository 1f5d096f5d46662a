"""`XCLIPConfig.attention`: which attention implementation runs where, and that each computes softmax attention."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_auto_runs_the_hand_written_core_on_cpu_and_jax_attention_on_accelerators():
  assert layers.attention_implementation("auto", "cpu") == "hand"
  # None: jax.nn.dot_product_attention's own choice of implementation.
  assert layers.attention_implementation("auto", "gpu") is None
  assert layers.attention_implementation("auto", "tpu") is None


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


def test_bfloat16_gradients_of_the_hand_written_core_follow_float32():
  """The bfloat16 backward pass of q.k^T (its own rule) gives the float32 gradients to bfloat16's precision."""
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
