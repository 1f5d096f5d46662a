"""Gradient accumulation, sharding, freezing and the step's inputs."""

import jax
import numpy as np
import pytest

from tests.fixtures import forced_devices
from tests.fixtures import tiny
from xclip_jax.parallel import sharding
from xclip_jax.train import optimizer
from xclip_jax.train import step as step_lib


def run_steps(config, batches, model=None):
  state = step_lib.create_train_state(config, model or tiny.model(), tiny.text_ids())
  for batch in batches:
    state, metrics = step_lib.train_step(state, batch)
  return jax.device_get(state.params), jax.device_get(metrics)


def test_accumulated_step_equals_the_full_batch_step():
  # Int labels exercise Mixup/CutMix before the split into micro-batches; the text tower trains, so its gradients
  # are accumulated too.
  batches = [tiny.batch(seed) for seed in range(2)]
  before = tiny.model().params
  full, full_metrics = run_steps(tiny.experiment_config(freeze_text=False), batches)
  accumulated, metrics = run_steps(tiny.experiment_config(freeze_text=False, accumulation_steps=4), batches)
  np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-5)
  tiny.assert_updates_close(before, accumulated, full)


def test_frozen_text_tower_keeps_its_values_and_has_no_optimiser_state():
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
