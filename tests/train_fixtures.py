"""A tiny X-CLIP and experiment config for fast training tests."""

import ml_collections
import numpy as np

from configs import common
from xclip_jax import model as model_lib
from xclip_jax import pretrained
from xclip_jax import sharding

TINY_ARCH = dict(
  embed_dim=32,
  image_resolution=32,
  vision_layers=2,
  vision_width=64,
  vision_patch_size=16,
  transformer_width=64,
  transformer_heads=1,
  transformer_layers=1,
  num_frames=2,
  prompts_layers=1,
)
NUM_CLASSES = 4


def tiny_model(seed: int = 0, **overrides) -> pretrained.XCLIPModel:
  return pretrained.from_config(model_lib.XCLIPConfig(**{**TINY_ARCH, **overrides}), seed=seed)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  config = common.experiment_config()
  config.num_classes = NUM_CLASSES
  config.num_frames = TINY_ARCH["num_frames"]
  config.input_size = TINY_ARCH["image_resolution"]
  config.lr = 1e-3
  config.weight_decay = 0.05
  config.epochs = 2
  config.warmup_epochs = 0  # every step moves the parameters (warm-up starts from a learning rate of 0)
  config.steps_per_epoch = 2
  config.batch_size = 8
  config.update(overrides)
  return config


def text_ids(num_classes: int = NUM_CLASSES) -> np.ndarray:
  ids = np.zeros((num_classes, 77), np.int32)
  ids[:, 0] = 49406
  ids[:, 1] = 400 + np.arange(num_classes)
  ids[:, 2] = 49407
  return ids


def batch(seed: int, batch_size: int = 8, soft: bool = False) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  video = rng.normal(size=(batch_size, TINY_ARCH["num_frames"], 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  if soft:
    labels = rng.dirichlet(np.ones(NUM_CLASSES), batch_size).astype(np.float32)
  return {"video": video, "label": labels}


def assert_updates_close(before, ours, theirs, tolerance: float = 1e-3):
  """Each parameter's update (after - before) agrees with the reference update to `tolerance`, relative (Frobenius).

  Key biases are left out: softmax ignores them, so their gradient is zero in exact arithmetic and Adam turns
  rounding noise into full-size steps in any implementation.
  """
  before, ours, theirs = (sharding.flat_names(tree) for tree in (before, ours, theirs))
  assert ours.keys() == theirs.keys() == before.keys()
  for name in before:
    ours_update, theirs_update = np.asarray(ours[name]) - before[name], np.asarray(theirs[name]) - before[name]
    if name.endswith("in_proj/bias"):
      third = len(ours_update) // 3
      ours_update, theirs_update = (np.delete(u, np.s_[third : 2 * third]) for u in (ours_update, theirs_update))
    scale = np.linalg.norm(theirs_update)
    error = np.linalg.norm(ours_update - theirs_update)
    assert error <= tolerance * scale + 1e-9, (name, error, scale)
