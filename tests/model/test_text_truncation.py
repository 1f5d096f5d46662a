"""Text encoding on ids cut after their end tokens gives the features of the full 77-token encoding."""

import functools

import jax
import numpy as np
import pytest

from tests.fixtures import tiny
from xclip_jax.model import tokenizer
from xclip_jax.model import xclip

# Short, medium and long class texts, as in one batch of class names.
TEXTS = ["yoga", "playing ice hockey", "a person " + "slowly " * 20 + "juggling five balls while riding a unicycle"]
# float32. The sums are the same less the padding positions, which have zero attention weight; only the matmul shapes
# change. Measured on the tiny model: at most 1.2e-6 apart, truncated or in another batch (features up to 2.7).
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model():
  return tiny.model()


@pytest.fixture(scope="module")
def encode(model):
  """`XCLIP.encode_text` on the ids as given (no truncation), jit-compiled."""
  apply = jax.jit(functools.partial(model.module.apply, method=xclip.XCLIP.encode_text))
  return lambda ids: np.asarray(apply({"params": model.params}, ids))


def test_cut_is_after_the_last_end_token_rounded_up_to_the_multiple():
  ids = tokenizer.tokenize(TEXTS)
  assert (ids == tokenizer.END_TOKEN).argmax(axis=-1).tolist() == [2, 4, 32]
  assert xclip.text_lengths(ids).tolist() == [4, 8, 36]
  assert xclip.text_lengths(ids, multiple=1).tolist() == [3, 5, 33]
  np.testing.assert_array_equal(xclip.truncate_text_ids(ids), ids[:, :36])
  assert xclip.truncate_text_ids(ids, multiple=1).shape == (3, 33)
  assert xclip.truncate_text_ids(ids[:2]).shape == (2, 8)


def test_a_text_that_fills_the_context_keeps_every_position():
  ids = tokenizer.tokenize(["yoga", "dancing " * 100], truncate=True)
  assert ids[1, -1] == tokenizer.END_TOKEN
  np.testing.assert_array_equal(xclip.truncate_text_ids(ids), ids)


@pytest.mark.parametrize("multiple", [1, 4])
def test_truncated_encoding_equals_the_full_length_one(encode, multiple):
  ids = tokenizer.tokenize(TEXTS)
  truncated = xclip.truncate_text_ids(ids, multiple)
  assert truncated.shape[-1] < ids.shape[-1]
  np.testing.assert_allclose(encode(truncated), encode(ids), **TOLERANCE)


def test_model_encode_text_groups_texts_by_length_and_agrees_with_full_length(model, encode):
  # Groups of lengths 4, 8, 36 and 77 (a text filling the whole context, where nothing can be cut), in mixed order.
  ids = tokenizer.tokenize(["dancing " * 100, *TEXTS, "surfing water"], truncate=True)
  assert xclip.text_lengths(ids).tolist() == [77, 4, 8, 36, 4]
  np.testing.assert_allclose(model.encode_text(ids), encode(ids), **TOLERANCE)


def test_ids_longer_than_the_context_are_refused(model):
  with pytest.raises(ValueError, match="length 78, more than the model's context length 77"):
    model.module.apply({"params": model.params}, np.zeros((1, 78), np.int32), method=xclip.XCLIP.encode_text)
