"""The official X-CLIP training recipe as a pure, jit-able step.

  from xclip_jax import train
  state = train.create_train_state(config, model, text_ids)  # experiment ConfigDict, XCLIPModel, (K, L) ids
  state, metrics = train.train_step(state, batch)             # {"video": (B, T, H, W, 3), "label": (B,) or (B, K)}

The recipe (microsoft/VideoX X-CLIP, utils/optimizer.py and main.py): AdamW (0.9, 0.98, eps 1e-8); the text tower and
`logit_scale` frozen and their class-text features encoded once; learning rate x10 for the message tokens, MIT and
prompts; no weight decay for 1-D parameters, biases and positional embeddings; timm's cosine schedule with linear
warm-up from 0, a floor of lr / 100 shared by all groups, stepped after each optimiser step (so step j uses the
schedule's value at j - 1); soft-target cross-entropy after Mixup/CutMix with label smoothing.
"""

from collections.abc import Mapping
import dataclasses
import functools
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from input_pipeline import mixup
from xclip_jax import model as model_lib
from xclip_jax import pretrained
from xclip_jax import sharding

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


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What the step needs besides arrays; static under jit."""

  apply_fn: Any
  tx: optax.GradientTransformation
  trainable: tuple[str, ...]
  num_classes: int
  schedule: Schedule
  accumulation_steps: int
  freeze_text: bool
  mixup_alpha: float
  cutmix_alpha: float
  mixup_switch_prob: float
  label_smoothing: float


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # the full parameter tree, as XCLIPModel.params
  opt_state: Any  # over the trainable parameters only: frozen ones have no optimiser state
  rng: jax.Array
  # Class texts: their features (K, D) while the text tower is frozen (encoded once), else token ids (K, L).
  text: jax.Array
  recipe: Recipe = flax.struct.field(pytree_node=False)


def split_params(params, trainable: tuple[str, ...]):
  """(trainable, frozen) nested trees of a parameter tree."""
  flat = sharding.flat_names(params)
  names = set(trainable)
  pick = lambda keep: flax.traverse_util.unflatten_dict(
    {k: v for k, v in flat.items() if (k in names) == keep}, sep="/"
  )
  return pick(True), pick(False)


def merge_params(trainable, frozen):
  return flax.traverse_util.unflatten_dict({**sharding.flat_names(frozen), **sharding.flat_names(trainable)}, sep="/")


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


def _recipe(config, model: pretrained.XCLIPModel, trainable: tuple[str, ...], tx, schedule: Schedule) -> Recipe:
  if config.batch_size % config.accumulation_steps:
    raise ValueError(
      f"batch_size {config.batch_size} is not divisible by accumulation_steps {config.accumulation_steps}"
    )
  return Recipe(
    apply_fn=model.module.apply,
    tx=tx,
    trainable=trainable,
    num_classes=config.num_classes,
    schedule=schedule,
    accumulation_steps=config.accumulation_steps,
    freeze_text=config.freeze_text,
    mixup_alpha=config.mixup,
    cutmix_alpha=config.cutmix,
    mixup_switch_prob=config.mixup_switch_prob,
    label_smoothing=config.label_smoothing,
  )


def create_train_state(
  config: ml_collections.ConfigDict, model: pretrained.XCLIPModel, text_ids, mesh: jax.sharding.Mesh | None = None
) -> TrainState:
  """The initial train state, laid out on `mesh` (default: from `config.mesh`) by the sharding rules.

  Frozen parameters get no optimiser state; with `freeze_text` the class texts are encoded here, once. The model's
  parameter buffers are donated to the state on a one-device mesh, so that the parameters are not held twice:
  afterwards read `state.params`, not `model.params`.
  """
  mesh = mesh or sharding.make_mesh(config.mesh)
  sharding.check_frames_divisible(config.num_frames, mesh)
  text_ids = np.asarray(text_ids, np.int32)
  if text_ids.ndim != 2 or text_ids.shape[0] != config.num_classes:
    raise ValueError(f"text_ids must be ({config.num_classes}, L) for config.num_classes, got {text_ids.shape}")
  names = sharding.flat_names(model.params)
  trainable = tuple(sorted(name for name in names if is_trainable(name, config.freeze_text)))
  schedule = Schedule.from_config(config)
  tx = make_optimizer(config, split_params(model.params, trainable)[0], schedule)
  recipe = _recipe(config, model, trainable, tx, schedule)
  # Unfrozen, the text tower runs at every step: on the ids up to the last end token (the same features, exactly).
  text = model.encode_text(text_ids) if config.freeze_text else jnp.asarray(model_lib.truncate_text_ids(text_ids))

  def init(params, text):
    return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      opt_state=tx.init(split_params(params, trainable)[0]),
      rng=jax.random.key_data(jax.random.key(config.seed)),
      text=text,
      recipe=recipe,
    )

  abstract = jax.eval_shape(init, model.params, text)
  shardings = state_shardings(abstract, mesh)
  # Donating lets one device hold the parameters once; XLA cannot alias a whole input buffer to a sharded output.
  donate = (0,) if mesh.size == 1 else ()
  return jax.jit(init, out_shardings=shardings, donate_argnums=donate)(model.params, text)


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Shardings of a (possibly abstract) train state: parameters and their optimiser state by the rules."""
  replicated = sharding.replicated(mesh)
  return state.replace(
    step=replicated,
    params=sharding.tree_shardings(state.params, mesh),
    opt_state=sharding.tree_shardings(state.opt_state, mesh),
    rng=replicated,
    text=replicated,
  )


def soft_cross_entropy(logits, soft_labels):
  """timm's SoftTargetCrossEntropy: mean over the batch of -sum(label * log_softmax)."""
  return jnp.mean(jnp.sum(-soft_labels * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1))


def _mix(recipe: Recipe, rng, video, labels, num_groups: int):
  """Mixup/CutMix with label smoothing within each of `num_groups` equal slices of the batch.

  The official code blends each GPU's batch on its own; slicing the batch the way it is sharded keeps the pairing
  on one device as well (no video crosses devices), with one draw per slice.
  """
  if recipe.mixup_alpha <= 0 and recipe.cutmix_alpha <= 0:
    return video, mixup.smooth_labels(labels, recipe.num_classes, recipe.label_smoothing)
  if video.shape[0] % num_groups:
    num_groups = 1
  grouped = lambda x: x.reshape(num_groups, x.shape[0] // num_groups, *x.shape[1:])
  blend = functools.partial(
    mixup.mixup_cutmix,
    num_classes=recipe.num_classes,
    mixup_alpha=recipe.mixup_alpha,
    cutmix_alpha=recipe.cutmix_alpha,
    switch_prob=recipe.mixup_switch_prob,
    label_smoothing=recipe.label_smoothing,
  )
  video, labels = jax.vmap(blend)(jax.random.split(rng, num_groups), grouped(video), grouped(labels))
  return video.reshape(-1, *video.shape[2:]), labels.reshape(-1, labels.shape[-1])


def _loss(trainable, frozen, recipe: Recipe, text, video, labels, rng):
  params = merge_params(trainable, frozen)
  variables = {"params": params}
  rngs = {"droppath": rng}
  if recipe.freeze_text:
    method = model_lib.XCLIP.logits_from_features
  else:
    method = model_lib.XCLIP.__call__
  logits = recipe.apply_fn(variables, video, text, deterministic=False, rngs=rngs, method=method)
  return soft_cross_entropy(logits, labels)


def _micro_batches(x, count: int):
  """(B, ...) -> (count, B / count, ...), micro-batch i taking every count-th example, so that each micro-batch
  is spread over the devices the batch is split over."""
  return jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)


def step_fn(state: TrainState, batch, num_mix_groups: int = 1, micro_batch_shardings=None):
  """One optimiser step (pure). batch["label"]: (B,) class ids (blended here) or (B, K) soft targets (used as is)."""
  recipe = state.recipe
  rng, mix_rng, drop_rng = jax.random.split(jax.random.wrap_key_data(state.rng), 3)
  video, labels = batch["video"], batch["label"]
  if labels.ndim == 1:
    video, labels = _mix(recipe, mix_rng, video, labels, num_mix_groups)
  trainable, frozen = split_params(state.params, recipe.trainable)
  grad_fn = jax.value_and_grad(_loss)
  if recipe.accumulation_steps == 1:
    loss, grads = grad_fn(trainable, frozen, recipe, state.text, video, labels, drop_rng)
  else:

    def accumulate(carry, micro):
      index, micro_video, micro_labels = micro
      loss, grads = grad_fn(
        trainable, frozen, recipe, state.text, micro_video, micro_labels, jax.random.fold_in(drop_rng, index)
      )
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    count = recipe.accumulation_steps
    zeros = (jnp.zeros([], jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
    micro = (jnp.arange(count), _micro_batches(video, count), _micro_batches(labels, count))
    if micro_batch_shardings is not None:
      # Without this constraint XLA's partitioner mis-splits the reshaped batch (wrong losses on 8 CPU devices).
      micro = (micro[0], *jax.lax.with_sharding_constraint(micro[1:], micro_batch_shardings))
    (loss, grads), _ = jax.lax.scan(accumulate, zeros, micro)
    loss, grads = jax.tree.map(lambda x: x / count, (loss, grads))
  updates, opt_state = recipe.tx.update(grads, state.opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  metrics = {
    "loss": loss,
    "lr": recipe.schedule(state.step),
    "grad_norm": optax.tree.norm(grads),
  }
  new_state = state.replace(
    step=state.step + 1,
    params=merge_params(trainable, frozen),
    opt_state=opt_state,
    rng=jax.random.key_data(rng),
  )
  return new_state, metrics


# The step as a plain jitted function (shardings follow the inputs'); the training loop jits `step_fn` with explicit
# shardings and a donated state instead (`make_sharded_step`).
train_step = jax.jit(step_fn)


def make_sharded_step(state: TrainState, mesh: jax.sharding.Mesh):
  """`step_fn` jitted for `mesh`: state laid out by the rules and donated, batch split over the batch axes and the
  videos' frames over `time`."""
  shardings = state_shardings(state, mesh)
  micro = lambda spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *spec))
  micro_batch_shardings = (micro(sharding.video_sharding(mesh).spec), micro(sharding.batch_sharding(mesh).spec))

  def step(state, batch):
    with sharding.activation_mesh(mesh):
      return step_fn(state, batch, sharding.num_batch_shards(mesh), micro_batch_shardings)

  batch_shardings = {"video": sharding.video_sharding(mesh), "label": sharding.batch_sharding(mesh)}
  return jax.jit(
    step,
    in_shardings=(shardings, batch_shardings),
    out_shardings=(shardings, sharding.replicated(mesh)),
    donate_argnums=0,
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
