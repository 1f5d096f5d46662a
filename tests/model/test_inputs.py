"""XCLIPModel's inputs: a mistake is a ValueError saying what was expected, before anything runs (not a silent wrong
result, nor JAX's error from deep inside the model)."""

import numpy as np
import pytest

from tests.fixtures import tiny
import xclip_jax


@pytest.fixture(scope="module")
def model():
  return tiny.model()


@pytest.fixture(scope="module")
def inputs(model):
  video = np.random.default_rng(0).normal(size=(2, 2, 32, 32, 3)).astype(np.float32)
  text_ids = xclip_jax.tokenize(["run", "jump", "swim"])
  return video, text_ids, model.encode_text(text_ids)


def test_the_inputs_of_these_tests_classify(model, inputs):
  video, text_ids, text_features = inputs
  assert model.logits(video, text_ids).shape == model.logits(video, text_features=text_features).shape == (2, 3)


def test_videos_as_nested_lists_are_taken(model, inputs):
  video, text_ids, _ = inputs
  np.testing.assert_array_equal(model.logits(video.tolist(), text_ids), model.logits(video, text_ids))


def test_frames_of_0_to_255_are_refused_with_the_normalisation_to_apply(model, inputs):
  video, text_ids, _ = inputs
  with pytest.raises(ValueError, match=r"^video of dtype uint8: expected float frames normalised with .*MEAN_RGB"):
    model.logits(np.zeros(video.shape, np.uint8), text_ids)


def test_a_batch_of_no_videos_is_refused(model, inputs):
  video, text_ids, _ = inputs
  with pytest.raises(ValueError, match=r"^video of shape \(0, 2, 32, 32, 3\): a batch of no videos$"):
    model.logits(video[:0], text_ids)


@pytest.mark.parametrize(
  "change",
  [
    lambda f: f[0],  # one text's features: the classes would become the videos
    lambda f: f[:0],  # no class
    lambda f: f[:, :16],  # another model's width
    lambda f: f[None],
  ],
  ids=["one-text", "no-class", "width", "extra-axis"],
)
def test_text_features_not_shaped_as_encode_texts_output_are_refused(model, inputs, change):
  video, _, text_features = inputs
  with pytest.raises(ValueError, match=r"^text_features of shape \(.*\): expected \(K, 32\) with K >= 1"):
    model.logits(video, text_features=change(np.asarray(text_features)))


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda ids: ids[0], r"text_ids of shape \(77,\): expected \(K, 77\)"),
    (lambda ids: ids[None], r"text_ids of shape \(1, 3, 77\): expected \(K, 77\)"),
    (lambda ids: ids[:0], r"text_ids of shape \(0, 77\): expected \(K, 77\)"),
    (lambda ids: np.where(ids == ids.max(), 60000, ids), r"text_ids must be integer token ids in \[0, 49408\)"),
    (lambda ids: np.where(ids == ids.max(), 49408, ids), r"text_ids must be integer token ids in \[0, 49408\)"),
    (lambda ids: ids - 5, r"text_ids must be integer token ids in \[0, 49408\)"),
    (lambda ids: ids.astype(np.float32), r"text_ids must be integer token ids in \[0, 49408\)"),
    (np.zeros_like, r"text_ids row 0 has no end-of-text token \(49407\): pass token ids from tokenize$"),
    (lambda ids: np.where(ids == 49407, 0, ids), r"text_ids row 0 has no end-of-text token \(49407\)"),
    (lambda ids: np.concatenate([ids[:2], ids[2:] % 49407]), r"text_ids row 2 has no end-of-text token \(49407\)"),
  ],
  ids=[
    "one-text",
    "extra-axis",
    "no-text",
    "beyond-vocabulary",
    "the-vocabulary-size",
    "negative",
    "float",
    "zeros",
    "no-end",
    "third-without-end",
  ],
)
def test_text_ids_that_tokenize_does_not_give_are_refused(model, inputs, change, message):
  _, text_ids, _ = inputs
  with pytest.raises(ValueError, match=f"^{message}"):
    model.encode_text(change(np.asarray(text_ids)))
