"""The experiment configs: official defaults, variants by argument, locked, and the fields users rely on."""

import importlib
import re

import pytest

from input_pipeline import subsets

FIELDS = (
  "lr",
  "weight_decay",
  "epochs",
  "warmup_epochs",
  "steps_per_epoch",
  "batch_size",
  "accumulation_steps",
  "freeze_text",
  "attention",
  "mode",
  "init.clip",
  "init.checkpoint",
)


def load(name: str, arg: str = ""):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", ["k400", "k600", "hmdb51", "ucf101", "zero_shot"])
def test_every_config_has_the_documented_fields_and_is_locked(name):
  config = load(name)
  for field in FIELDS:
    target = config
    for part in field.split("."):
      target = target[part]
  with pytest.raises(AttributeError, match="config is locked"):
    config.learning_rate = 1.0
  with pytest.raises(AttributeError, match="config is locked"):
    config.init.clipp = "x"


def test_fully_supervised_defaults_are_the_official_ones():
  config = load("k400", "arch=ViT-B/16,frames=16")
  assert (config.arch, config.num_frames, config.num_classes) == ("ViT-B/16", 16, 400)
  assert (config.batch_size, config.epochs, config.warmup_epochs, config.lr, config.weight_decay) == (
    256,
    30,
    5,
    8e-6,
    1e-3,
  )
  assert (config.label_smoothing, config.mixup, config.cutmix, config.mixup_switch_prob) == (0.1, 0.8, 1.0, 0.5)
  assert config.freeze_text and config.mode == "train" and config.steps_per_epoch is None
  assert (config.final_eval_clips, config.final_eval_crops) == (4, 3)
  assert load("k600").num_classes == 600


def test_large_models_use_their_resolution_and_rematerialise():
  config = load("k400", "arch=ViT-L/14-336,frames=8")
  assert config.input_size == 336 and config.remat


@pytest.mark.parametrize("name, classes", [("hmdb51", 51), ("ucf101", 101)])
def test_few_shot_defaults(name, classes):
  config = load(name, "shots=8")
  assert (config.data.shots, config.num_classes, config.num_frames) == (8, classes, 32)
  assert (config.epochs, config.lr, config.batch_size) == (50, 2e-6, 64)
  assert (config.final_eval_clips, config.final_eval_crops) == (1, 1)  # single view, as the official runs end


def test_zero_shot_evaluates_three_splits_of_each_dataset():
  config = load("zero_shot")
  assert config.num_frames == 32 and config.num_classes == 400
  assert len(config.zero_shot.hmdb51.val_files) == len(config.zero_shot.ucf101.val_files) == 3
  # Kinetics-600: the published splits, shipped with input_pipeline.
  assert config.zero_shot.k600_novel.class_splits == str(subsets.KINETICS600_ZERO_SHOT_SPLITS)


def test_zero_shot_evaluates_the_sets_its_argument_names():
  assert set(load("zero_shot", "sets=ucf101+k600_novel").zero_shot) == {"ucf101", "k600_novel"}
  with pytest.raises(ValueError, match=re.escape("config argument sets='ucf101+kinetics': unknown 'kinetics'; known")):
    load("zero_shot", "sets=ucf101+kinetics")


def test_small_switch_makes_a_cpu_sized_run():
  config = load("k400", "small=True")
  assert config.batch_size <= 4 and config.steps_per_epoch and config.epochs == 1


@pytest.mark.parametrize(
  "arg, error",
  [
    ("arch=ViT-H/14", "unknown architecture"),
    ("frames=eight", "not of type int"),
    ("shot=2", "unknown"),
    # The last one was taken, silently.
    ("frames=8,frames=16", "config argument 'frames' is given twice (in 'frames=8,frames=16')"),
  ],
)
def test_malformed_arguments_are_refused(arg, error):
  with pytest.raises(ValueError, match=re.escape(error)):
    load("k400", arg)


@pytest.mark.parametrize(
  "arg, error",
  [
    # 0 would train on every training video with the few-shot recipe, silently.
    ("shots=0", "config argument shots=0 must be at least 1"),
    ("split=4", "config argument split=4 must be 1, 2 or 3"),
    ("split=0", "config argument split=0 must be 1, 2 or 3"),
  ],
)
@pytest.mark.parametrize("name", ["hmdb51", "ucf101"])
def test_few_shot_arguments_out_of_range_are_refused(name, arg, error):
  with pytest.raises(ValueError, match=error):
    load(name, arg)
