"""The official X-CLIP optimiser: parameter groups (trainable, learning-rate multiplier, weight decay), AdamW, schedule.

The recipe (microsoft/VideoX X-CLIP, utils/optimizer.py and main.py): AdamW (0.9, 0.98, eps 1e-8); the text tower and
`logit_scale` frozen; learning rate x10 for the message tokens, MIT and prompts; no weight decay for 1-D parameters,
biases and positional embeddings; timm's cosine schedule with linear warm-up from 0, a floor of lr / 100 shared by all
groups, stepped after each optimiser step (so step j uses the schedule's value at j - 1).
"""

from collections.abc import Mapping
import dataclasses
import re

import flax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xclip_jax.parallel import sharding

# Rules over '/'-joined parameter names (`visual/transformer/resblocks_0/message_fc/weight`), one place each. They
# are the official keyword rules rewritten for Flax names (official `visual.` is `visual/` here).
# With `freeze_text`, only these are trained: the video encoder, the MIT and the prompt modules.
TRAINABLE_WITH_FROZEN_TEXT = r"^visual/|mit|prompts"
# The modules X-CLIP adds to CLIP learn at `config.new_modules_lr_multiplier` times the base rate (officially 10);
# every other parameter at the base rate.
NEW_MODULES = r"message_|mit|prompts"
# No weight decay for these names, nor for any 1-D parameter (LayerNorms, biases, class embedding).
NO_WEIGHT_DECAY = r"/bias$|positional_embedding"

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.98, 1e-8
# The cosine schedule's floor, as a fraction of the base learning rate (the official lr_min = TRAIN.LR / 100).
MIN_LR_FRACTION = 0.01


def is_trainable(name: str, freeze_text: bool) -> bool:
  return not freeze_text or re.search(TRAINABLE_WITH_FROZEN_TEXT, name) is not None


def lr_multiplier(name: str, new_modules_multiplier: float) -> float:
  return new_modules_multiplier if re.search(NEW_MODULES, name) else 1.0


def has_weight_decay(name: str, shape: tuple[int, ...]) -> bool:
  return len(shape) != 1 and re.search(NO_WEIGHT_DECAY, name) is None


def learning_rate(step, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int):
  """timm's CosineLRScheduler (warmup_lr_init=0, cycle_limit=1, t in steps) as the official loop steps it.

  The official loop calls `step_update` after each optimiser step, so optimiser step j runs with the schedule at
  t = j - 1, and step 0 with the warm-up's start (0); with no warm-up, step 0 uses the base rate.
  """
  t = jnp.maximum(jnp.asarray(step, jnp.float32) - 1.0, 0.0)
  warmup = base_lr * t / max(warmup_steps, 1)
  cosine = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(jnp.pi * t / total_steps))
  return jnp.where(t < warmup_steps, warmup, jnp.where(t < total_steps, cosine, min_lr))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The official schedule of a run: `schedule(step, multiplier)` is the rate of a group with that lr multiplier."""

  base_lr: float
  min_lr: float
  warmup_steps: int
  total_steps: int

  @classmethod
  def from_config(cls, config) -> "Schedule":
    if not config.steps_per_epoch:
      raise ValueError("config.steps_per_epoch must be set (train_and_evaluate derives it from the data size)")
    total = int(config.epochs * config.steps_per_epoch)
    if total <= 0:
      raise ValueError(
        f"the schedule has {total} steps (epochs={config.epochs}, steps_per_epoch={config.steps_per_epoch})"
      )
    warmup = int(config.warmup_epochs * config.steps_per_epoch)
    return cls(config.lr, config.lr * MIN_LR_FRACTION, warmup, total)

  def __call__(self, step, multiplier: float = 1.0):
    return learning_rate(step, self.base_lr * multiplier, self.min_lr, self.warmup_steps, self.total_steps)


def _scale_by_group_learning_rates(schedule, multipliers: Mapping[str, float]) -> optax.GradientTransformation:
  """Scales each update by -lr(step) of its group; groups differ by base rate but share the floor, as officially."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    rates = {m: schedule(state.count, m) for m in set(multipliers.values())}
    flat = sharding.flat_names(updates)
    scaled = {name: -rates[multipliers[name]] * value for name, value in flat.items()}
    return flax.traverse_util.unflatten_dict(scaled, sep="/"), optax.ScaleByScheduleState(
      count=optax.safe_increment(state.count)
    )

  return optax.GradientTransformation(init, update)


def make_optimizer(
  config: ml_collections.ConfigDict, trainable_params, schedule: Schedule
) -> optax.GradientTransformation:
  """AdamW with the official groups, over a tree of the trainable parameters."""
  flat = sharding.flat_names(trainable_params)
  decay_mask = flax.traverse_util.unflatten_dict(
    {name: has_weight_decay(name, tuple(np.shape(value))) for name, value in flat.items()}, sep="/"
  )
  multipliers = {name: lr_multiplier(name, config.new_modules_lr_multiplier) for name in flat}
  return optax.chain(
    optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS),
    # Decoupled decay, scaled by the group's learning rate below, as torch.optim.AdamW.
    optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
    _scale_by_group_learning_rates(schedule, multipliers),
  )


def count_parameters(params, trainable: tuple[str, ...], new_modules_multiplier: float) -> dict[str, int]:
  """Totals for the start-of-run overview: all, trainable, frozen, and per learning-rate group."""
  flat = sharding.flat_names(params)
  sizes = {name: int(np.prod(np.shape(value))) for name, value in flat.items()}
  names = set(trainable)
  counts = {
    "total": sum(sizes.values()),
    "trainable": sum(size for name, size in sizes.items() if name in names),
  }
  counts["frozen"] = counts["total"] - counts["trainable"]
  for name in trainable:
    group = f"lr_x{lr_multiplier(name, new_modules_multiplier):g}"
    counts[group] = counts.get(group, 0) + sizes[name]
  return counts
