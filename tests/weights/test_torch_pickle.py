"""Tests for xclip_jax.weights.torch_pickle: torch.save files read without torch, never running pickled code."""

import os
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from tests.weights import torch_reference
from xclip_jax.weights import torch_pickle
from xclip_jax.weights import torch_writer


def test_golden_checkpoint_matches_torch_load(golden_dir, fake_yacs):
  path = golden_dir / "xclip_official.pth"
  reference = torch.load(path, weights_only=False)
  ours = torch_pickle.load_torch_file(path)

  assert set(ours) == set(reference)
  assert list(ours["model"]) == list(reference["model"])
  for name, tensor in reference["model"].items():
    torch_reference.assert_bitwise_equal(ours["model"][name], torch_reference.as_numpy(tensor))
  assert type(ours["config"]) is dict
  assert type(ours["config"]["MODEL"]) is dict
  assert ours["config"] == {"MODEL": {"ARCH": "random-tiny"}, "DATA": {"NUM_FRAMES": 4, "INPUT_SIZE": 32}}
  assert ours["epoch"] == reference["epoch"]
  assert ours["max_accuracy"] == reference["max_accuracy"]


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

  with pytest.raises(torch_pickle.UnsafeCheckpointError) as error:
    torch_pickle.load_torch_file(path)

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

  loaded = torch_pickle.load_torch_file(path)

  expected_dtypes = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "bfloat16": ml_dtypes.bfloat16}
  for name, tensor in tensors.items():
    if name in expected_dtypes:
      raw_bits = tensor.detach().view(torch.uint8 if tensor.element_size() == 1 else torch.int16)
      reference = raw_bits.numpy().view(expected_dtypes[name])
    elif name == "uint16":
      reference = tensor.to(torch.int32).numpy().astype(np.uint16)
    else:
      reference = tensor.detach().numpy()
    torch_reference.assert_bitwise_equal(loaded[name], reference)


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

  loaded = torch_pickle.load_torch_file(path)

  for name, tensor in tensors.items():
    np.testing.assert_array_equal(loaded["views"][name], tensor.numpy(), err_msg=name)
  np.testing.assert_array_equal(loaded["tied"]["a"], base.numpy())
  np.testing.assert_array_equal(loaded["tied"]["b"], base.numpy())
  # Views are copies: writing one output must not change another.
  loaded["views"]["transposed"][0, 0] = -1.0
  assert loaded["views"]["base"][0, 0] == 0.0
  assert loaded["views"]["column"].flags.writeable


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep_fraction", [0.1, 0.5, 0.9])
def test_truncated_file_raises_error_naming_it(tmp_path, zip_format, keep_fraction):
  path = tmp_path / "whole.pth"
  torch.save({"w": torch.randn(64, 64), "b": torch.randn(64)}, path, _use_new_zipfile_serialization=zip_format)
  data = path.read_bytes()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(data[: int(len(data) * keep_fraction)])

  with pytest.raises(torch_pickle.CheckpointFormatError, match="truncated.pth"):
    torch_pickle.load_torch_file(truncated)


def test_flipped_byte_raises_error_naming_file(tmp_path):
  path = tmp_path / "flipped.pth"
  torch_writer.save_torch_state_dict({"w": np.ones(4, np.float32)}, path)
  data = bytearray(path.read_bytes())
  data[data.index(b"_rebuild_tensor_v2")] ^= 0xFF
  path.write_bytes(bytes(data))

  with pytest.raises(torch_pickle.CheckpointFormatError, match=r"flipped.pth.*corrupt"):
    torch_pickle.load_torch_file(path)


def test_short_storage_record_raises_error_naming_it(tmp_path):
  whole = tmp_path / "whole.pth"
  torch.save({"w": torch.ones(16)}, whole)
  path = tmp_path / "short_record.pth"
  with zipfile.ZipFile(whole) as source, zipfile.ZipFile(path, "w") as target:
    for name in source.namelist():
      data = source.read(name)
      target.writestr(name, data[:8] if name.endswith("data/0") else data)

  with pytest.raises(torch_pickle.CheckpointFormatError, match=r"short_record.pth.*data/0"):
    torch_pickle.load_torch_file(path)


def test_not_a_checkpoint_raises_error_naming_it(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("hello, not a checkpoint")

  with pytest.raises(torch_pickle.CheckpointFormatError, match="notes.txt"):
    torch_pickle.load_torch_file(path)
