"""Tests for xclip_jax.torch_io: torch checkpoints read and written without torch."""

import argparse
import collections
import os
import subprocess
import sys
import textwrap
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from xclip_jax.weights import torch_io

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _assert_bitwise_equal(ours: np.ndarray, reference: np.ndarray):
  assert ours.dtype == reference.dtype
  assert ours.shape == reference.shape
  if ours.size:
    np.testing.assert_array_equal(
      ours.reshape(-1).view(np.uint8), np.ascontiguousarray(reference).reshape(-1).view(np.uint8)
    )


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


def test_golden_checkpoint_matches_torch_load(golden_dir, fake_yacs):
  path = golden_dir / "xclip_official.pth"
  reference = torch.load(path, weights_only=False)
  ours = torch_io.load_torch_file(path)

  assert set(ours) == set(reference)
  assert list(ours["model"]) == list(reference["model"])
  for name, tensor in reference["model"].items():
    _assert_bitwise_equal(ours["model"][name], _as_numpy(tensor))
  assert type(ours["config"]) is dict
  assert type(ours["config"]["MODEL"]) is dict
  assert ours["config"] == {"MODEL": {"ARCH": "random-tiny"}, "DATA": {"NUM_FRAMES": 4, "INPUT_SIZE": 32}}
  assert ours["epoch"] == reference["epoch"]
  assert ours["max_accuracy"] == reference["max_accuracy"]


def test_read_state_dict_splits_training_checkpoint(golden_dir):
  state_dict, extras = torch_io.read_state_dict(golden_dir / "xclip_official.pth")

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

  state_dict, extras = torch_io.read_state_dict(path)

  assert list(state_dict) == ["w"]
  assert type(extras["args"]) is dict
  assert extras["args"] == {"lr": 0.5, "arch": "ViT-B/16", "frames": [8, 16]}


def test_read_state_dict_strips_data_parallel_prefix(tmp_path):
  path = tmp_path / "ddp.pth"
  torch.save({"module.visual.proj": torch.ones(2, 3), "module.logit_scale": torch.tensor(4.0)}, path)

  state_dict, extras = torch_io.read_state_dict(path)

  assert sorted(state_dict) == ["logit_scale", "visual.proj"]
  assert extras == {}


class _RunsCommand:
  """Pickles as os.system(command): what a malicious checkpoint would hold."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_command_is_refused_and_not_run(tmp_path, zip_format):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save(
    {"weight": torch.ones(2), "payload": _RunsCommand(f"touch {marker}")},
    path,
    _use_new_zipfile_serialization=zip_format,
  )

  with pytest.raises(torch_io.UnsafeCheckpointError) as error:
    torch_io.load_torch_file(path)

  assert f"{os.system.__module__}.system" in str(error.value)
  assert str(path) in str(error.value)
  assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_dtypes_round_trip(tmp_path, zip_format):
  tensors = {
    "float32": torch.randn(3, 4),
    "float16": torch.randn(5).half(),
    "bfloat16": torch.randn(2, 3).bfloat16(),
    "float64": torch.randn(2).double(),
    "int64": torch.arange(-3, 3),
    "int32": torch.arange(4, dtype=torch.int32),
    "int8": torch.arange(-2, 2, dtype=torch.int8),
    "uint8": torch.arange(4, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
    "parameter": torch.nn.Parameter(torch.randn(2, 2)),
  }
  if zip_format:  # Saved as an UntypedStorage plus a dtype (_rebuild_tensor_v3).
    tensors["uint16"] = torch.tensor([1, 60000], dtype=torch.uint16)
    tensors["float8_e4m3fn"] = torch.randn(4).to(torch.float8_e4m3fn)
  path = tmp_path / "dtypes.pth"
  torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)

  loaded = torch_io.load_torch_file(path)

  expected_dtypes = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "bfloat16": ml_dtypes.bfloat16}
  for name, tensor in tensors.items():
    if name in expected_dtypes:
      raw_bits = tensor.detach().view(torch.uint8 if tensor.element_size() == 1 else torch.int16)
      reference = raw_bits.numpy().view(expected_dtypes[name])
    elif name == "uint16":
      reference = tensor.to(torch.int32).numpy().astype(np.uint16)
    else:
      reference = tensor.detach().numpy()
    _assert_bitwise_equal(loaded[name], reference)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_views_of_shared_storages_come_out_right(tmp_path, zip_format):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  tensors = {
    "base": base,
    "transposed": base.t(),
    "column": base[:, 2],
    "strided": base[1:, ::2],
    "offset_row": base[3],
    "expanded": base[0, :1].expand(3, 5),
    "half_view": torch.arange(8, dtype=torch.float16)[2:6],
  }
  tied = {"a": base, "b": base}
  path = tmp_path / "views.pth"
  torch.save({"views": tensors, "tied": tied}, path, _use_new_zipfile_serialization=zip_format)

  loaded = torch_io.load_torch_file(path)

  for name, tensor in tensors.items():
    np.testing.assert_array_equal(loaded["views"][name], tensor.numpy(), err_msg=name)
  np.testing.assert_array_equal(loaded["tied"]["a"], base.numpy())
  np.testing.assert_array_equal(loaded["tied"]["b"], base.numpy())
  # Views are copies: writing one output must not change another.
  loaded["views"]["transposed"][0, 0] = -1.0
  assert loaded["views"]["base"][0, 0] == 0.0
  assert loaded["views"]["column"].flags.writeable


def test_saved_state_dict_loads_in_torch_bit_exactly(tmp_path):
  rng = np.random.default_rng(0)
  state_dict = {
    "visual.conv1.weight": rng.standard_normal((8, 3, 4, 4)).astype(np.float32),
    "token_embedding.weight": rng.standard_normal((10, 4)).astype(np.float16),
    "bf16": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
    "float64": rng.standard_normal(3),
    "int64": np.array([-(2**40), 0, 2**62], np.int64),
    "int32": np.arange(-5, 5, dtype=np.int32),
    "bool": np.array([True, False]),
    "logit_scale": np.array(4.6052, np.float32),
    "empty": np.zeros((0, 2), np.float32),
    "non_contiguous": np.arange(12, dtype=np.float32).reshape(3, 4).T,
  }
  path = tmp_path / "exported.pth"

  torch_io.save_torch_state_dict(state_dict, path)
  loaded = torch.load(path, weights_only=True)

  assert list(loaded) == list(state_dict)
  for name, array in state_dict.items():
    _assert_bitwise_equal(_as_numpy(loaded[name]), array)
  # torch's memory-mapped loading requires the 64-byte record alignment.
  mapped = torch.load(path, weights_only=True, mmap=True)
  np.testing.assert_array_equal(mapped["visual.conv1.weight"].numpy(), state_dict["visual.conv1.weight"])
  ours = torch_io.load_torch_file(path)
  for name, array in state_dict.items():
    _assert_bitwise_equal(ours[name], array)


def test_saved_training_checkpoint_loads_in_torch(tmp_path):
  weights = np.arange(6, dtype=np.float32).reshape(2, 3)
  checkpoint = {
    "model": collections.OrderedDict(w=weights),
    "epoch": 3,
    "max_accuracy": 81.25,
    "config": {"MODEL": {"ARCH": "ViT-B/32"}, "DROPOUT": None, "AMP": True},
  }
  path = tmp_path / "official.pth"

  torch_io.save_torch_checkpoint(checkpoint, path)
  loaded = torch.load(path, weights_only=True)

  assert isinstance(loaded["model"], collections.OrderedDict)
  np.testing.assert_array_equal(loaded["model"]["w"].numpy(), weights)
  assert {key: value for key, value in loaded.items() if key != "model"} == {
    key: value for key, value in checkpoint.items() if key != "model"
  }


def test_save_rejects_what_torch_cannot_hold(tmp_path):
  with pytest.raises(ValueError, match=r"\['counts'\] has dtype uint32"):
    torch_io.save_torch_state_dict({"counts": np.zeros(2, np.uint32)}, tmp_path / "x.pth")
  with pytest.raises(ValueError, match="key 3 in the checkpoint is not a string"):
    torch_io.save_torch_state_dict({3: np.zeros(2, np.float32)}, tmp_path / "x.pth")


class _TinyBlock(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.attn = torch.nn.MultiheadAttention(8, 2)
    self.ln = torch.nn.LayerNorm(8)
    self.register_buffer("running", torch.arange(8.0))
    # A plain tensor attribute: not part of state_dict().
    self.attn_mask = torch.full((3, 3), float("-inf")).triu(1)

  def forward(self, x):
    y = self.ln(x) + self.running
    return self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]


class _TinyNet(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.proj = torch.nn.Parameter(torch.randn(8, 4))
    self.blocks = torch.nn.Sequential(_TinyBlock(), _TinyBlock())
    self.head = torch.nn.Linear(4, 2, bias=False)

  def forward(self, x):
    return self.head(self.blocks(x) @ self.proj)


@pytest.fixture
def scripted_archive(tmp_path):
  torch.manual_seed(0)
  module = torch.jit.script(_TinyNet().half())
  path = tmp_path / "tiny_scripted.pt"
  module.save(str(path))
  return path, module


@pytest.mark.parametrize("compile_mode", ["script", "trace"])
def test_torchscript_archive_gives_module_state_dict(tmp_path, compile_mode):
  torch.manual_seed(0)
  module = _TinyNet()
  if compile_mode == "script":
    compiled = torch.jit.script(module.half())
  else:
    compiled = torch.jit.trace(module, torch.randn(3, 2, 8)).half()
  path = tmp_path / f"tiny_{compile_mode}.pt"
  compiled.save(str(path))

  state_dict = torch_io.load_torchscript_state_dict(path)

  reference = torch.jit.load(str(path)).state_dict()
  assert list(state_dict) == list(reference)
  for name, tensor in reference.items():
    _assert_bitwise_equal(state_dict[name], _as_numpy(tensor))
  assert state_dict["proj"].dtype == np.float16
  assert torch_io.is_torchscript_archive(path)
  assert torch_io.read_state_dict(path)[0].keys() == state_dict.keys()


def test_torchscript_and_torch_save_are_told_apart(tmp_path, scripted_archive):
  archive_path, _ = scripted_archive
  saved_path = tmp_path / "plain.pth"
  torch.save({"w": torch.ones(1)}, saved_path)

  assert not torch_io.is_torchscript_archive(saved_path)
  with pytest.raises(torch_io.CheckpointFormatError, match="load_torchscript_state_dict"):
    torch_io.load_torch_file(archive_path)
  with pytest.raises(torch_io.CheckpointFormatError, match="load_torch_file"):
    torch_io.load_torchscript_state_dict(saved_path)


def test_loads_without_torch_or_yacs_installed(tmp_path, golden_dir, scripted_archive, fake_yacs):
  archive_path, module = scripted_archive
  golden_state_dict = torch.load(golden_dir / "xclip_official.pth", weights_only=False)["model"]
  script = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None  # `import torch` now raises ImportError.
      sys.modules["yacs"] = None
      import numpy as np
      from xclip_jax.weights import torch_io
      state_dict, extras = torch_io.read_state_dict({str(golden_dir / "xclip_official.pth")!r})
      assert extras["config"]["MODEL"]["ARCH"] == "random-tiny", extras
      scripted = torch_io.load_torchscript_state_dict({str(archive_path)!r})
      assert scripted["proj"].dtype == np.float16
      torch_io.save_torch_state_dict(state_dict, {str(tmp_path / "out.pth")!r})
      assert "torch" not in [name for name, mod in sys.modules.items() if mod is not None]
      print(len(state_dict), len(scripted))
  """)
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
  )

  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [str(len(golden_state_dict)), str(len(module.state_dict()))]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep_fraction", [0.1, 0.5, 0.9])
def test_truncated_file_raises_error_naming_it(tmp_path, zip_format, keep_fraction):
  path = tmp_path / "whole.pth"
  torch.save({"w": torch.randn(64, 64), "b": torch.randn(64)}, path, _use_new_zipfile_serialization=zip_format)
  data = path.read_bytes()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(data[: int(len(data) * keep_fraction)])

  with pytest.raises(torch_io.CheckpointFormatError, match="truncated.pth"):
    torch_io.load_torch_file(truncated)


def test_flipped_byte_raises_error_naming_file(tmp_path):
  path = tmp_path / "flipped.pth"
  torch_io.save_torch_state_dict({"w": np.ones(4, np.float32)}, path)
  data = bytearray(path.read_bytes())
  data[data.index(b"_rebuild_tensor_v2")] ^= 0xFF
  path.write_bytes(bytes(data))

  with pytest.raises(torch_io.CheckpointFormatError, match=r"flipped.pth.*corrupt"):
    torch_io.load_torch_file(path)


def test_short_storage_record_raises_error_naming_it(tmp_path):
  whole = tmp_path / "whole.pth"
  torch.save({"w": torch.ones(16)}, whole)
  path = tmp_path / "short_record.pth"
  with zipfile.ZipFile(whole) as source, zipfile.ZipFile(path, "w") as target:
    for name in source.namelist():
      data = source.read(name)
      target.writestr(name, data[:8] if name.endswith("data/0") else data)

  with pytest.raises(torch_io.CheckpointFormatError, match=r"short_record.pth.*data/0"):
    torch_io.load_torch_file(path)


def test_not_a_checkpoint_raises_error_naming_it(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("hello, not a checkpoint")

  with pytest.raises(torch_io.CheckpointFormatError, match="notes.txt"):
    torch_io.load_torch_file(path)
