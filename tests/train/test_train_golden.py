"""The train step reproduces five optimiser steps of the official recipe (../shared/golden/train_tiny)."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from xclip_jax import param_rules
from xclip_jax import pretrained
from xclip_jax.train import optimizer
from xclip_jax.train import step as step_lib
from xclip_jax.weights import official


@pytest.fixture(scope="module")
def golden_train(golden_dir):
  directory = golden_dir.parent / "train_tiny"
  if not directory.is_dir():
    pytest.skip(f"reference training steps not found at {directory}")
  meta = json.loads((directory / "meta.json").read_text())
  return meta, dict(np.load(directory / "steps.npz")), dict(np.load(directory / "params_after.npz"))


def golden_config(meta) -> ml_collections.ConfigDict:
  config = common.experiment_config()
  config.lr = meta["lr"]
  config.weight_decay = meta["weight_decay"]
  config.epochs = meta["epochs"]
  config.warmup_epochs = meta["warmup_epochs"]
  config.steps_per_epoch = meta["steps_per_epoch"]
  config.batch_size = meta["batch"]
  config.accumulation_steps = meta["accumulation_steps"]
  config.num_classes = 5
  return config


# Trained with each attention implementation that runs on CPU: the hand-written core and jax.nn.dot_product_attention's
# XLA one.
@pytest.fixture(scope="module", params=["hand", "xla"])
def trained(request, golden_dir, golden_train):
  meta, steps, _ = golden_train
  model = pretrained.load_pretrained(golden_dir / "xclip_official.pth", attention=request.param)
  before = official.official_from_params(model.params)
  state = step_lib.create_train_state(golden_config(meta), model, steps["text"])
  history = []
  for i in range(meta["steps"]):
    state, metrics = step_lib.train_step(state, {"video": steps["video"][i], "label": steps["soft_label"][i]})
    history.append(jax.device_get(metrics))
  return before, official.official_from_params(state.params), history, state


def test_frozen_parameters_stay_bit_identical(golden_train, trained):
  meta, _, _ = golden_train
  before, after, _, state = trained
  trainable = param_rules.match(optimizer.trainable_rules(True), [official.flax_name(n, v) for n, v in before.items()])
  assert set(meta["frozen"]) == {
    name for name, value in before.items() if not trainable[official.flax_name(name, value)]
  }
  for name in meta["frozen"]:
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_groups_match_the_official_optimiser(golden_train, trained):
  meta, _, _ = golden_train
  before, _, _, state = trained
  names = {name: official.flax_name(name, before[name]) for name in meta["groups"]}
  assert sorted(names.values()) == sorted(state.recipe.trainable)
  multipliers = param_rules.match(
    optimizer.lr_multiplier_rules(golden_config(meta).new_modules_lr_multiplier), names.values()
  )
  decays = optimizer.decay_mask({names[name]: before[name] for name in meta["groups"]})
  for name, group in meta["groups"].items():
    assert multipliers[names[name]] == group["lr_mult"], name
    assert decays[names[name]] == (group["weight_decay"] > 0), name


# The README claims every compared update within 8e-5 relative (measured 7.8e-5 with the hand-written attention,
# 7.7e-5 with XLA's); the golden's own acceptance bound is 1e-3 (../shared/golden/README.md).
UPDATE_TOLERANCE = 1e-4


def test_every_compared_update_matches_the_official_one(golden_train, trained):
  meta, _, after_golden = golden_train
  before, after, _, _ = trained
  worst = 0.0
  for piece in meta["slices"]:
    name, (start, stop) = piece["name"], piece["rows"]
    ours = (after[name] - before[name])[start:stop]
    theirs = (after_golden[name] - before[name])[start:stop]
    if piece["compare"]:
      error = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
      worst = max(worst, error)
      assert error < UPDATE_TOLERANCE, (name, start, stop, error)
    else:
      # Zero gradient in exact arithmetic: Adam moves it by at most about lr per step, plus the decay.
      bound = 5 * sum(meta["lr"] * 10 for _ in range(meta["steps"])) * (1 + np.abs(before[name][start:stop]).max())
      assert np.abs(ours).max() <= bound, (name, start, stop)
  print(f"largest relative error of a compared update: {worst:.2e}")


def test_losses_and_learning_rates_of_every_step(golden_train, trained):
  meta, steps, _ = golden_train
  _, _, history, state = trained
  # Measured 1.8e-7 relative.
  np.testing.assert_allclose([m["loss"] for m in history], steps["loss"], rtol=1e-5)
  np.testing.assert_allclose([m["lr"] for m in history], steps["lr"], rtol=1e-6, atol=1e-12)
  lr_x10 = [state.recipe.schedule(i, 10.0) for i in range(5)]
  np.testing.assert_allclose(lr_x10, steps["lr_x10"], rtol=1e-6, atol=1e-12)
