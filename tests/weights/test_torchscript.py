"""Tests for xclip_jax.weights.torchscript: TorchScript archives read as their state_dict() without torch."""

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
