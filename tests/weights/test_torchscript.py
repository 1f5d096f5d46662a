"""Tests for xclip_jax.weights.torchscript: TorchScript archives read as their state_dict() without torch."""

import builtins
import os
import pickle
import re
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from tests.weights import torch_reference
from xclip_jax.weights import torch_checkpoint
from xclip_jax.weights import torch_pickle
from xclip_jax.weights import torchscript


@pytest.mark.parametrize("compile_mode", ["script", "trace"])
def test_torchscript_archive_gives_module_state_dict(tmp_path, compile_mode):
  torch.manual_seed(0)
  module = torch_reference.TinyNet()
  if compile_mode == "script":
    compiled = torch.jit.script(module.half())
  else:
    compiled = torch.jit.trace(module, torch.randn(3, 2, 8)).half()
  path = tmp_path / f"tiny_{compile_mode}.pt"
  compiled.save(str(path))

  state_dict = torchscript.load_torchscript_state_dict(path)

  reference = torch.jit.load(str(path)).state_dict()
  assert list(state_dict) == list(reference)
  for name, tensor in reference.items():
    torch_reference.assert_bitwise_equal(state_dict[name], torch_reference.as_numpy(tensor))
  assert state_dict["proj"].dtype == np.float16
  assert torchscript.is_torchscript_archive(path)
  assert torch_checkpoint.read_state_dict(path)[0].keys() == state_dict.keys()


def test_torchscript_and_torch_save_are_told_apart(tmp_path, scripted_archive):
  archive_path, _ = scripted_archive
  saved_path = tmp_path / "plain.pth"
  torch.save({"w": torch.ones(1)}, saved_path)

  assert not torchscript.is_torchscript_archive(saved_path)
  with pytest.raises(torch_pickle.CheckpointFormatError, match="load_torchscript_state_dict"):
    torch_pickle.load_torch_file(archive_path)
  with pytest.raises(torch_pickle.CheckpointFormatError, match="load_torch_file"):
    torchscript.load_torchscript_state_dict(saved_path)


class _Evaluates:
  """Pickles as builtins.eval(expression): what a malicious archive would hold."""

  def __init__(self, expression):
    self.expression = expression

  def __reduce__(self):
    return builtins.eval, (self.expression,)


class _RunsCommand:
  """Pickles as os.system(command)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def _scripted_module_holding(payload, monkeypatch):
  """A `__torch__.*` module object whose attributes include `payload`, as data.pkl pickles a scripted module."""
  fake_torch = types.ModuleType("__torch__")

  class Module:
    pass

  Module.__module__, Module.__qualname__ = "__torch__", "Module"
  fake_torch.Module = Module
  monkeypatch.setitem(sys.modules, "__torch__", fake_torch)
  module = Module()
  module.__dict__.update(training=False, hook=payload)
  return module


def _with_record(source, destination, record, data):
  """A copy of the zip archive `source` whose `<prefix>/<record>` holds `data`."""
  with zipfile.ZipFile(source) as archive, zipfile.ZipFile(destination, "w") as copy:
    names = archive.namelist()
    (target,) = [name for name in names if name.count("/") == 1 and name.endswith(f"/{record}")]
    for name in names:
      copy.writestr(archive.getinfo(name), data if name == target else archive.read(name))
  return destination


@pytest.mark.parametrize("where", ["top level", "inside a scripted module"])
@pytest.mark.parametrize("global_name", ["os.system", "builtins.eval"])
def test_a_malicious_global_in_data_pkl_is_refused_and_not_run(
  tmp_path, scripted_archive, monkeypatch, where, global_name
):
  # Loading a TorchScript archive unpickles its data.pkl: a global outside the allowlist raises before it is called.
  marker = tmp_path / "pwned"
  if global_name == "os.system":
    payload, refused = _RunsCommand(f"touch {marker}"), f"{os.system.__module__}.system"
  else:
    payload = _Evaluates(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    refused = "__builtin__.eval"  # as protocol 2 names builtins
  if where != "top level":
    payload = _scripted_module_holding(payload, monkeypatch)
  evil = pickle.dumps(payload, protocol=2)
  path = _with_record(scripted_archive[0], tmp_path / "evil.pt", "data.pkl", evil)
  assert torchscript.is_torchscript_archive(path)

  for load in (torchscript.load_torchscript_state_dict, torch_checkpoint.read_state_dict):
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match=re.escape(refused)):
      load(path)
  assert not marker.exists()
  # The sentinel works: Python's own unpickler runs the payload.
  pickle.loads(evil)
  assert marker.exists()


def test_a_malicious_constants_pkl_is_never_unpickled(tmp_path, scripted_archive):
  # The reader takes the state from data.pkl only: constants.pkl (TorchScript's constant table) is never unpickled.
  marker = tmp_path / "pwned"
  evil = pickle.dumps((_RunsCommand(f"touch {marker}"),), protocol=2)
  path = _with_record(scripted_archive[0], tmp_path / "evil_constants.pt", "constants.pkl", evil)

  state_dict = torchscript.load_torchscript_state_dict(path)

  assert list(state_dict) == list(scripted_archive[1].state_dict())
  assert not marker.exists()
  pickle.loads(evil)
  assert marker.exists()
