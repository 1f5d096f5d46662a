"""Reads a TorchScript archive (`torch.jit.save`, e.g. OpenAI's CLIP releases) as its `state_dict()`, without PyTorch.

The archive's `data.pkl` goes through `torch_pickle`'s restricted unpickler, which turns its `__torch__.*` module
objects into inert records of their attributes; the parameter and buffer names each class declares in the archive's
`code/` listing (`__parameters__ = [...]`, `__buffers__ = [...]`, read as text, never executed) select what
`module.state_dict()` would return.
"""

import ast
from collections.abc import Mapping
import pathlib
import re
import zipfile

import numpy as np

from xclip_jax.weights import torch_pickle

# Lines of the code/ listing: a module class, and the state names it declares.
_CLASS_LINE = re.compile(r"^class (\w+)\(Module\):")
_DECLARED_NAMES_LINE = re.compile(r"^\s+(__parameters__|__buffers__) = (\[.*\])\s*$")


def is_torchscript_archive(path) -> bool:
  """Whether `path` is a TorchScript archive (`torch.jit.save`), not a torch.save file."""
  path = pathlib.Path(path)
  if not zipfile.is_zipfile(path):
    return False
  try:
    archive = torch_pickle.ZipArchive(path)
  except torch_pickle.CheckpointFormatError:
    return False
  try:
    return archive.is_torchscript()
  finally:
    archive.close()


def _declared_state_names(archive: torch_pickle.ZipArchive) -> dict[str, list[str]]:
  """Parameter then buffer names of each module class listed under `code/`.

  The listing is TorchScript source; it is read as text, never executed.

  Args:
    archive: a TorchScript archive.

  Returns:
    {qualified class name: names}, e.g. {'__torch__.model.CLIP': ['positional_embedding', ...]}.
  """
  declared = {}
  for record in archive.record_names():
    if not (record.startswith("code/") and record.endswith(".py")):
      continue
    # code/__torch__/torch/nn/modules/linear.py defines __torch__.torch.nn.modules.linear.*
    module = record[len("code/") : -len(".py")].replace("/", ".")
    class_name = None
    for line in archive.read(record).decode("utf-8", "replace").splitlines():
      class_match = _CLASS_LINE.match(line)
      if class_match:
        class_name = f"{module}.{class_match.group(1)}"
        declared[class_name] = {"__parameters__": [], "__buffers__": []}
        continue
      names_match = _DECLARED_NAMES_LINE.match(line)
      if class_name and names_match:
        declared[class_name][names_match.group(1)] = ast.literal_eval(names_match.group(2))
  return {name: names["__parameters__"] + names["__buffers__"] for name, names in declared.items()}


def _flatten_script_module(
  module: torch_pickle.ScriptObject, prefix: str, declared: Mapping[str, list[str]], state_dict: dict[str, np.ndarray]
) -> None:
  """Adds a module's parameters and buffers, then its children's, like state_dict()."""
  attributes = getattr(module, "attributes", {})
  names = declared.get(module.qualified_name)
  if names is None:
    # No declaration in code/: every tensor attribute is taken, which may include
    # plain tensor attributes (e.g. an attention mask) that state_dict() skips.
    names = [name for name, value in attributes.items() if isinstance(value, np.ndarray)]
  for name in names:
    value = attributes.get(name)
    if isinstance(value, np.ndarray):  # None: an absent optional parameter.
      state_dict[prefix + name] = value
  for name, value in attributes.items():
    if isinstance(value, torch_pickle.ScriptObject):
      _flatten_script_module(value, f"{prefix}{name}.", declared, state_dict)


def load_torchscript_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a TorchScript archive's `state_dict()` without running its code.

  Used for OpenAI's CLIP releases (e.g. ViT-B-32.pt, fp16 weights). Keys and
  their order are those of the scripted module's `state_dict()` (parameters,
  then buffers, then submodules, recursively); dtypes are kept. Classes whose
  declaration is missing from the archive's `code/` listing contribute all
  their tensor attributes, which can include non-state tensors.

  Args:
    path: the `torch.jit.save` archive.

  Returns:
    {state-dict name: array}.

  Raises:
    torch_pickle.UnsafeCheckpointError: the pickle references a global outside the allowlist.
    torch_pickle.CheckpointFormatError: the file is not a readable TorchScript archive.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such TorchScript archive")
  archive = torch_pickle.ZipArchive(path)
  try:
    if not archive.is_torchscript():
      raise torch_pickle.CheckpointFormatError(
        f"{path} is not a TorchScript archive (no constants.pkl and code/); read it with torch_pickle.load_torch_file"
      )
    declared = _declared_state_names(archive)
    root = archive.unpickle("data.pkl", allow_script_objects=True)
  finally:
    archive.close()
  if not isinstance(root, torch_pickle.ScriptObject):
    raise torch_pickle.CheckpointFormatError(f"{path}: data.pkl holds {type(root).__name__}, not a scripted module")
  state_dict = {}
  _flatten_script_module(root, "", declared, state_dict)
  return state_dict
