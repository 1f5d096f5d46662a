"""A PyTorch checkpoint file (*.pth, *.pt, *.bin) read as a model state dict plus its metadata.

Training checkpoints keep the model under an entry next to the optimiser's state and the run's config; data-parallel
training prefixes every name with `module.`; OpenAI ships TorchScript archives. `read_state_dict` undoes all three.
"""

import os
import pathlib

import numpy as np

from xclip_jax.weights import torch_pickle
from xclip_jax.weights import torchscript

# Top-level entries of a training checkpoint that hold optimiser state, not weights.
_TRAINING_STATE_KEYS = ("optimizer", "lr_scheduler")
# Keys under which training checkpoints keep the model's state dict.
_STATE_DICT_KEYS = ("model", "state_dict")


def read_state_dict(path) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a checkpoint (*.pth, *.pt, *.bin) as a state dict plus metadata.

  Handles the official X-CLIP training layout `{'model': sd, 'optimizer': ...,
  'config': CfgNode, 'epoch': ...}` (also with 'state_dict' for 'model'), bare
  state dicts and TorchScript archives. A leading 'module.' (DistributedDataParallel)
  is stripped from the keys.

  Args:
    path: the checkpoint file.

  Returns:
    (state_dict, extras): {name: array}, and the other top-level entries of a
    training checkpoint (config as a nested dict, epoch, ...) without the
    optimiser and scheduler state; {} for bare state dicts and TorchScript.

  Raises:
    torch_pickle.UnsafeCheckpointError, torch_pickle.CheckpointFormatError: see `torch_pickle.load_torch_file`.
    ValueError: the file holds no state dict, or an entry is not a tensor.
  """
  path = pathlib.Path(path)
  if _is_safetensors(path):
    raise ValueError(
      f"{path}: a safetensors file, as a Hugging Face model keeps its weights: pass the folder that holds it and the "
      "model's config.json"
    )
  if torchscript.is_torchscript_archive(path):
    return torchscript.load_torchscript_state_dict(path), {}
  loaded = torch_pickle.load_torch_file(path)
  if not isinstance(loaded, dict):
    raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict or a training checkpoint")
  state_dict_key = next((key for key in _STATE_DICT_KEYS if isinstance(loaded.get(key), dict)), None)
  if state_dict_key is None:
    state_dict, extras = loaded, {}
  else:
    state_dict = loaded[state_dict_key]
    extras = {key: value for key, value in loaded.items() if key != state_dict_key and key not in _TRAINING_STATE_KEYS}
  arrays = {}
  for name, value in state_dict.items():
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      value = np.asarray(value)
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{path}: state dict entry '{name}' is a {type(value).__name__}, not a tensor")
    bare = name.removeprefix("module.")
    if bare in arrays:  # `x` and `module.x`: which one the model should take, the file does not say
      raise ValueError(f"{path}: state dict entries '{bare}' and 'module.{bare}' name the same parameter")
    arrays[bare] = value
  return arrays, extras


def _is_safetensors(path: pathlib.Path) -> bool:
  """Whether the file is in the safetensors format: the length of a JSON header (8 bytes, little-endian), then it."""
  try:
    with open(path, "rb") as file:
      head = file.read(9)
      size = os.fstat(file.fileno()).st_size
  except OSError:
    return False  # told by the reader
  return len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size
