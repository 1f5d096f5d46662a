"""Gradient accumulation, sharding, freezing and the step's inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import forced_devices
from tests.fixtures import tiny
from tests.train import official_blending
from xclip_jax.parallel import sharding
from xclip_jax.train import optimizer
from xclip_jax.train import step as step_lib

# Accumulated against full-batch updates after 3 steps: Adam divides each gradient entry by its own size, so
# summation-order rounding shows in entries near zero. Measured at most 5.9e-5 of an update's norm.
ACCUMULATION_TOLERANCE = 3e-4


def run_steps(config, batches, model=None):
  state = step_lib.create_train_state(config, model or tiny.model(), tiny.text_ids())
  for batch in batches:
    state, metrics = step_lib.train_step(state, batch)
  return jax.device_get(state.params), jax.device_get(metrics)


def record_blends(monkeypatch) -> list:
  """Makes `step_fn` (traced from now on) record what Mixup/CutMix hands the loss: [(videos, soft labels)] per step."""
  records, mix = [], step_lib._mix

  def recording_mix(*args):
    video, labels = mix(*args)
    jax.debug.callback(lambda v, y: records.append((np.asarray(v), np.asarray(y))), video, labels)
    return video, labels

  monkeypatch.setattr(step_lib, "_mix", recording_mix)
  return records


def _stand_in_loss(trainable, frozen, recipe, text, video, labels, rng):
  """A scalar of the blended videos and labels and every trainable parameter, without the model."""
  del frozen, recipe, text, rng
  weights = sum(jnp.sum(leaf) for leaf in jax.tree.leaves(trainable))
  return jnp.mean(video) * jnp.mean(labels) + 1e-3 * weights


@pytest.fixture(scope="module")
def class_id_runs():
  """Three steps on batches of class ids, the text tower trained, as one batch and as 4 micro-batches: for each,
  (parameters, last metrics, [(videos, soft labels) handed to the loss] per step)."""
  batches = [tiny.batch(seed) for seed in range(3)]
  runs = {}
  with pytest.MonkeyPatch.context() as monkeypatch:
    records = record_blends(monkeypatch)
    for accumulation_steps in (1, 4):
      params, metrics = run_steps(
        tiny.experiment_config(freeze_text=False, accumulation_steps=accumulation_steps), batches
      )
      jax.effects_barrier()
      runs[accumulation_steps] = params, metrics, records[:]
      records.clear()
  return batches, runs


def test_accumulated_step_equals_the_full_batch_step(class_id_runs):
  # Int labels exercise Mixup/CutMix before the split into micro-batches; the text tower trains, so its gradients
  # are accumulated too.
  _, runs = class_id_runs
  (full, full_metrics, full_blends), (accumulated, metrics, blends) = runs[1], runs[4]
  np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-5)
  tiny.assert_updates_close(tiny.model().params, accumulated, full, tolerance=ACCUMULATION_TOLERANCE)
  # Both blend the whole batch with the same draws, before any split into micro-batches.
  assert len(blends) == len(full_blends) == 3
  for (video, labels), (full_video, full_labels) in zip(blends, full_blends):
    np.testing.assert_array_equal(video, full_video)
    np.testing.assert_array_equal(labels, full_labels)


def test_train_step_blends_class_ids_as_the_official_code(class_id_runs):
  """train_step hands the loss the official blend of the batch (one device: partners from the whole batch): Mixup or
  CutMix, read back from the videos, with label smoothing 0.1 and CutMix's area-corrected lam; both methods occur."""
  batches, runs = class_id_runs
  kinds = []
  for batch, (video, labels) in zip(batches, runs[1][2], strict=True):
    kinds += official_blending.assert_official_blend(
      batch["video"], batch["label"], video, labels, tiny.NUM_CLASSES, 0.1, groups=[np.arange(len(video))]
    )
  assert {"mixup", "cutmix"} <= set(kinds), kinds


@pytest.mark.parametrize(
  "alphas, method", [({"mixup": 0.8, "cutmix": 0.0}, "mixup"), ({"mixup": 0.0, "cutmix": 1.0}, None)]
)
def test_mixups_alpha_turns_blending_on_as_in_the_official_code(alphas, method, monkeypatch):
  """Mixup alone with CutMix's alpha 0 (which the official blend cannot build: Beta(0, 0)); with Mixup's alpha 0, no
  blending whatever CutMix's, as the official main.py makes no blend then: label smoothing alone.

  The claim is what the step blends, not what the model makes of it: the model's loss is replaced by a stand-in on
  the blended batch, so that the step compiles in a second, not the model's forward and backward pass (10 s each)."""
  monkeypatch.setattr(step_lib, "_loss", _stand_in_loss)
  records = record_blends(monkeypatch)
  batches = [tiny.batch(seed) for seed in range(3)]
  run_steps(tiny.experiment_config(**alphas), batches)
  jax.effects_barrier()
  kinds = []
  for batch, (video, labels) in zip(batches, records, strict=True):
    kinds += official_blending.assert_official_blend(
      batch["video"], batch["label"], video, labels, tiny.NUM_CLASSES, 0.1, groups=[np.arange(len(video))]
    )
  assert set(kinds) == {method}, kinds


def test_frozen_text_tower_keeps_its_values_and_has_no_optimiser_state(monkeypatch):
  """The step's split into trainable and frozen parameters, under a stand-in loss of every trainable parameter (the
  model's forward and backward pass would compile for 10 s): that the model's own gradients reach the trainable ones
  and leave the frozen ones bit-identical is test_train_golden's, against the official training steps."""
  monkeypatch.setattr(step_lib, "_loss", _stand_in_loss)
  model = tiny.model()
  before = jax.device_get(sharding.flat_names(model.params))
  config = tiny.experiment_config()
  state = step_lib.create_train_state(config, model, tiny.text_ids())
  trainable_names = set(state.recipe.trainable)
  assert "logit_scale" not in trainable_names and "transformer/resblocks_0/attn/in_proj/weight" not in trainable_names
  assert "visual/transformer/resblocks_0/message_fc/weight" in trainable_names
  adam_state = state.opt_state[0]
  assert set(sharding.flat_names(adam_state.mu)) == trainable_names
  for seed in range(2):
    state, _ = step_lib.train_step(state, tiny.batch(seed))
  after = sharding.flat_names(jax.device_get(state.params))
  for name in before:
    if name in trainable_names:
      assert not np.array_equal(before[name], after[name]), name
    else:
      np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def test_unfrozen_text_trains_every_parameter():
  state = step_lib.create_train_state(tiny.experiment_config(freeze_text=False), tiny.model(), tiny.text_ids())
  assert set(state.recipe.trainable) == set(sharding.flat_names(state.params))
  assert state.text.dtype == np.int32  # token ids, encoded at every step, cut after the last end token
  assert state.text.shape == (tiny.NUM_CLASSES, 4)


def test_wrong_number_of_class_texts_is_refused():
  with pytest.raises(ValueError, match="num_classes"):
    step_lib.create_train_state(tiny.experiment_config(), tiny.model(), tiny.text_ids(3))


def test_schedule_without_steps_per_epoch_is_refused():
  with pytest.raises(ValueError, match="steps_per_epoch"):
    step_lib.create_train_state(tiny.experiment_config(steps_per_epoch=None), tiny.model(), tiny.text_ids())


def test_sharded_step_equals_the_single_device_step():
  assert "sharded step matches" in forced_devices.run_check("tests.train.sharded_step_check")


def test_new_modules_learn_at_their_multiple_of_the_learning_rate():
  params = {"visual": {"transformer": {"resblocks_0": {"message_fc": {"weight": np.ones((4, 4), np.float32)}}}}}
  params["visual"]["transformer"]["resblocks_0"]["mlp"] = {"c_fc": {"weight": np.ones((4, 4), np.float32)}}

  def first_update(multiplier):
    config = tiny.experiment_config(new_modules_lr_multiplier=multiplier)
    tx = optimizer.make_optimizer(config, params, optimizer.Schedule.from_config(config))
    updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
    return {name: float(np.abs(update).mean()) for name, update in sharding.flat_names(updates).items()}

  # Adam's first step moves every entry by about the learning rate (plus decay), so the update sizes show the rates.
  official, slow = first_update(10.0), first_update(2.0)
  new, old = "visual/transformer/resblocks_0/message_fc/weight", "visual/transformer/resblocks_0/mlp/c_fc/weight"
  np.testing.assert_allclose(official[new] / slow[new], 5.0, rtol=1e-5)
  np.testing.assert_allclose(official[old], slow[old], rtol=1e-6)
  assert official[old] > 0
