"""A Hugging Face model directory as `save_pretrained` writes it: config.json and the weights, whole or in shards.

The weights are read as numpy arrays: safetensors files with `safetensors.numpy`, pytorch_model.bin files with
`torch_pickle`'s restricted unpickler (no PyTorch needed, no pickled code run).
"""

import pathlib

import numpy as np
import safetensors.numpy

from xclip_jax import paths
from xclip_jax.weights import torch_pickle

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX_FILE = "pytorch_model.bin.index.json"
_WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_FILE, PYTORCH_INDEX_FILE)


def read_config(directory) -> dict:
  """The parsed config.json of `directory`.

  Raises:
    FileNotFoundError: there is no config.json.
    ValueError: it is not a JSON object.
  """
  config_path = pathlib.Path(directory) / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}")
  config = paths.read_json(config_path)
  if not isinstance(config, dict):
    raise ValueError(f"{config_path}: not a JSON object")
  return config


def model_config(directory) -> dict | None:
  """The config.json of a directory that holds a model (a config and weights); None for any other.

  Raises:
    ValueError: the directory holds weights and a config.json that is not a JSON object (named, with the JSON
      error: a damaged model, not some other directory).
  """
  directory = pathlib.Path(directory)
  if not (directory / CONFIG_FILE).is_file() or not any((directory / name).is_file() for name in _WEIGHT_FILES):
    return None
  return read_config(directory)


def read_tensors(directory) -> dict[str, np.ndarray]:
  """All tensors of the directory's weights, single-file or sharded (safetensors preferred).

  Raises:
    FileNotFoundError: there are no weights.
    ValueError: a weights file or shard index is unreadable.
  """
  directory = pathlib.Path(directory)
  for index_name, reads_torch in ((SAFETENSORS_INDEX_FILE, False), (PYTORCH_INDEX_FILE, True)):  # noqa: B007 (read after the break)
    if (directory / index_name).is_file():
      index = paths.read_json(directory / index_name)
      weight_map = index.get("weight_map") if isinstance(index, dict) else None
      if not isinstance(weight_map, dict):
        raise ValueError(f"{directory / index_name}: no 'weight_map' object")
      shards = sorted(set(weight_map.values()))
      break
  else:
    if (directory / SAFETENSORS_FILE).is_file():
      shards, reads_torch = [SAFETENSORS_FILE], False
    elif (directory / PYTORCH_FILE).is_file():
      shards, reads_torch = [PYTORCH_FILE], True
    else:
      raise FileNotFoundError(f"{directory}: no {SAFETENSORS_FILE}, {PYTORCH_FILE} or sharded index")
  tensors = {}
  for shard in shards:
    path = directory / shard
    if reads_torch:
      shard_tensors = torch_pickle.load_torch_file(path)
      if not isinstance(shard_tensors, dict) or not all(
        isinstance(value, np.ndarray) for value in shard_tensors.values()
      ):
        raise ValueError(f"{path}: not a state dict of tensors")
    else:
      try:
        shard_tensors = safetensors.numpy.load_file(path)
      except Exception as error:  # safetensors raises its own, unexported, error type.
        raise ValueError(f"{path}: unreadable safetensors file ({error})") from error
    tensors.update(shard_tensors)
  return tensors
