"""Tests for xclip_jax.weights.torch_checkpoint, and that the torch checkpoint modules need neither torch nor yacs."""

import argparse
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.numpy
import torch

import xclip_jax
from xclip_jax.weights import torch_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_read_state_dict_splits_training_checkpoint(golden_dir):
  state_dict, extras = torch_checkpoint.read_state_dict(golden_dir / "xclip_official.pth")

  assert "visual.transformer.resblocks.0.message_attn.in_proj_weight" in state_dict
  assert state_dict["visual.proj"].shape == (128, 64)
  assert all(isinstance(value, np.ndarray) for value in state_dict.values())
  assert extras["config"]["MODEL"]["ARCH"] == "random-tiny"
  assert extras["epoch"] == 0
  assert "optimizer" not in extras and "lr_scheduler" not in extras


def test_argparse_namespace_becomes_dict(tmp_path):
  path = tmp_path / "with_args.pth"
  torch.save(
    {"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.5, arch="ViT-B/16", frames=[8, 16])}, path
  )

  state_dict, extras = torch_checkpoint.read_state_dict(path)

  assert list(state_dict) == ["w"]
  assert type(extras["args"]) is dict
  assert extras["args"] == {"lr": 0.5, "arch": "ViT-B/16", "frames": [8, 16]}


def test_read_state_dict_strips_data_parallel_prefix(tmp_path):
  path = tmp_path / "ddp.pth"
  torch.save({"module.visual.proj": torch.ones(2, 3), "module.logit_scale": torch.tensor(4.0)}, path)

  state_dict, extras = torch_checkpoint.read_state_dict(path)

  assert sorted(state_dict) == ["logit_scale", "visual.proj"]
  assert extras == {}


def test_an_entry_with_and_without_the_data_parallel_prefix_is_refused(tmp_path):
  path = tmp_path / "both.pth"
  torch.save({"logit_scale": torch.tensor(2.4), "module.logit_scale": torch.tensor(100.0)}, path)
  with pytest.raises(ValueError, match="entries 'logit_scale' and 'module.logit_scale' name the same parameter"):
    torch_checkpoint.read_state_dict(path)


def test_loads_without_torch_or_yacs_installed(tmp_path, golden_dir, scripted_archive, fake_yacs):
  archive_path, module = scripted_archive
  golden_state_dict = torch.load(golden_dir / "xclip_official.pth", weights_only=False)["model"]
  script = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None  # `import torch` now raises ImportError.
      sys.modules["yacs"] = None
      import numpy as np
      from xclip_jax.weights import torch_checkpoint
      from xclip_jax.weights import torchscript
      from xclip_jax.weights import torch_writer
      state_dict, extras = torch_checkpoint.read_state_dict({str(golden_dir / "xclip_official.pth")!r})
      assert extras["config"]["MODEL"]["ARCH"] == "random-tiny", extras
      scripted = torchscript.load_torchscript_state_dict({str(archive_path)!r})
      assert scripted["proj"].dtype == np.float16
      torch_writer.save_torch_state_dict(state_dict, {str(tmp_path / "out.pth")!r})
      assert "torch" not in [name for name, mod in sys.modules.items() if mod is not None]
      print(len(state_dict), len(scripted))
  """)
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
  )

  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [str(len(golden_state_dict)), str(len(module.state_dict()))]


@pytest.mark.parametrize("name", ["model.safetensors", "weights.bin"])
def test_a_safetensors_file_is_refused_asking_for_the_folder_of_the_model(tmp_path, name):
  """A Hugging Face model's weights given without their folder: its config.json says what the model is. It was 'neither
  a torch zip archive nor a legacy torch.save file (UnpicklingError: invalid load key ...)'."""
  safetensors.numpy.save_file({"text_projection": np.zeros((4, 4), np.float32)}, tmp_path / name)
  message = f"{tmp_path / name}: a safetensors file, as a Hugging Face model keeps its weights: pass the folder that "
  with pytest.raises(ValueError, match=f"^{re.escape(message)}holds it and the model's config.json$"):
    xclip_jax.load_pretrained(tmp_path / name)
