"""xclip-jax's own checkpoints: converted models and the final model of a training workdir.

A converted checkpoint (`XCLIPModel.save`, `python -m xclip_jax.convert`) is a directory holding `xclip_config.json`
(the architecture, with the format's name and version) and an orbax checkpoint of the Flax parameters in `params/`.
A training workdir (`python -m xclip_jax.main`, see xclip_jax.train.trainer) holds orbax checkpoints of the train state
in `checkpoints/STEP/state` and the best model as a converted checkpoint in `best/`.
"""

import json
import pathlib

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from xclip_jax import paths
from xclip_jax.model import config as model_config
from xclip_jax.weights import official

CONFIG_FILE = "xclip_config.json"
PARAMS_DIR = "params"
FORMAT_NAME = "xclip-jax"
# 2: Linear and conv weights in PyTorch's layout (`weight`); version 1 (no version field) stored Flax `kernel`s.
FORMAT_VERSION = 2
WORKDIR_CHECKPOINTS = "checkpoints"
WORKDIR_BEST = "best"
# Run-time options of the config (compute dtype, drop path, remat, attention implementation): the loader chooses them,
# not the checkpoint.
_RUNTIME_FIELDS = ("droppath", "remat", "dtype", "attention")


def write_checkpoint(directory, config: model_config.XCLIPConfig, params) -> epath.Path:
  """Writes a converted checkpoint: `xclip_config.json` and an orbax checkpoint of the params.

  `directory` may be on cloud storage (gs://...). With several processes, every process calls this (the params may be
  sharded over all of them); process 0 writes the config.
  """
  directory = paths.absolute(directory)
  directory.mkdir(parents=True, exist_ok=True)
  fields = {k: v for k, v in config.to_dict().items() if k not in _RUNTIME_FIELDS}
  meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": fields}
  if jax.process_index() == 0:
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / PARAMS_DIR, params, force=True)
  checkpointer.wait_until_finished()
  return directory


def is_checkpoint(directory: pathlib.Path) -> bool:
  """Whether `directory` is a converted checkpoint."""
  return (directory / CONFIG_FILE).exists()


def read_checkpoint(directory: pathlib.Path, **overrides) -> tuple[model_config.XCLIPConfig, dict]:
  """The config (with `overrides`) and the params, as host numpy arrays, of a converted checkpoint."""
  meta = json.loads((directory / CONFIG_FILE).read_text())
  if meta.get("format") != FORMAT_NAME:
    raise ValueError(f"{directory / CONFIG_FILE} is not an xclip-jax checkpoint config (format {meta.get('format')!r})")
  if meta.get("version", 1) != FORMAT_VERSION:
    raise ValueError(
      f"{directory} was written by another xclip-jax version (checkpoint format "
      f"{meta.get('version', 1)}, this version reads {FORMAT_VERSION}); convert the original checkpoint "
      "again with `python -m xclip_jax.convert SRC DST`"
    )
  config = model_config.XCLIPConfig.from_dict(meta["config"])
  abstract = official.abstract_params(config)
  # As host arrays: the caller lays them out on its devices (and processes), wherever the writer's were.
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  params = ocp.PyTreeCheckpointer().restore(
    directory / PARAMS_DIR, args=ocp.args.PyTreeRestore(abstract, restore_args=as_numpy)
  )
  return config.replace(**overrides), params


def is_workdir(directory: pathlib.Path) -> bool:
  """Whether `directory` is a training workdir (with a best model written)."""
  return (directory / WORKDIR_CHECKPOINTS).is_dir() and (directory / WORKDIR_BEST / CONFIG_FILE).exists()


def read_workdir(directory: pathlib.Path, **overrides) -> tuple[model_config.XCLIPConfig, dict]:
  """The final model of a training workdir: the parameters of its newest checkpoint, the architecture of best/."""
  steps = [int(p.name) for p in (directory / WORKDIR_CHECKPOINTS).iterdir() if p.name.isdigit()]
  if not steps:
    raise ValueError(f"{directory} is a training workdir without a checkpoint yet")
  meta = json.loads((directory / WORKDIR_BEST / CONFIG_FILE).read_text())
  config = model_config.XCLIPConfig.from_dict(meta["config"])
  state = directory.absolute() / WORKDIR_CHECKPOINTS / str(max(steps)) / "state"
  # Only the parameters of the train state, not the optimiser's moments.
  item = {"params": official.abstract_params(config)}
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  restored = ocp.PyTreeCheckpointer().restore(
    state, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
  )
  return config.replace(**overrides), restored["params"]
