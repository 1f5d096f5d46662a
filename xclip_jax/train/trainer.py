"""`train_and_evaluate(config, workdir)`: fine-tuning with resumable checkpoints, metrics, and the final evaluation.

Rerunning the same command resumes from the newest checkpoint in `workdir` that can be read (newer, damaged ones are
set aside as checkpoints/STEP.damaged), with any number of processes (the data position is global); SIGTERM saves one
and exits cleanly. With several processes, every process runs this and process 0 writes the metrics and JSON files.
`workdir` may be on cloud storage (gs://...).
What lands in workdir:
  checkpoints/   orbax checkpoints of the train state and data position (the last `keep_checkpoints`)
  best/          the best model so far by validation top-1, as an xclip-jax checkpoint (`python -m xclip_jax.convert
                 WORKDIR/best out.pth --to=official` exports it), with best.json
  eval_results.json, and TensorBoard event files of the metrics
  config.json    the run's resolved config and its model's architecture: a rerun that resumes its checkpoints with
                 another architecture is refused, one with other config values is warned about
  training_curves.png, confusion_matrix.png   pictures of the metrics and of the final evaluation (xclip_jax.evaluation.report)
A config with a `demo` field first writes its data to WORKDIR/demo_data (input_pipeline.demo_data).
"""

import collections
import contextlib
import json
import logging
import math
import os
import re
import time

from clu import metric_writers
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from input_pipeline import annotations
from input_pipeline import datasets
from input_pipeline import demo_data
from input_pipeline import video_dataset
from xclip_jax import console
from xclip_jax import paths
from xclip_jax import pretrained
from xclip_jax.evaluation import evaluate
from xclip_jax.evaluation import report
from xclip_jax.evaluation import zero_shot
from xclip_jax.model import config as model_config
from xclip_jax.model import tokenizer
from xclip_jax.parallel import distributed
from xclip_jax.parallel import sharding
from xclip_jax.train import checkpoints
from xclip_jax.train import optimizer
from xclip_jax.train import run_lock
from xclip_jax.train import step as step_lib
from xclip_jax.weights import native

RESULTS_FILE = "eval_results.json"
CONFIG_FILE = native.WORKDIR_RECORD
# Config fields that change how a run is carried out, not what it trains: a resumed run may change them unwarned.
_NOT_COMPARED = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_every_epochs",
  "eval_batch_size",
  "mesh.",
  "remat",
  "attention",
)
# Config fields that decide which parameters the optimiser state holds: checkpoints of another value cannot be read.
_STATE_FIELDS = ("freeze_text",)
# The least value of each config number that a run reads as a count (at least 1) or a rate or duration (at least 0).
_AT_LEAST = {
  "batch_size": 1,
  "eval_batch_size": 1,
  "accumulation_steps": 1,
  "num_frames": 1,
  "final_eval_clips": 1,
  "keep_checkpoints": 1,
  "lr": 0,
  "weight_decay": 0,
  "new_modules_lr_multiplier": 0,
  "warmup_epochs": 0,
  "mixup": 0,
  "cutmix": 0,
}
# numpy's and JAX's random generators both take these seeds.
_SEEDS = 2**32


def load_model(config: ml_collections.ConfigDict) -> pretrained.XCLIPModel:
  """The model to start from: `init.checkpoint` (X-CLIP), `init.clip` (CLIP), or `arch` (or the architecture `model`
  gives, as configs/demo.py does) initialised at random. `check_config` has checked what the config alone decides."""
  return _load_model(config)[0]


def _load_model(config: ml_collections.ConfigDict) -> tuple[pretrained.XCLIPModel, dict]:
  """`load_model`'s model, and where mode=eval's came from, for the results' `evaluated` record: the checkpoint, and
  the frames its MIT temporal position embedding was interpolated from (None: not interpolated)."""
  path = _init_path(config)
  source = {"checkpoint": None, "frames_interpolated_from": None}
  if path:
    field = "init.checkpoint" if config.init.checkpoint else "init.clip"
    datasets.check_exists(path, field)
    source["checkpoint"] = str(paths.absolute(path))
    # mode=eval reads the model at its own frames first, to tell whether they are interpolated.
    num_frames = None if config.mode == "eval" else config.num_frames
    model = pretrained.load_pretrained(path, num_frames=num_frames, **_run_options(config))
    if config.mode == "eval" and not model.xclip_modules_trained:
      raise ValueError(
        f"mode=eval evaluates a trained X-CLIP, but {field} {path} is a CLIP model, whose message tokens, MIT and "
        "prompt generator are untrained: set --config.init.checkpoint to an X-CLIP checkpoint, or train"
      )
    if model.config.num_frames != config.num_frames:  # mode=eval: as load_pretrained(path, config.num_frames) does
      source["frames_interpolated_from"] = model.config.num_frames
      model = model.with_frames(config.num_frames)
    arch = _arch_of(model.config)
    if config.arch and arch != config.arch:
      raise ValueError(f"config.arch is {config.arch} but {field} {path} holds a {arch or 'different'} model")
  else:
    architecture = _architecture(config)
    if "model" in config:  # a config made to be trained from scratch (configs/demo.py) needs no warning
      logging.info("Training %s from a random initialisation.", architecture)
    else:
      logging.warning("No init.clip or init.checkpoint: training %s from a random initialisation.", architecture)
    model = pretrained.from_config(architecture, seed=config.seed)
  _check_input_size(config, model.config)
  return model, source


def _architecture(config: ml_collections.ConfigDict) -> model_config.XCLIPConfig | None:
  """The model's architecture as far as the config alone gives it: with an init checkpoint, the backbone `arch` names
  (the checkpoint must hold it), or None for arch "" (whatever it holds); without, the random model's (`model`, as
  configs/demo.py gives, or the backbone `arch` names)."""
  if _init_path(config) and not config.arch:
    return None
  if "model" in config and not _init_path(config):
    return model_config.XCLIPConfig(**config.model.to_dict(), num_frames=config.num_frames, **_run_options(config))
  return model_config.preset(config.arch, num_frames=config.num_frames, **_run_options(config))


def _init_path(config: ml_collections.ConfigDict) -> str | None:
  """The checkpoint the model starts from (init.checkpoint or init.clip), None for a random initialisation."""
  return config.init.checkpoint or config.init.clip


def _run_options(config: ml_collections.ConfigDict) -> dict:
  """The model's run options, from the config fields of the same names: compared as config fields on resuming (a run
  may resume in another dtype, or with remat to save memory)."""
  return {name: config[name] for name in model_config.RUN_OPTIONS}


def _check_input_size(config: ml_collections.ConfigDict, architecture: model_config.XCLIPConfig):
  if architecture.image_resolution != config.input_size:
    raise ValueError(
      f"config.input_size is {config.input_size} but the model takes {architecture.image_resolution}px frames"
    )


def _arch_of(architecture: model_config.XCLIPConfig) -> str | None:
  """The preset name of a model's CLIP backbone, if it is one."""
  for name in model_config.PRESETS:
    backbone = model_config.preset(name, num_frames=architecture.num_frames)
    if all(
      getattr(backbone, f) == getattr(architecture, f)
      for f in ("vision_width", "vision_layers", "vision_patch_size", "image_resolution", "embed_dim")
    ):
      return name
  return None


def _resolved(config: ml_collections.ConfigDict, experiment: datasets.Experiment) -> ml_collections.ConfigDict:
  """A copy with steps_per_epoch derived from the data (official: len(train_loader), incomplete batches dropped)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.steps_per_epoch is None:
    config.steps_per_epoch = experiment.num_train_videos // config.batch_size
    if not config.steps_per_epoch:
      raise ValueError(f"{experiment.num_train_videos} training videos do not fill one batch of {config.batch_size}")
  return config


class ConfigError(ValueError):
  """A config value that cannot make a run, found by `check_config` before anything is written: a mistake on the
  command line, which xclip_jax.main tells as one (one `error:` line, exit status 2), not an error in the run."""


def check_config(config: ml_collections.ConfigDict, workdir=None):
  """Refuses a config value that cannot make a run, naming the field, before anything is written: left to the run it
  would fail far from its cause (a division by zero), or train wrongly (a negative learning rate). With `workdir`,
  also one that would write into the checkpoint the model is read from."""
  try:
    _check_config_values(config)
    if workdir is not None:
      _check_workdir_outside_the_model(config, workdir)
  except (ValueError, OSError) as error:  # OSError: a local init file that does not exist
    raise ConfigError(str(error)) from error


def _check_workdir_outside_the_model(config: ml_collections.ConfigDict, workdir):
  """Refuses a workdir that is the checkpoint folder the model is read from (init.checkpoint, init.clip), or inside
  it: the run's results and logs would be written among its files, where a checkpoint folder holds none (an xclip-jax
  one could no longer be saved over). A training workdir is the exception: it holds results beside its checkpoints/
  and best/, so it may be its own init.checkpoint (mode=eval of its final model); only those two are refused."""
  for field in ("checkpoint", "clip"):
    model = config.init[field]
    where = paths.within(workdir, model) if model else None
    if where is None:
      continue
    model_path = epath.Path(model)
    if native.is_workdir(model_path) and not native.is_checkpoint(model_path):  # as load_pretrained reads it
      for name, what in ((native.WORKDIR_BEST, "best model"), (native.WORKDIR_CHECKPOINTS, "checkpoints")):
        inside = paths.within(workdir, model_path / name)
        if inside is not None:
          raise ValueError(
            f"the workdir {workdir} is {inside}{model_path / name}, the {what} of the "
            f"training workdir config.init.{field}={model}: the run would write its results and logs among them; "
            f"give another --workdir ({model} itself may be one)"
          )
    else:
      raise ValueError(
        f"the workdir {workdir} is {where}the checkpoint config.init.{field}={model}: the run would "
        "write its results and logs among the checkpoint's files; give another --workdir"
      )


def _check_config_values(config: ml_collections.ConfigDict):
  if config.mode not in ("train", "eval"):
    raise ValueError(f"config.mode must be 'train' or 'eval', got {config.mode!r}")
  for field, least in _AT_LEAST.items():
    if not least <= config[field] < math.inf:  # NaN too
      raise ValueError(f"config.{field}={config[field]!r} must be a finite number of at least {least}")
  if not 0 < config.epochs < math.inf:
    raise ValueError(f"config.epochs={config.epochs!r} must be a finite number more than 0")
  if config.warmup_epochs > config.epochs:  # the learning rate would never reach config.lr
    raise ValueError(
      f"config.warmup_epochs={config.warmup_epochs!r} is more than config.epochs={config.epochs!r}: the learning rate "
      "would never reach config.lr"
    )
  # Shares and probabilities.
  for field, value in (
    ("label_smoothing", config.label_smoothing),
    ("mixup_switch_prob", config.mixup_switch_prob),
    ("data.max_failure_fraction", config.data.max_failure_fraction),
  ):
    if not 0 <= value <= 1:  # NaN too
      raise ValueError(f"config.{field}={value!r} must be in [0, 1]")
  if not config.data.shots >= 0:
    raise ValueError(f"config.data.shots={config.data.shots!r} must be at least 0 (0: every training video)")
  if not 0 <= config.seed < _SEEDS:
    raise ValueError(f"config.seed={config.seed!r} must be in [0, 2**32)")
  # The centre crop, or three along the long side.
  if config.final_eval_crops not in (1, 3):
    raise ValueError(f"config.final_eval_crops={config.final_eval_crops!r} must be 1 or 3")
  if "zero_shot" in config:  # its views, which a config that adds zero_shot must give too (configs/zero_shot.py)
    clips, crops = config.get("zero_shot_clips"), config.get("zero_shot_crops")
    if not (isinstance(clips, int) and clips >= 1):
      raise ValueError(f"config.zero_shot_clips={clips!r} must be at least 1")
    if crops not in (1, 3):
      raise ValueError(f"config.zero_shot_crops={crops!r} must be 1 or 3")
  if "zero_shot" in config and not config.zero_shot:  # a run that would evaluate nothing of what it is for
    raise ValueError("config.zero_shot names no data set to evaluate (configs/zero_shot.py:sets=... chooses them)")
  if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
    raise ValueError(f"config.steps_per_epoch={config.steps_per_epoch!r} must be at least 1 (or None: from the data)")
  step_lib.check_accumulation(config.batch_size, config.accumulation_steps)
  _check_model_config(config)


def _check_model_config(config: ml_collections.ConfigDict):
  """What the config alone decides of the model: which one to start from, its run options, and its architecture and
  input size where the config gives them (`_architecture`)."""
  if config.init.checkpoint and config.init.clip:
    raise ValueError("set one of config.init.checkpoint and config.init.clip, not both")
  if "model" in config and config.arch and not _init_path(config):
    raise ValueError(f"config.arch={config.arch!r} would be ignored: this config's `model` gives the architecture")
  if config.mode == "eval" and not _init_path(config):
    raise ValueError("mode=eval needs a model: set --config.init.checkpoint=PATH")
  for name in ("checkpoint", "clip"):
    path = config.init[name]
    if path and not paths.is_remote(path):  # a remote one is looked for as it is loaded, not twice
      datasets.check_exists(path, f"init.{name}")
  try:
    # XCLIPConfig's own checks of the run options (dtype, droppath, remat, attention), on any backbone.
    model_config.preset(next(iter(model_config.PRESETS)), **_run_options(config))
  except ValueError as error:  # its messages start with the field's name
    raise ValueError(f"config.{error}") from None
  try:
    architecture = _architecture(config)
  except (ValueError, TypeError) as error:  # TypeError: a field of `model` that XCLIPConfig does not have
    field = "model" if "model" in config and not _init_path(config) else "arch"
    raise ValueError(f"config.{field}: {error}") from None
  if architecture is not None:
    _check_input_size(config, architecture)


def _check_mesh_fits(config, mesh):
  sharding.check_frames_divisible(config.num_frames, mesh)
  sharding.check_time_within_processes(mesh)
  shards = sharding.num_batch_shards(mesh)
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % shards:
      raise ValueError(
        f"config.{field}={config[field]} is not divisible by the {shards} devices the batch is split over"
      )


def _log_parameter_overview(state: step_lib.TrainState, new_modules_lr_multiplier: float, writer) -> dict[str, int]:
  counts = optimizer.count_parameters(state.params, state.recipe.trainable, new_modules_lr_multiplier)
  lines = [f"{name:>10}: {count:,}" for name, count in counts.items()]
  logging.info("Parameters:\n%s", "\n".join(lines))
  writer.write_texts(0, {"parameters": "  \n".join(lines)})
  return counts


def _start_block(config, workdir, model, mesh, experiment, parameters: str, resumed_step: int | None):
  """What the run is, printed as it starts: model, parameter counts, data, devices and mesh, workdir."""
  arch = config.arch or _arch_of(model.config) or "custom"
  c = model.config
  rows = [
    (
      "model",
      f"{arch}: width {c.vision_width}, depth {c.vision_layers}, patch {c.vision_patch_size}, "
      f"{c.image_resolution}px, {c.num_frames} frames, {c.dtype}",
    ),
    ("parameters", parameters),
  ]
  if config.mode == "train":
    data = f"{experiment.num_train_videos:,} training videos, {len(experiment.class_names)} classes"
  else:
    data = f"{len(experiment.class_names)} classes"
  rows.append(("data", data))
  axes = "  ".join(f"{name}={size}" for name, size in mesh.shape.items())
  processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
  rows.append(("devices", f"{jax.device_count()} x {jax.devices()[0].device_kind}{processes}; mesh {axes}"))
  rows.append(("workdir", str(workdir)))
  if resumed_step is not None:
    rows.append(("resumed", f"from the checkpoint at step {resumed_step}"))
  console.start_block(rows)


# A list of numbers as json.dumps(indent=...) writes it, one number a line.
_NUMBER_LIST = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def _write_json(path: epath.Path, value):
  """Indented, with each list of numbers on one line: a confusion matrix of 400 classes is 400 lines, not 160,000."""
  if jax.process_index() == 0:
    text = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", json.dumps(value, indent=1))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


def _save_best(model: pretrained.XCLIPModel, params, workdir: epath.Path, step: int, results: dict):
  best = pretrained.XCLIPModel(model.config, params)
  best.save(workdir / native.WORKDIR_BEST)
  _write_json(workdir / "best.json", {"step": step, "top1": results["top1"], "top5": results["top5"]})


# What an evaluation writes in its workdir. Those of an earlier evaluation there are moved aside, never replaced.
_EVALUATION_FILES = (RESULTS_FILE, report.CONFUSION_FILE)


def _numbered(name: str, number: int) -> str:
  """eval_results.json -> eval_results.NUMBER.json"""
  stem, suffix = os.path.splitext(name)
  return f"{stem}.{number}{suffix}"


def _keep_earlier_results(workdir: epath.Path):
  """Moves the files of an earlier evaluation in `workdir` (_EVALUATION_FILES: of a training run's final evaluation,
  or of a mode=eval run) aside before this one writes its own: under one number above any kept before
  (eval_results.N.json, confusion_matrix.N.png), the same for all of them, with one warning naming them. On process
  0, which writes them."""
  if jax.process_index() != 0:
    return
  earlier = [name for name in _EVALUATION_FILES if (workdir / name).exists()]
  if not earlier:
    return
  number = max((_kept_number(path.name) for path in workdir.iterdir()), default=0) + 1
  for name in earlier:
    (workdir / name).rename(workdir / _numbered(name, number))
  logging.warning(
    "This evaluation would replace the results of an earlier one in %s: they are kept as %s.",
    workdir,
    ", ".join(_numbered(name, number) for name in earlier),
  )


def _kept_number(name: str) -> int:
  """N of a file that _keep_earlier_results kept (eval_results.N.json, confusion_matrix.N.png); 0 for any other."""
  for kept in _EVALUATION_FILES:
    stem, suffix = os.path.splitext(kept)
    match = re.fullmatch(rf"{re.escape(stem)}\.(\d+){re.escape(suffix)}", name)
    if match:
      return int(match.group(1))
  return 0


def _evaluated(config, source: dict, main_set: bool, zero_shot_tasks) -> dict:
  """The results' record of what was evaluated: `source` (`_load_model`'s), the frames, and the views of the main
  list (and its single-frame control) and of the zero-shot sets, of those that are evaluated."""
  record = {**source, "num_frames": config.num_frames}
  if main_set or config.data.get("single_frame_file"):
    record.update(clips=config.final_eval_clips, crops=config.final_eval_crops)
  if zero_shot_tasks:
    record.update(zero_shot_clips=config.zero_shot_clips, zero_shot_crops=config.zero_shot_crops)
  return record


def _final_evaluation(
  config, workdir, experiment, zero_shot_tasks, model, params, mesh, eval_step, text_encoder, step: int, source: dict
) -> dict:
  earlier_kept = False

  def write(results: dict):
    # The earlier evaluation's files are moved aside once this one has results to write, and only then: one that
    # fails before leaves them where they were.
    nonlocal earlier_kept
    if not earlier_kept:
      _keep_earlier_results(workdir)
      earlier_kept = True
    _write_json(workdir / RESULTS_FILE, results)

  main_set = bool(config.data.test_file or config.mode == "train" or config.data.val_file or config.data.tfds_dir)
  results = {"step": step, "evaluated": _evaluated(config, source, main_set, zero_shot_tasks)}
  views = (config.final_eval_clips, config.final_eval_crops)
  if config.data.test_file:
    results.update(
      evaluate.run_eval_set(
        config,
        datasets.list_set(config, experiment, "test_file", "test"),
        eval_step,
        text_encoder,
        params,
        mesh,
        *views,
      )
    )
  elif main_set:
    eval_set = datasets.validation_set(config, experiment)
    results.update(evaluate.run_eval_set(config, eval_set, eval_step, text_encoder, params, mesh, *views))
  if config.data.get("single_frame_file"):
    # The same videos with one frame repeated: what the model gets right without seeing anything move.
    control = datasets.list_set(config, experiment, "single_frame_file", "single_frame")
    results["single_frame_top1"] = evaluate.run_eval_set(
      config, control, eval_step, text_encoder, params, mesh, *views
    )["top1"]
  if zero_shot_tasks:
    results["zero_shot"] = {}
    for task in zero_shot_tasks:
      write(results)  # what is done so far, kept should a later set fail
      split_results = []
      for eval_set in task.splits:
        split_result = evaluate.run_eval_set(
          config, eval_set, eval_step, text_encoder, params, mesh, config.zero_shot_clips, config.zero_shot_crops
        )
        split_results.append({"split": eval_set.name, **split_result})
      summary = zero_shot.summary(split_results)
      console.info(f"zero-shot {task.name}: top-1 {zero_shot.top1_text(summary)}")
      results["zero_shot"][task.name] = summary
  write(results)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains as `config` says (or only evaluates, with mode=eval); returns what eval_results.json holds.

  A finished run draws its pictures in workdir and prints a summary table (on process 0).
  """
  start = time.time()
  check_config(config, workdir)
  distributed.check_same_config(config)  # before anything that depends on it makes the processes meet
  workdir = paths.absolute(workdir)
  with run_lock.held(workdir):
    if "demo" in config:
      config = demo_data.prepare(config, workdir)
    results = _train_and_evaluate(config, workdir)
    if "stopped_at_step" not in results and jax.process_index() == 0:
      _report(config, workdir, results, time.time() - start)
  return results


def _report(config, workdir, results: dict, seconds: float):
  class_names = annotations.read_label_list(config.data.label_list)
  files = [("results", str(workdir / RESULTS_FILE))]
  if config.mode == "train":
    files.insert(0, ("final model", str(workdir / native.WORKDIR_CHECKPOINTS / str(results["step"]))))
  if (workdir / native.WORKDIR_BEST).is_dir():
    files.insert(len(files) - 1, ("best model by validation", str(workdir / native.WORKDIR_BEST)))
  files += [("plot", str(path)) for path in report.write_plots(workdir, results, class_names)]
  console.info(report.run_summary(results, seconds, files))


def itstime(step: int, every_steps: int, total_steps: int) -> bool:
  """Whether to log, evaluate or checkpoint after `step` (counted from 1): every `every_steps` steps, and at the end."""
  return step == total_steps or (every_steps > 0 and step % every_steps == 0)


class _MetricWindow:
  """Per-step metrics since the last log line, read from the device one step late so that the host never waits."""

  def __init__(self):
    self._pending = None
    self._start_window()

  def _start_window(self):
    self._values = {"loss": [], "grad_norm": []}
    self._start, self._steps = time.time(), 0

  def add(self, step: int, metrics):
    self.take_pending()
    self._pending = (step, metrics)
    self._steps += 1

  def take_pending(self) -> dict | None:
    """Reads the held step's metrics, failing on a non-finite loss; call it before saving anything."""
    if self._pending is None:
      return None
    step, metrics = self._pending
    self._pending = None
    metrics = jax.device_get(metrics)
    _check_finite(step, metrics)
    for key, values in self._values.items():
      values.append(float(metrics[key]))
    return metrics

  @contextlib.contextmanager
  def paused(self):
    """For other work (an evaluation, a save): reads the held step's metrics first, failing on a non-finite loss, and
    leaves the block's time out of the window's speed and time left."""
    self.take_pending()
    started = time.time()
    yield
    self._start += time.time() - started

  def summary(self, step: int, total_steps: int, batch_size: int) -> dict:
    """The window's means, the last learning rate and the speed; starts a new window."""
    last = self.take_pending()
    elapsed = time.time() - self._start
    scalars = {key: float(np.mean(values)) for key, values in self._values.items()}
    scalars.update(
      lr=float(last["lr"]),
      clips_per_second=self._steps * batch_size / elapsed,
      eta_seconds=(total_steps - step) * elapsed / self._steps,
    )
    self._start_window()
    return scalars


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  # Setup: devices, data, model, evaluation.
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  _check_mesh_fits(config, mesh)
  saved_steps = native.checkpoint_steps(workdir) if config.mode == "train" else []
  experiment = datasets.resolve(config, workdir, resuming=bool(saved_steps))
  # Read and checked before training too, as the other lists are.
  zero_shot_tasks = zero_shot.tasks(config, workdir) if "zero_shot" in config else []
  model, source = _load_model(config)
  text_encoder = evaluate.make_text_encoder(model.module)
  param_shardings = sharding.tree_shardings(model.params, mesh)
  eval_step = evaluate.make_eval_step(model.module, mesh, param_shardings)
  if config.mode == "eval":
    total = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(model.params))
    _start_block(config, workdir, model, mesh, experiment, f"{total:,}", resumed_step=None)
    params = jax.device_put(model.params, param_shardings)
    return _final_evaluation(
      config, workdir, experiment, zero_shot_tasks, model, params, mesh, eval_step, text_encoder, 0, source
    )

  # Train state: created sharded, then restored from the newest checkpoint if there is one.
  config = _resolved(config, experiment)
  record = _run_record(config, model)
  # Checked before the checkpoint manager starts: its clean-up thread, left running by a run refused at once, would
  # print a traceback as the interpreter shuts down.
  if saved_steps:
    _check_resumes_the_same_run(workdir, record)
    if max(saved_steps) > config.epochs * config.steps_per_epoch:
      raise ValueError(
        f"the newest checkpoint in {workdir} is of step {max(saved_steps)}, past this run's "
        f"{int(config.epochs * config.steps_per_epoch)} steps (config.epochs={config.epochs}): rerun with at least "
        "the epochs that wrote it, or use another workdir"
      )
  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  latest = manager.latest_step()
  writer = metric_writers.create_default_writer(os.fspath(workdir), just_logging=jax.process_index() > 0)
  writer.write_hparams({k: v for k, v in _flat_config(config).items() if isinstance(v, (int, float, str, bool))})
  abstract_state, create_state = step_lib.plan_train_state(
    config, model, tokenizer.tokenize(list(experiment.class_names)), mesh
  )
  train_step = step_lib.make_sharded_step(abstract_state, mesh)
  batch_shapes = step_lib.abstract_batch(config.batch_size, config.num_frames, config.input_size, mesh)

  def compile_train_step():
    start = time.perf_counter()
    compiled = step_lib.compile_step(train_step, abstract_state, batch_shapes)
    logging.info("Compiled the train step in %.1f s", time.perf_counter() - start)
    return compiled

  total_steps = int(config.epochs * config.steps_per_epoch)
  # Compiled before the state exists: compiling takes host memory for a while, which would otherwise add to the
  # state's at the process's peak on a CPU. Not at all for a run whose newest checkpoint ends it: only the final
  # evaluation is left.
  compiled_step = compile_train_step() if latest is None or latest < total_steps else None
  state = create_state()
  counts = _log_parameter_overview(state, config.new_modules_lr_multiplier, writer)
  position = 0
  resumed_step = None
  if latest is not None:
    state, position = checkpoints.restore(manager, state, mesh, config.batch_size)
    resumed_step = int(state.step)
  if compiled_step is None and int(state.step) < total_steps:  # the newest checkpoint was set aside, unreadable
    compiled_step = compile_train_step()
  parameters = f"{counts['total']:,} ({counts['trainable']:,} trainable)"
  _start_block(config, workdir, model, mesh, experiment, parameters, resumed_step)
  eval_every_steps = config.eval_every_epochs * config.steps_per_epoch
  failures = video_dataset.FailureLog()
  batches = datasets.train_stream(config, experiment, position, failures).as_numpy_iterator()
  val_set = datasets.validation_set(config, experiment)
  # A run from step 0 is a new one: an earlier run's best model here (one that stopped before its first checkpoint,
  # say on a diverged loss) is no bar to beat; the first validation replaces it.
  best_top1 = _best_so_far(workdir) if int(state.step) else -1.0
  if not int(state.step) and (workdir / native.WORKDIR_BEST).exists():
    logging.warning(
      "%s holds the best model of an earlier run that left no checkpoint; this run replaces it at its first "
      "validation.",
      workdir / native.WORKDIR_BEST,
    )
  # Once every check has passed: a rerun refused on the way keeps the record of the run that wrote the checkpoints.
  _write_json(workdir / CONFIG_FILE, record)

  # The loop: one step, then whatever is due after it.
  preemption = checkpoints.Preemption(int(state.step))
  window = _MetricWindow()
  progress = console.Progress(total_steps, int(state.step))
  try:
    for step in range(int(state.step) + 1, total_steps + 1):
      local_batch = next(batches)
      next_position = int(local_batch.pop("resume_position")[0])
      batch = sharding.global_batch(local_batch, mesh)
      state, metrics = compiled_step(state, batch)
      position = next_position  # the data position of `state`
      window.add(step, metrics)
      progress.tick()
      checkpoints.check_saved(manager)
      stop = preemption.requested(step)
      if itstime(step, config.log_every_steps, total_steps) or stop:  # a stopped run logs its last steps too
        scalars = {**window.summary(step, total_steps, config.batch_size), "epoch": step / config.steps_per_epoch}
        writer.write_scalars(step, {**scalars, "skipped_videos": len(failures.paths)})
        progress.update(step, scalars)
      if itstime(step, eval_every_steps, total_steps):
        with window.paused():
          results = evaluate.run_eval_set(config, val_set, eval_step, text_encoder, state.params, mesh, 1, 1)
          writer.write_scalars(step, {"eval/top1": results["top1"], "eval/top5": results["top5"]})
          top5 = f"  top-5 {100 * results['top5']:.1f}%" if evaluate.top5_tells(results) else ""
          console.info(
            f"step {step}: validation top-1 {100 * results['top1']:.1f}%{top5}  ({results['num_videos']} videos)"
          )
          if results["top1"] > best_top1:
            _check_finite_params(step, state.params)
            best_top1 = results["top1"]
            _save_best(model, state.params, workdir, step, results)
      if itstime(step, config.checkpoint_every_steps, total_steps) or stop:
        with window.paused():
          _check_finite_params(step, state.params)
          checkpoints.save(manager, state, position, config.batch_size, force=stop)
      if stop:
        logging.warning("Stopped at step %d on %s; rerun the same command to resume.", step, preemption.received)
        return {"stopped_at_step": step, "stopped_by": preemption.received}
  except Exception as error:
    if not isinstance(error, FloatingPointError):  # not a diverged state: the steps done are worth keeping
      _save_before_stopping(manager, state, position, config.batch_size)
    raise
  finally:
    try:
      # However the loop ends (done, SIGTERM, an error in a step, an evaluation or the data), a checkpoint still
      # being written is finished: left to the exit, it would be lost half-written.
      manager.wait_until_finished()
    finally:  # a save that failed (a full disk) raises here: the rest is still undone
      progress.close()
      preemption.restore_handler()
      writer.flush()
  # Stops the training stream, which would otherwise go on decoding ahead while the final evaluation runs.
  del batches

  # Final evaluation: the official code evaluates the final model (not the best) with all views.
  views = f"{console.count(config.final_eval_clips, 'clip')} x {console.count(config.final_eval_crops, 'crop')}"
  console.info(f"Evaluating the model of step {total_steps} ({views})")
  # The model of the final step, which load_pretrained(workdir) reads.
  source = {"checkpoint": str(workdir), "frames_interpolated_from": None}
  results = _final_evaluation(
    config,
    workdir,
    experiment,
    zero_shot_tasks,
    model,
    state.params,
    mesh,
    eval_step,
    text_encoder,
    total_steps,
    source,
  )
  writer.write_scalars(total_steps, {"final/top1": results.get("top1", 0.0), "final/top5": results.get("top5", 0.0)})
  writer.flush()
  return results


def _save_before_stopping(manager, state, position: int, batch_size: int):
  """On an error in the loop (the data, an evaluation): a checkpoint of the steps done since the last one, so that a
  rerun resumes there. A failure here is logged: the error that stopped the run is the one to report. Not with
  several processes: saving is collective, and the others may be waiting elsewhere (they stop on this one's exit)."""
  if jax.process_count() > 1:
    return
  try:
    step = int(state.step)
    if step > (manager.latest_step() or 0) and bool(_all_finite(state.params)):
      checkpoints.save(manager, state, position, batch_size, force=True)
      manager.wait_until_finished()  # the warning below must not claim a save that fails
      logging.warning("The run stopped on an error at step %d; saved a checkpoint there first.", step)
  except Exception as error:  # e.g. the state's buffers, donated to a step that failed
    logging.warning("Could not save a checkpoint before stopping: %s", " ".join(str(error).split())[:300])


_NOTHING_SAVED = (
  "nothing of this step was saved (lower the learning rate or check the data, then rerun: it resumes from the newest "
  "checkpoint, if there is one)"
)


def _check_finite(step: int, metrics):
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"the training loss is {loss} at step {step}; {_NOTHING_SAVED}")


def _check_finite_params(step: int, params):
  """Call before saving `params`: a step with a finite loss can still leave them infinite (its update overflowed)."""
  if not bool(_all_finite(params)):
    raise FloatingPointError(f"the parameters are not finite after step {step}; {_NOTHING_SAVED}")


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _best_so_far(workdir: epath.Path) -> float:
  path = workdir / "best.json"
  return paths.read_json(path)["top1"] if path.exists() else -1.0


def _run_record(config: ml_collections.ConfigDict, model: pretrained.XCLIPModel) -> dict:
  """What CONFIG_FILE keeps of a training run: its resolved config and its model's architecture, as JSON values."""
  return {"config": json.loads(config.to_json_best_effort()), "architecture": model.config.architecture()}


def _check_resumes_the_same_run(workdir: epath.Path, record: dict):
  """Refuses to resume the checkpoints of a model of another architecture, or of other trained parameters; warns of
  other config values that differ from those of the run that wrote them (a run extended on purpose, or a mistake:
  training goes on either way)."""
  path = workdir / CONFIG_FILE
  if not path.exists():  # written by a version that kept no config
    return
  stored = paths.read_json(path)
  changed = _differences(stored["architecture"], record["architecture"])
  if changed:
    raise ValueError(
      f"the checkpoints in {workdir} are of another model ({changed}): rerun with their config, or use another workdir"
    )
  stored_config, config = _flat_config(stored["config"]), _flat_config(record["config"])
  changed = _differences(*({f: c.get(f) for f in _STATE_FIELDS} for c in (stored_config, config)))
  if changed:
    raise ValueError(
      f"the checkpoints in {workdir} train other parameters ({changed}): rerun with their config, or use another "
      "workdir"
    )
  if stored_config.get("batch_size") != config.get("batch_size"):
    # Their data position counts batches of their size: checkpoints.restore refuses them too, but only once the train
    # step is compiled, after a warning that training goes on.
    raise ValueError(
      f"the checkpoints in {workdir} were written with batch_size={stored_config.get('batch_size')}, this run has "
      f"config.batch_size={config.get('batch_size')}: their data position counts other batches (resume with the "
      "same batch size, or use another workdir)"
    )
  changed = _differences(stored_config, config)
  if changed and jax.process_index() == 0:  # one warning, not one a process
    # A longer or shorter run stretches the cosine from the step resumed on: the rate may rise again.
    schedule = any(stored_config.get(f) != config.get(f) for f in ("epochs", "warmup_epochs", "steps_per_epoch"))
    logging.warning(
      "This run's config differs from that of the checkpoints it resumes in %s (%s); training goes on with this run's%s.",
      workdir,
      changed,
      ", its learning-rate schedule recomputed over the new length (the rate may rise again)" if schedule else "",
    )


def _differences(old: dict, new: dict) -> str:
  """`field old -> new; ...` for the fields that differ, leaving out _NOT_COMPARED. Paths that moved together (a data
  folder or a workdir moved) read as one change: `data.root, data.train_file '/old/...' -> '/new/...'`."""
  fields = sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f) and not f.startswith(_NOT_COMPARED))
  moves = collections.defaultdict(list)  # ('/old/...', '/new/...') -> the fields whose paths moved so
  for field in fields:
    moves[_moved_folders(old.get(field), new.get(field)) or field].append(field)
  return "; ".join(
    f"{', '.join(names)} {move[0]} -> {move[1]}"
    if len(names) > 1
    else f"{names[0]} {old.get(names[0])!r} -> {new.get(names[0])!r}"
    for move, names in moves.items()
  )


def _moved_folders(old, new) -> tuple[str, str] | None:
  """('/old/...', '/new/...') for two paths that end alike from a folder on ('/old/a/b.txt', '/new/a/b.txt')."""
  if not (isinstance(old, str) and isinstance(new, str) and old and new):
    return None
  same_end = len(os.path.commonprefix([old[::-1], new[::-1]]))
  folder_end = old.find("/", len(old) - same_end)  # the common end, from its first separator on
  if folder_end <= 0:
    return None
  return repr(old[:folder_end] + "/..."), repr(new[: len(new) - (len(old) - folder_end)] + "/...")


def _flat_config(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(_flat_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
