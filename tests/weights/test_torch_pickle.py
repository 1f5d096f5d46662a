"""Tests for xclip_jax.weights.torch_pickle: torch.save files read without torch, never running pickled code."""

import io
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


@pytest.mark.parametrize("keep_fraction", [0.1, 0.5, 0.9])
def test_a_zip_cut_short_is_named_as_such(tmp_path, keep_fraction):
  path = tmp_path / "whole.pth"
  torch.save({"w": torch.randn(64, 64)}, path)
  data = path.read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: int(len(data) * keep_fraction)])
  with pytest.raises(torch_pickle.CheckpointFormatError, match=r"cut\.pth: a zip archive cut short"):
    torch_pickle.load_torch_file(tmp_path / "cut.pth")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_asking_for_more_memory_than_there_is_is_a_format_error(tmp_path, zip_format):
  # 38 bytes that build bytearray(10**14) (100 TB) when unpickled.
  bomb = b"\x80\x02c__builtin__\nbytearray\nq\x00\x8a\x06\x00@z\x10\xf3Z\x85q\x01Rq\x02."
  path = tmp_path / "bomb.pth"
  if zip_format:
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("bomb/data.pkl", bomb)
  else:
    path.write_bytes(bomb)
  with pytest.raises(torch_pickle.CheckpointFormatError, match=r"bomb\.pth: .*MemoryError"):
    torch_pickle.load_torch_file(path)


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


# Every global a checkpoint's pickle may name, written out: adding one to the unpickler's allowlist fails this test.
ALLOWED_GLOBALS = {
  ("collections", "OrderedDict"),
  ("torch._utils", "_rebuild_tensor"),
  ("torch._utils", "_rebuild_tensor_v2"),
  ("torch._utils", "_rebuild_tensor_v3"),
  ("torch._utils", "_rebuild_parameter"),
  ("torch._utils", "_rebuild_parameter_with_state"),
  ("torch._tensor", "_rebuild_from_type_v2"),
  ("torch._tensor", "Tensor"),
  ("torch", "Tensor"),
  ("torch.nn.parameter", "Parameter"),
  ("torch", "Size"),
  ("torch.storage", "UntypedStorage"),
  ("torch", "UntypedStorage"),
  ("yacs.config", "CfgNode"),
  ("argparse", "Namespace"),
  ("_codecs", "encode"),
  ("numpy", "dtype"),
  ("numpy", "ndarray"),
  ("numpy.core.multiarray", "scalar"),
  ("numpy._core.multiarray", "scalar"),
  ("numpy.core.multiarray", "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"),
  ("torch", "DoubleStorage"),
  ("torch", "FloatStorage"),
  ("torch", "HalfStorage"),
  ("torch", "BFloat16Storage"),
  ("torch", "LongStorage"),
  ("torch", "IntStorage"),
  ("torch", "ShortStorage"),
  ("torch", "CharStorage"),
  ("torch", "ByteStorage"),
  ("torch", "BoolStorage"),
  ("torch", "ComplexFloatStorage"),
  ("torch", "ComplexDoubleStorage"),
  ("torch", "float64"),
  ("torch", "float32"),
  ("torch", "float16"),
  ("torch", "bfloat16"),
  ("torch", "float8_e4m3fn"),
  ("torch", "float8_e4m3fnuz"),
  ("torch", "float8_e5m2"),
  ("torch", "float8_e5m2fnuz"),
  ("torch", "int64"),
  ("torch", "int32"),
  ("torch", "int16"),
  ("torch", "int8"),
  ("torch", "uint64"),
  ("torch", "uint32"),
  ("torch", "uint16"),
  ("torch", "uint8"),
  ("torch", "bool"),
  ("torch", "complex64"),
  ("torch", "complex128"),
  ("builtins", "set"),
  ("builtins", "frozenset"),
  ("builtins", "list"),
  ("builtins", "dict"),
  ("builtins", "tuple"),
  ("builtins", "bytearray"),
  ("builtins", "complex"),
  ("__builtin__", "set"),
  ("__builtin__", "frozenset"),
  ("__builtin__", "list"),
  ("__builtin__", "dict"),
  ("__builtin__", "tuple"),
  ("__builtin__", "bytearray"),
  ("__builtin__", "complex"),
  ("torch.jit._pickle", "build_intlist"),
  ("torch.jit._pickle", "build_doublelist"),
  ("torch.jit._pickle", "build_boollist"),
  ("torch.jit._pickle", "build_tensorlist"),
  ("torch.jit._pickle", "restore_type_tag"),
}


def _unpickler(allow_script_objects=False):
  return torch_pickle._RestrictedUnpickler(
    io.BytesIO(b""), path="pinned.pth", storage_loader=None, allow_script_objects=allow_script_objects
  )


@pytest.mark.parametrize("allow_script_objects", [False, True], ids=["torch.save", "torchscript"])
def test_the_allowlist_is_exactly_the_pinned_globals(allow_script_objects):
  # The claim that unpickling runs no code rests on this list: every entry is a pure-data builder or a marker.
  unpickler = _unpickler(allow_script_objects)
  assert set(unpickler._globals) == ALLOWED_GLOBALS
  for module, name in sorted(ALLOWED_GLOBALS):
    unpickler.find_class(module, name)
  for module, name in [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "getattr"),
    ("__builtin__", "eval"),
    ("torch", "load"),
    ("numpy", "load"),
    ("subprocess", "Popen"),
    ("torch.nn.modules.linear", "Linear"),
    ("__main__", "Model"),
  ]:
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match=f"{module}.{name}"):
      unpickler.find_class(module, name)


def test_only_torchscript_archives_get_inert_records_of_their_torch_classes():
  # `__torch__.*` names stand for TorchScript's own module classes: inert records in archives, refused elsewhere.
  record_class = _unpickler(allow_script_objects=True).find_class("__torch__.model", "CLIP")
  assert issubclass(record_class, torch_pickle.ScriptObject) and record_class.qualified_name == "__torch__.model.CLIP"
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="__torch__.model.CLIP"):
    _unpickler().find_class("__torch__.model", "CLIP")
