"""Tests for xclip_jax.weights.torch_writer: torch.save checkpoints written without torch."""

import collections
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from tests.weights import torch_reference
from xclip_jax.weights import torch_pickle
from xclip_jax.weights import torch_writer


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

  torch_writer.save_torch_state_dict(state_dict, path)
  loaded = torch.load(path, weights_only=True)

  assert list(loaded) == list(state_dict)
  for name, array in state_dict.items():
    torch_reference.assert_bitwise_equal(torch_reference.as_numpy(loaded[name]), array)
  # Memory-mapped loading reads the tensors in place, from the records' offsets.
  mapped = torch.load(path, weights_only=True, mmap=True)
  np.testing.assert_array_equal(mapped["visual.conv1.weight"].numpy(), state_dict["visual.conv1.weight"])
  ours = torch_pickle.load_torch_file(path)
  for name, array in state_dict.items():
    torch_reference.assert_bitwise_equal(ours[name], array)


def test_every_record_starts_on_a_64_byte_boundary_as_torch_writes_them(tmp_path):
  # Arrays and names of odd byte lengths, so that records written back to back would not stay aligned.
  state_dict = {"a": np.ones(3, np.float16), "bias_of_odd_name": np.ones(1, np.int8), "c": np.ones((5, 7), np.float32)}
  path = tmp_path / "aligned.pth"
  torch_writer.save_torch_state_dict(state_dict, path)

  file_bytes = path.read_bytes()
  data_offsets = {}
  with zipfile.ZipFile(path) as archive:
    for info in archive.infolist():
      # A local file header: 30 bytes, the name, then the extra field, then the data.
      signature, *_, name_length, extra_length = struct.unpack_from("<4s5H3I2H", file_bytes, info.header_offset)
      assert signature == b"PK\x03\x04"
      data_offsets[info.filename] = info.header_offset + 30 + name_length + extra_length
  assert {f"archive/data/{key}" for key in range(3)} <= set(data_offsets)
  assert {name: offset % 64 for name, offset in data_offsets.items()} == dict.fromkeys(data_offsets, 0)


def test_saved_training_checkpoint_loads_in_torch(tmp_path):
  weights = np.arange(6, dtype=np.float32).reshape(2, 3)
  checkpoint = {
    "model": collections.OrderedDict(w=weights),
    "epoch": 3,
    "max_accuracy": 81.25,
    "config": {"MODEL": {"ARCH": "ViT-B/32"}, "DROPOUT": None, "AMP": True},
  }
  path = tmp_path / "official.pth"

  torch_writer.save_torch_checkpoint(checkpoint, path)
  loaded = torch.load(path, weights_only=True)

  assert isinstance(loaded["model"], collections.OrderedDict)
  np.testing.assert_array_equal(loaded["model"]["w"].numpy(), weights)
  assert {key: value for key, value in loaded.items() if key != "model"} == {
    key: value for key, value in checkpoint.items() if key != "model"
  }


def test_save_rejects_what_torch_cannot_hold(tmp_path):
  with pytest.raises(ValueError, match=r"\['counts'\] has dtype uint32"):
    torch_writer.save_torch_state_dict({"counts": np.zeros(2, np.uint32)}, tmp_path / "x.pth")
  with pytest.raises(ValueError, match="key 3 in the checkpoint is not a string"):
    torch_writer.save_torch_state_dict({3: np.zeros(2, np.float32)}, tmp_path / "x.pth")


def test_big_endian_arrays_and_integers_of_every_width_load_in_torch(tmp_path):
  checkpoint = {"model": {"w": np.arange(4, dtype=">f4")}, "step": 100000, "small": 7, "epoch": 300, "big": -(2**40)}
  torch_writer.save_torch_checkpoint(checkpoint, tmp_path / "ckpt.pth")
  loaded = torch.load(tmp_path / "ckpt.pth", weights_only=True)
  np.testing.assert_array_equal(loaded["model"]["w"].numpy(), [0.0, 1.0, 2.0, 3.0])
  assert (loaded["step"], loaded["small"], loaded["epoch"], loaded["big"]) == (100000, 7, 300, -(2**40))
