"""Fixtures of the torch checkpoint tests."""

import sys
import types

import pytest
import torch

from tests.weights import torch_reference


@pytest.fixture
def fake_yacs(monkeypatch):
  """A stand-in yacs.config.CfgNode, so torch.load can build the reference."""
  yacs = types.ModuleType("yacs")
  config = types.ModuleType("yacs.config")

  class CfgNode(dict):
    pass

  CfgNode.__module__ = "yacs.config"
  config.CfgNode = CfgNode
  yacs.config = config
  monkeypatch.setitem(sys.modules, "yacs", yacs)
  monkeypatch.setitem(sys.modules, "yacs.config", config)


@pytest.fixture
def scripted_archive(tmp_path):
  torch.manual_seed(0)
  module = torch.jit.script(torch_reference.TinyNet().half())
  path = tmp_path / "tiny_scripted.pt"
  module.save(str(path))
  return path, module
