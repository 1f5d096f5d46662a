"""The official X-CLIP optimiser: parameter groups (trainable, learning-rate multiplier, weight decay), AdamW, schedule.

The recipe (microsoft/VideoX X-CLIP, utils/optimizer.py and main.py): AdamW (0.9, 0.98, eps 1e-8); the text tower and
`logit_scale` frozen; learning rate x10 for the message tokens, MIT and prompts; no weight decay for 1-D parameters,
biases and positional embeddings; timm's cosine schedule with linear warm-up from 0, a floor of lr / 100 shared by all
groups, stepped after each optimiser step (so step j uses the schedule's value at j - 1).
"""

from collections.abc import Mapping
import dataclasses
from typing import TYPE_CHECKING

import flax
import jax.numpy as jnp
import numpy as np
import optax

from xclip_jax import param_rules
from xclip_jax.parallel import sharding

if TYPE_CHECKING:  # annotations only: the optimiser runs without ml_collections (benchmarks.device_check)
  import ml_collections

# The official keyword rules (utils/optimizer.py: fix_text, the groups of build_optimizer, set_weight_decay) as
# full-match rules over Flax names (`xclip_jax.param_rules`). Each keyword names whole modules: "visual." the video
# encoder `visual/`, "mit" the MIT `mit/`, "prompts" `prompts_generator/`, `prompts_visual_ln/` and
# `prompts_visual_proj`, "message_" the CCT blocks' `message_fc`, `message_ln` and `message_attn`.

# With `freeze_text` (officially fix_text) only the video encoder, the MIT and the prompt modules train: the text
# tower and `logit_scale` stay as loaded.
TRAINABLE_WITH_FROZEN_TEXT = (
  (r"visual/.*", True),
  (r"mit/.*", True),
  (r"prompts_.*", True),
  (r".*", False),
)
TRAINABLE_ALL = ((r".*", True),)

# No weight decay (officially set_weight_decay) for biases, for `positional_embedding` (XCLIP.no_weight_decay_keywords)
# and for every 1-D parameter, named here: LayerNorm gains, the class embedding and the prompt generator's alpha.
# `decay_mask` checks that no 1-D parameter is left decaying.
WEIGHT_DECAY = (
  (r".*/bias", False),
  (r".*/scale", False),
  (r"(.*/)?positional_embedding", False),
  (r"visual/class_embedding", False),
  (r"prompts_generator/alpha", False),
  (r".*", True),
)

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.98, 1e-8
# The cosine schedule's floor, as a fraction of the base learning rate (the official lr_min = TRAIN.LR / 100).
MIN_LR_FRACTION = 0.01


def trainable_rules(freeze_text: bool) -> param_rules.Rules:
  return TRAINABLE_WITH_FROZEN_TEXT if freeze_text else TRAINABLE_ALL


def lr_multiplier_rules(new_modules_multiplier: float) -> param_rules.Rules:
  """The modules X-CLIP adds to CLIP learn at `new_modules_multiplier` times the base rate (officially 10)."""
  return (
    (r"visual/transformer/resblocks_\d+/message_.*", new_modules_multiplier),
    (r"mit/.*", new_modules_multiplier),
    (r"prompts_.*", new_modules_multiplier),
    (r".*", 1.0),
  )


def decay_mask(params, *, log: str | None = None) -> dict[str, bool]:
  """{name: whether it decays} over a tree of parameters (arrays or ShapeDtypeStructs), by `WEIGHT_DECAY`."""
  flat = sharding.flat_names(params)
  mask = param_rules.match(WEIGHT_DECAY, flat, log=log)
  decaying_1d = [name for name, decays in mask.items() if decays and np.ndim(flat[name]) == 1]
  if decaying_1d:
    raise ValueError(f"1-D parameters {decaying_1d} would decay; the official recipe never decays 1-D parameters")
  return mask


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
  config: "ml_collections.ConfigDict", trainable_params, schedule: Schedule
) -> optax.GradientTransformation:
  """AdamW with the official groups, over a tree of the trainable parameters; logs which rule set each group."""
  mask = decay_mask(trainable_params, log="weight decay")
  multipliers = param_rules.match(
    lr_multiplier_rules(config.new_modules_lr_multiplier),
    sharding.flat_names(trainable_params),
    log="learning-rate multiplier",
  )
  return optax.chain(
    optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS),
    # Decoupled decay, scaled by the group's learning rate below, as torch.optim.AdamW.
    optax.add_decayed_weights(config.weight_decay, mask=flax.traverse_util.unflatten_dict(mask, sep="/")),
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
  for name, multiplier in param_rules.match(lr_multiplier_rules(new_modules_multiplier), trainable).items():
    group = f"lr_x{multiplier:g}"
    counts[group] = counts.get(group, 0) + sizes[name]
  return counts
