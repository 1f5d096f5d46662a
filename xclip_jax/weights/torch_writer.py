"""Writes PyTorch checkpoints in the `torch.save` zip format, without PyTorch.

The pickle's opcodes are emitted by hand (`_PickleWriter`), naming torch's tensor-rebuilding function and typed storage
classes as globals, so `torch.load(path, weights_only=True)` accepts the file; each array is stored as its own
little-endian storage record, aligned as torch aligns them.
"""

import collections
from collections.abc import Mapping
import io
import pathlib
import pickle
import struct
from typing import Any
import zipfile

import numpy as np

from xclip_jax.weights import torch_pickle

# torch.save writes pickle protocol 2; so do we, for the oldest readers.
_PICKLE_PROTOCOL = 2
# torch aligns every storage record in the zip to 64 bytes (needed for mmap loads).
_RECORD_ALIGNMENT = 64
_STORAGE_NAME_BY_DTYPE = {dtype: name for name, dtype in torch_pickle.STORAGE_DTYPES.items()}


class _PickleWriter:
  """Emits the protocol-2 opcodes of a torch.save checkpoint by hand.

  torch is not importable here, so `torch._utils._rebuild_tensor_v2` and the
  storage classes are written as GLOBAL opcodes naming them. Every array becomes
  its own storage; `arrays` collects them, in storage-key order.
  """

  def __init__(self, path):
    self._path = path
    self._out = io.BytesIO()
    self._out.write(pickle.PROTO + bytes([_PICKLE_PROTOCOL]))
    self.arrays = []

  def getvalue(self) -> bytes:
    return self._out.getvalue() + pickle.STOP

  def value(self, value, where: str):
    """Writes a checkpoint value; `where` names it in errors."""
    if value is None:
      self._out.write(pickle.NONE)
    elif isinstance(value, (bool, np.bool_)):
      self._out.write(pickle.NEWTRUE if value else pickle.NEWFALSE)
    elif isinstance(value, (int, np.integer)):
      self._integer(int(value))
    elif isinstance(value, (float, np.floating)):
      self._out.write(pickle.BINFLOAT + struct.pack(">d", float(value)))
    elif isinstance(value, str):
      self._string(value)
    elif isinstance(value, Mapping):
      self._mapping(value, where)
    else:
      self._tensor(np.asarray(value), where)

  def _global(self, module: str, name: str):
    self._out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))

  def _string(self, text: str):
    encoded = text.encode("utf-8")
    self._out.write(pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded)

  def _integer(self, value: int):
    if 0 <= value < 1 << 8:
      self._out.write(pickle.BININT1 + struct.pack("<B", value))
    elif 0 <= value < 1 << 16:
      self._out.write(pickle.BININT2 + struct.pack("<H", value))
    elif -(1 << 31) <= value < 1 << 31:
      self._out.write(pickle.BININT + struct.pack("<i", value))
    else:
      encoded = pickle.encode_long(value)
      self._out.write(pickle.LONG1 + struct.pack("<B", len(encoded)) + encoded)

  def _int_tuple(self, values):
    self._out.write(pickle.MARK)
    for value in values:
      self._integer(value)
    self._out.write(pickle.TUPLE)

  def _ordered_dict(self):
    self._global("collections", "OrderedDict")
    self._out.write(pickle.EMPTY_TUPLE + pickle.REDUCE)

  def _mapping(self, mapping: Mapping, where: str):
    if isinstance(mapping, collections.OrderedDict):
      self._ordered_dict()  # What torch's state_dict() returns.
    else:
      self._out.write(pickle.EMPTY_DICT)
    items = list(mapping.items())
    # SETITEMS batches of 1000, as pickle itself does, bound the unpickler's stack.
    for batch_start in range(0, len(items), 1000):
      self._out.write(pickle.MARK)
      for key, item in items[batch_start : batch_start + 1000]:
        if not isinstance(key, str):
          raise ValueError(f"{self._path}: key {key!r} in {where} is not a string")
        self._string(key)
        self.value(item, f"{where}['{key}']")
      self._out.write(pickle.SETITEMS)

  def _tensor(self, array: np.ndarray, where: str):
    """_rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())."""
    # Its storage is written little-endian whatever its byte order (save_torch_checkpoint).
    dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder != "|" else array.dtype
    if dtype not in _STORAGE_NAME_BY_DTYPE:
      raise ValueError(
        f"{self._path}: {where} has dtype {array.dtype}, which torch.save's "
        f"typed storages cannot hold (supported: "
        f"{sorted(str(d) for d in _STORAGE_NAME_BY_DTYPE)})"
      )
    storage_key = str(len(self.arrays))
    self.arrays.append(array)
    self._global("torch._utils", "_rebuild_tensor_v2")
    self._out.write(pickle.MARK)
    # Persistent id ('storage', torch.<X>Storage, key, 'cpu', numel).
    self._out.write(pickle.MARK)
    self._string("storage")
    self._global("torch", _STORAGE_NAME_BY_DTYPE[dtype])
    self._string(storage_key)
    self._string("cpu")
    self._integer(array.size)
    self._out.write(pickle.TUPLE + pickle.BINPERSID)
    self._integer(0)
    self._int_tuple(array.shape)
    self._int_tuple(torch_pickle.contiguous_strides(array.shape))
    self._out.write(pickle.NEWFALSE)
    self._ordered_dict()
    self._out.write(pickle.TUPLE + pickle.REDUCE)


def _aligned_zip_info(zip_file: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
  """A stored entry whose data starts on a _RECORD_ALIGNMENT boundary, as torch writes."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  header_end = zip_file.fp.tell() + 30 + len(name.encode("utf-8"))
  # A 4-byte extra-field header, then padding up to the boundary.
  padding = -(header_end + 4) % _RECORD_ALIGNMENT
  info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
  return info


def save_torch_checkpoint(checkpoint: Mapping[str, Any], path) -> None:
  """Writes a checkpoint in the torch.save zip format, without torch.

  `torch.load(path, weights_only=True)` loads it, with every array as a CPU tensor
  equal to it bit for bit. The official X-CLIP code expects `{'model': state_dict}`.

  Args:
    checkpoint: nested mappings with string keys (OrderedDicts stay OrderedDicts)
      whose leaves are arrays (anything `np.asarray` takes, of float64/32/16,
      bfloat16, (u)int8, int16/32/64, bool or complex64/128), Python or numpy
      scalars, strings or None.
    path: the file to write.

  Raises:
    ValueError: a key is not a string or an array's dtype has no torch storage type.
  """
  path = pathlib.Path(path)
  writer = _PickleWriter(path)
  writer.value(checkpoint, "the checkpoint")
  archive = "archive/"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
    out.writestr(_aligned_zip_info(out, archive + "data.pkl"), writer.getvalue())
    out.writestr(_aligned_zip_info(out, archive + "byteorder"), b"little")
    for key, array in enumerate(writer.arrays):
      little_endian = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
      out.writestr(_aligned_zip_info(out, f"{archive}data/{key}"), little_endian.tobytes())
    out.writestr(_aligned_zip_info(out, archive + "version"), b"3\n")


def save_torch_state_dict(state_dict: Mapping[str, Any], path) -> None:
  """Writes a bare state dict (`torch.load` gives an OrderedDict of tensors).

  Args:
    state_dict: {name: array}; see `save_torch_checkpoint` for the dtypes.
    path: the file to write.

  Raises:
    ValueError: a key is not a string or an array's dtype has no torch storage type.
  """
  save_torch_checkpoint(collections.OrderedDict((name, np.asarray(value)) for name, value in state_dict.items()), path)
