"""The official X-CLIP training step, pure and jit-able: Mixup/CutMix on device, loss, gradient, AdamW update.

  from xclip_jax.train import step as step_lib
  state = step_lib.create_train_state(config, model, text_ids)  # experiment ConfigDict, XCLIPModel, (K, L) ids
  state, metrics = step_lib.train_step(state, batch)  # {"video": (B, T, H, W, 3), "label": (B,) or (B, K)}

With the text tower frozen (the official recipe) the class texts are encoded once, into the state; the loss is timm's
soft-target cross-entropy after Mixup/CutMix with label smoothing. The optimiser and its parameter groups are
`xclip_jax.train.optimizer`.
"""

from collections.abc import Callable
import contextlib
import ctypes
import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xclip_jax import param_rules
from xclip_jax import pretrained
from xclip_jax.model import xclip
from xclip_jax.parallel import sharding
from xclip_jax.train import mixup
from xclip_jax.train import optimizer

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections (benchmarks.device_check)
  import ml_collections


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What the step needs besides arrays; static under jit."""

  apply_fn: Any
  tx: optax.GradientTransformation
  trainable: tuple[str, ...]
  num_classes: int
  schedule: optimizer.Schedule
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


def check_accumulation(batch_size: int, accumulation_steps: int):
  """Each optimiser step's batch splits into `accumulation_steps` micro-batches of the same size."""
  if batch_size % accumulation_steps:
    raise ValueError(
      f"config.batch_size={batch_size} is not divisible by config.accumulation_steps={accumulation_steps}"
    )


def _recipe(
  config, model: pretrained.XCLIPModel, trainable: tuple[str, ...], tx, schedule: optimizer.Schedule
) -> Recipe:
  check_accumulation(config.batch_size, config.accumulation_steps)
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
  config: "ml_collections.ConfigDict", model: pretrained.XCLIPModel, text_ids, mesh: jax.sharding.Mesh | None = None
) -> TrainState:
  """The initial train state, laid out on `mesh` (default: from `config.mesh`) by the sharding rules.

  Frozen parameters get no optimiser state; with `freeze_text` the class texts are encoded here, once. The model's
  parameter buffers are donated to the state on a one-device mesh, so that the parameters are not held twice:
  afterwards read `state.params`, not `model.params`.
  """
  _, create = plan_train_state(config, model, text_ids, mesh or sharding.make_mesh(config.mesh))
  return create()


def plan_train_state(
  config: "ml_collections.ConfigDict", model: pretrained.XCLIPModel, text_ids, mesh: jax.sharding.Mesh
) -> tuple[TrainState, Callable[[], TrainState]]:
  """(the train state as shapes, dtypes and shardings, a function creating it as `create_train_state` does).

  Only the class texts are encoded here (with `freeze_text`): the step can be compiled from the first
  (`compile_step`) before the state takes its memory, and neither the compiler's memory nor the state's comes on
  top of what encoding the texts takes for a while.
  """
  sharding.check_frames_divisible(config.num_frames, mesh)
  text_ids = np.asarray(text_ids, np.int32)
  if text_ids.ndim != 2 or text_ids.shape[0] != config.num_classes:
    raise ValueError(f"text_ids must be ({config.num_classes}, L) for config.num_classes, got {text_ids.shape}")
  rules = optimizer.trainable_rules(config.freeze_text)
  flags = param_rules.match(rules, sharding.flat_names(model.params), log="trainable")
  trainable = tuple(sorted(name for name, flag in flags.items() if flag))
  schedule = optimizer.Schedule.from_config(config)
  tx = optimizer.make_optimizer(config, split_params(model.params, trainable)[0], schedule)
  recipe = _recipe(config, model, trainable, tx, schedule)
  # Unfrozen, the text tower runs at every step: on the ids up to the last end token (the same features, exactly).
  text = model.encode_text(text_ids) if config.freeze_text else jnp.asarray(xclip.truncate_text_ids(text_ids))
  jax.block_until_ready(text)  # JAX computes asynchronously: what it frees is freed when it ends
  _release_freed_memory()

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
  shardings = state_shardings(abstract, mesh, log="sharding")

  def create():
    # Donating lets one device hold the parameters once; XLA cannot alias a whole input buffer to a sharded output.
    donate = (0,) if mesh.size == 1 else ()
    state = jax.block_until_ready(jax.jit(init, out_shardings=shardings, donate_argnums=donate)(model.params, text))
    _release_freed_memory()
    return state

  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings), create


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh, *, log: str | None = None) -> TrainState:
  """Shardings of a (possibly abstract) train state: parameters and their optimiser state by the rules (with `log`,
  logged for the parameters)."""
  replicated = sharding.replicated(mesh)
  return state.replace(
    step=replicated,
    params=sharding.tree_shardings(state.params, mesh, log=log),
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
  # As the official main.py: Mixup's alpha turns blending on; without it, label smoothing alone (CutMix too off).
  if recipe.mixup_alpha <= 0:
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
    method = xclip.XCLIP.logits_from_features
  else:
    method = xclip.XCLIP.__call__
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


def abstract_batch(batch_size: int, num_frames: int, input_size: int, mesh: jax.sharding.Mesh) -> dict:
  """The shapes, dtypes and shardings of training batches (`input_pipeline`'s, made global): {"video": (B, T, S, S, 3)
  float32, "label": (B,) int32}."""
  return {
    "video": jax.ShapeDtypeStruct(
      (batch_size, num_frames, input_size, input_size, 3), jnp.float32, sharding=sharding.video_sharding(mesh)
    ),
    "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding.batch_sharding(mesh)),
  }


def compile_step(step, state: TrainState, batch):
  """`step` (`make_sharded_step`) compiled for this state and batch (arrays or ShapeDtypeStructs: with
  `plan_train_state` and `abstract_batch`, before the state exists).

  Compiling a large program takes host memory for a while: on a CPU, compiling before the state is allocated keeps
  that from adding to the state's (for ViT-B/32's step, 0.5 to 0.9 GB more at the process's peak otherwise). What it
  frees, glibc keeps for reuse, but the step's buffers cannot reuse it (its temporaries are one large block): it is
  handed back to the system here.
  """
  compiled = step.lower(state, batch).compile()
  _release_freed_memory()
  return compiled


def _release_freed_memory():
  """Hands the memory glibc keeps for reuse back to the system."""
  with contextlib.suppress(AttributeError, OSError):  # not glibc (macOS, musl): nothing to hand back this way
    ctypes.CDLL(None).malloc_trim(0)
