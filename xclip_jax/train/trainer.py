"""`train_and_evaluate(config, workdir)`: fine-tuning with resumable checkpoints, metrics, and the final evaluation.

Rerunning the same command resumes from the newest checkpoint in `workdir`, with any number of processes (the data
position is global); SIGTERM saves one and exits cleanly. With several processes, every process runs this and
process 0 writes the metrics and JSON files. `workdir` may be on cloud storage (gs://...).
What lands in workdir:
  checkpoints/   orbax checkpoints of the train state and data position (the last `keep_checkpoints`)
  best/          the best model so far by validation top-1, as an xclip-jax checkpoint (`python -m xclip_jax.convert
                 WORKDIR/best out.pth --to=official` exports it), with best.json
  eval_results.json, and TensorBoard event files of the metrics
  training_curves.png, confusion_matrix.png   pictures of the metrics and of the final evaluation (xclip_jax.report)
A config with a `demo` field first writes its data to WORKDIR/demo_data (xclip_jax.demo_data).
"""

import json
import logging
import os
import signal
import time

from clu import metric_writers
from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from input_pipeline import annotations
from input_pipeline import datasets
from input_pipeline import demo_data
from input_pipeline import video_dataset
from xclip_jax import paths
from xclip_jax import pretrained
from xclip_jax.evaluation import evaluate
from xclip_jax.evaluation import report
from xclip_jax.model import config as model_config
from xclip_jax.model import tokenizer
from xclip_jax.parallel import sharding
from xclip_jax.train import optimizer
from xclip_jax.train import step as step_lib

RESULTS_FILE = "eval_results.json"
BEST_DIR = pretrained.WORKDIR_BEST
CHECKPOINT_DIR = pretrained.WORKDIR_CHECKPOINTS


def load_model(config: ml_collections.ConfigDict) -> pretrained.XCLIPModel:
  """The model to start from: `init.checkpoint` (X-CLIP), `init.clip` (CLIP), or `arch` (or the architecture `model`
  gives, as configs/demo.py does) initialised at random."""
  options = dict(dtype=config.dtype, droppath=config.droppath, remat=config.remat)
  if config.init.checkpoint and config.init.clip:
    raise ValueError("set one of config.init.checkpoint and config.init.clip, not both")
  path = config.init.checkpoint or config.init.clip
  if path:
    field = "init.checkpoint" if config.init.checkpoint else "init.clip"
    model = pretrained.load_pretrained(datasets.check_exists(path, field), num_frames=config.num_frames, **options)
    arch = _arch_of(model.config)
    if config.arch and arch != config.arch:
      raise ValueError(f"config.arch is {config.arch} but {field} {path} holds a {arch or 'different'} model")
  elif config.mode == "eval":
    raise ValueError("mode=eval needs a model: set --config.init.checkpoint=PATH")
  else:
    if "model" in config:
      architecture = model_config.XCLIPConfig(**config.model.to_dict(), num_frames=config.num_frames, **options)
    else:
      architecture = model_config.preset(config.arch, num_frames=config.num_frames, **options)
    logging.warning("No init.clip or init.checkpoint: training %s from a random initialisation.", architecture)
    model = pretrained.from_config(architecture, seed=config.seed)
  if model.config.image_resolution != config.input_size:
    raise ValueError(
      f"config.input_size is {config.input_size} but the model takes {model.config.image_resolution}px frames"
    )
  return model


def _arch_of(architecture: model_config.XCLIPConfig) -> str | None:
  """The preset name of a model's CLIP backbone, if it is one."""
  for name in model_config.PRESETS:
    backbone = model_config.preset(name, num_frames=model_config.num_frames)
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


def _check_mesh_fits(config, mesh):
  sharding.check_frames_divisible(config.num_frames, mesh)
  shards = sharding.num_batch_shards(mesh)
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % shards:
      raise ValueError(
        f"config.{field}={config[field]} is not divisible by the {shards} devices the batch is split over"
      )


class _Terminated:
  """A SIGTERM (a preemption notice), so that the loop can save and stop between steps.

  With several processes they must all stop after the same step, whichever of them got the signal: JAX's preemption
  sync (jax.distributed's own SIGTERM handler) tells them all and picks the step after the furthest one's, and a
  Python handler here would replace its handler.
  """

  def __init__(self, first_step: int):
    self._received = False
    self._first_step = first_step
    self._multi_process = jax.process_count() > 1
    if not self._multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint after this step, then exiting.")
    self._received = True

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step`; call it after every step."""
    if self._multi_process:
      # The sync counts the steps of this run (0 before the first), as the processes began together.
      return multihost_utils.reached_preemption_sync_point(step - self._first_step)
    return self._received

  def restore(self):
    if not self._multi_process:
      signal.signal(signal.SIGTERM, self._previous)


def _checkpoint_arrays(state: step_lib.TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def _save(manager, state, position: int, batch_size: int, force: bool = False):
  saved = manager.save(
    int(state.step),
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(_checkpoint_arrays(state)),
      data=ocp.args.JsonSave({"data_position": position, "batch_size": batch_size}),
    ),
    force=force,
  )
  if saved:
    logging.info("Saved checkpoint at step %d.", int(state.step))


def _restore(manager, state: step_lib.TrainState, mesh, batch_size: int) -> tuple[step_lib.TrainState, int]:
  """The newest checkpoint laid out on `mesh` (written by any number of processes) and its global data position."""
  step = manager.latest_step()
  shardings = step_lib.state_shardings(state, mesh)
  target = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    _checkpoint_arrays(state),
    _checkpoint_arrays(shardings),
  )
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
  )
  meta = restored["data"]
  if meta.get("batch_size") != batch_size:
    raise ValueError(
      f"the checkpoint at step {step} was written with batch_size={meta.get('batch_size')}, this run has "
      f"config.batch_size={batch_size}: its data position counts other batches (resume with the same batch size)"
    )
  arrays = restored["state"]
  logging.info("Resumed from the checkpoint at step %d (data position %d).", step, meta["data_position"])
  state = state.replace(step=arrays["step"], params=arrays["params"], opt_state=arrays["opt_state"], rng=arrays["rng"])
  return state, int(meta["data_position"])


def _log_parameter_overview(state: step_lib.TrainState, new_modules_lr_multiplier: float, writer):
  counts = optimizer.count_parameters(state.params, state.recipe.trainable, new_modules_lr_multiplier)
  lines = [f"{name:>10}: {count:,}" for name, count in counts.items()]
  logging.info("Parameters:\n%s", "\n".join(lines))
  writer.write_texts(0, {"parameters": "  \n".join(lines)})


def _write_json(path: epath.Path, value):
  if jax.process_index() == 0:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


def _save_best(model: pretrained.XCLIPModel, params, workdir: epath.Path, step: int, results: dict):
  best = pretrained.XCLIPModel(model.config, params)
  best.save(workdir / BEST_DIR)
  _write_json(workdir / "best.json", {"step": step, "top1": results["top1"], "top5": results["top5"]})


def _final_evaluation(config, workdir, experiment, model, params, mesh, eval_step, text_encoder, step: int) -> dict:
  results = {"step": step}
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
  elif config.mode == "train" or config.data.val_file or config.data.tfds_dir:
    eval_set = datasets.validation_set(config, experiment)
    results.update(evaluate.run_eval_set(config, eval_set, eval_step, text_encoder, params, mesh, *views))
  if config.data.get("single_frame_file"):
    # The same videos with one frame repeated: what the model gets right without seeing anything move.
    control = datasets.list_set(config, experiment, "single_frame_file", "single_frame")
    results["single_frame_top1"] = evaluate.run_eval_set(
      config, control, eval_step, text_encoder, params, mesh, *views
    )["top1"]
  if "zero_shot" in config:
    results["zero_shot"] = {}
    for task in evaluate.zero_shot_tasks(config, workdir):
      split_results = []
      for eval_set in task.splits:
        split_result = evaluate.run_eval_set(
          config, eval_set, eval_step, text_encoder, params, mesh, config.zero_shot_clips, config.zero_shot_crops
        )
        split_results.append({"split": eval_set.name, **split_result})
      summary = evaluate.zero_shot_summary(split_results)
      logging.info(
        "zero-shot %s: top-1 %.2f +- %.2f%%", task.name, 100 * summary["top1_mean"], 100 * summary["top1_std"]
      )
      results["zero_shot"][task.name] = summary
  _write_json(workdir / RESULTS_FILE, results)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains as `config` says (or only evaluates, with mode=eval); returns what eval_results.json holds.

  A finished run draws its pictures in workdir and prints a summary table (on process 0).
  """
  start = time.time()
  workdir = paths.absolute(workdir)
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
    files.insert(0, ("final model", str(workdir / CHECKPOINT_DIR / str(results["step"]))))
  if (workdir / BEST_DIR).is_dir():
    files.insert(len(files) - 1, ("best model by validation", str(workdir / BEST_DIR)))
  files += [("plot", str(path)) for path in report.write_plots(workdir, results, class_names)]
  print(report.run_summary(results, seconds, files), flush=True)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  if config.mode not in ("train", "eval"):
    raise ValueError(f"config.mode must be 'train' or 'eval', got {config.mode!r}")
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  _check_mesh_fits(config, mesh)
  experiment = datasets.resolve(config, workdir)
  model = load_model(config)
  text_encoder = evaluate.make_text_encoder(model.module)
  param_shardings = sharding.tree_shardings(model.params, mesh)
  eval_step = evaluate.make_eval_step(model.module, mesh, param_shardings)

  if config.mode == "eval":
    params = jax.device_put(model.params, param_shardings)
    return _final_evaluation(config, workdir, experiment, model, params, mesh, eval_step, text_encoder, step=0)

  config = _resolved(config, experiment)
  writer = metric_writers.create_default_writer(os.fspath(workdir), just_logging=jax.process_index() > 0)
  writer.write_hparams({k: v for k, v in _flat_config(config).items() if isinstance(v, (int, float, str, bool))})
  text_ids = tokenizer.tokenize(list(experiment.class_names))
  state = step_lib.create_train_state(config, model, text_ids, mesh)
  _log_parameter_overview(state, config.new_modules_lr_multiplier, writer)
  manager = ocp.CheckpointManager(
    workdir / CHECKPOINT_DIR,
    options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
  )
  position = 0
  if manager.latest_step() is not None:
    state, position = _restore(manager, state, mesh, config.batch_size)
  step_fn = step_lib.make_sharded_step(state, mesh)
  total_steps = int(config.epochs * config.steps_per_epoch)
  failures = video_dataset.FailureLog()
  batches = datasets.train_stream(config, experiment, position, failures).as_numpy_iterator()
  best_top1 = _best_so_far(workdir)
  val_set = datasets.validation_set(config, experiment)
  terminated = _Terminated(int(state.step))
  try:
    step = int(state.step)
    pending = None  # the previous step's metrics, read while the next step runs
    window = {"loss": [], "grad_norm": []}
    window_start, window_steps = time.time(), 0
    while step < total_steps:
      local_batch = next(batches)
      position = int(local_batch.pop("resume_position")[0])
      state, metrics = step_fn(state, sharding.global_batch(local_batch, mesh))
      if pending is not None:
        _check_finite(*pending)
        for key in window:
          window[key].append(float(pending[1][key]))
      pending = (step, metrics)
      step += 1
      window_steps += 1
      if step % config.log_every_steps == 0 or step == total_steps:
        _check_finite(*pending)
        last = jax.device_get(pending[1])
        for key in window:
          window[key].append(float(last[key]))
        pending = None
        elapsed = time.time() - window_start
        scalars = {
          "loss": np.mean(window["loss"]),
          "grad_norm": np.mean(window["grad_norm"]),
          "lr": float(last["lr"]),
          "clips_per_second": window_steps * config.batch_size / elapsed,
          "eta_seconds": (total_steps - step) * elapsed / window_steps,
          "skipped_videos": failures.count,
          "epoch": step / config.steps_per_epoch,
        }
        writer.write_scalars(step, scalars)
        window = {key: [] for key in window}
        window_start, window_steps = time.time(), 0
      end_of_epoch = step % config.steps_per_epoch == 0
      if end_of_epoch and (step // config.steps_per_epoch) % config.eval_every_epochs == 0 or step == total_steps:
        results = evaluate.run_eval_set(config, val_set, eval_step, text_encoder, state.params, mesh, 1, 1)
        writer.write_scalars(step, {"eval/top1": results["top1"], "eval/top5": results["top5"]})
        if results["top1"] > best_top1:
          best_top1 = results["top1"]
          _save_best(model, state.params, workdir, step, results)
      stop = terminated.requested(step)
      if step % config.checkpoint_every_steps == 0 or step == total_steps or stop:
        _save(manager, state, position, config.batch_size, force=stop)
      if stop:
        manager.wait_until_finished()
        logging.warning("Stopped at step %d on SIGTERM; rerun the same command to resume.", step)
        return {"stopped_at_step": step}
    manager.wait_until_finished()
  finally:
    terminated.restore()
    writer.flush()
  # Stops the training stream, which would otherwise go on decoding ahead while the final evaluation runs.
  del batches
  # The official code evaluates the final model (not the best) with all views.
  results = _final_evaluation(
    config, workdir, experiment, model, state.params, mesh, eval_step, text_encoder, total_steps
  )
  writer.write_scalars(total_steps, {"final/top1": results.get("top1", 0.0), "final/top5": results.get("top5", 0.0)})
  writer.flush()
  return results


def _check_finite(step: int, metrics):
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(
      f"the training loss is {loss} at step {step}; nothing of this step was saved, the newest checkpoint is intact "
      "(lower the learning rate or check the data, then rerun to resume)"
    )


def _best_so_far(workdir: epath.Path) -> float:
  path = workdir / "best.json"
  return json.loads(path.read_text())["top1"] if path.exists() else -1.0


def _flat_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flat_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
