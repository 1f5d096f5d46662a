"""Loads `torch.save` files without PyTorch, never running pickled code.

`torch.save` files are pickles whose tensors point at raw storages kept next to the pickle (zip format, torch >= 1.6)
or after it (legacy format). Unpickling goes through `_RestrictedUnpickler`, whose `find_class` hands out only a fixed
allowlist of pure-data callables and markers; any other global (`os.system`, `builtins.eval`, a model class...) raises
`UnsafeCheckpointError` before anything is called. Tensors come back as numpy arrays with their dtype (bfloat16 and
float8 via `ml_dtypes`).

Config objects pickled alongside weights are turned into plain data: a yacs `CfgNode` or an `argparse.Namespace`
becomes a nested `dict`, so neither yacs nor the training code is needed to read the official X-CLIP checkpoints.

`ZipArchive` and the inert `ScriptObject` records are shared with `torchscript`, which reads TorchScript archives
through the same unpickler.
"""

import collections
from collections.abc import Callable
import io
import os
import pathlib
import pickle
import struct
import tarfile
from typing import Any
import zipfile

import ml_dtypes
import numpy as np

# Legacy (pre-1.6, non-zip) torch.save files start with this pickled number.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


class UnsafeCheckpointError(ValueError):
  """A checkpoint's pickle references a global outside the allowlist."""


class CheckpointFormatError(ValueError):
  """A checkpoint file is truncated, corrupt or not in a supported format."""


# Legacy typed-storage classes name the element type of a storage (the writer names them too).
STORAGE_DTYPES = {
  "DoubleStorage": np.dtype(np.float64),
  "FloatStorage": np.dtype(np.float32),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "ComplexFloatStorage": np.dtype(np.complex64),
  "ComplexDoubleStorage": np.dtype(np.complex128),
}

# dtypes newer than the typed-storage classes are saved as an UntypedStorage plus a
# `torch.<dtype>` global (see `_rebuild_tensor_v3`).
_TORCH_DTYPES = {
  "float64": np.dtype(np.float64),
  "float32": np.dtype(np.float32),
  "float16": np.dtype(np.float16),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
  "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
  "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
  "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
  "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
  "int64": np.dtype(np.int64),
  "int32": np.dtype(np.int32),
  "int16": np.dtype(np.int16),
  "int8": np.dtype(np.int8),
  "uint64": np.dtype(np.uint64),
  "uint32": np.dtype(np.uint32),
  "uint16": np.dtype(np.uint16),
  "uint8": np.dtype(np.uint8),
  "bool": np.dtype(np.bool_),
  "complex64": np.dtype(np.complex64),
  "complex128": np.dtype(np.complex128),
}


class _StorageType:
  """What a `torch.*Storage` global unpickles to: the element dtype of a storage."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype


class _Storage:
  """A storage's raw elements, with the dtype its storage class declares."""

  def __init__(self, key: str, elements: np.ndarray):
    self.key = key
    self.elements = elements


class _TensorClassMarker:
  """Stands for `torch.Tensor` / `torch.nn.Parameter` in `_rebuild_from_type_v2`."""


class _ConfigNode(dict):
  """A yacs `CfgNode`: its items are the config; its pickled state is yacs bookkeeping."""

  def __setstate__(self, state):
    del state  # __immutable__, __deprecated_keys__, ...: nothing a reader needs.


class _Namespace(dict):
  """An `argparse.Namespace`: its pickled state holds the parsed arguments."""

  def __setstate__(self, state):
    self.update(state)


class ScriptObject:
  """An inert record of a TorchScript object's attributes (in `attributes`); its code never runs."""

  qualified_name = ""

  def __setstate__(self, state):
    self.attributes = state if isinstance(state, dict) else {"__state__": state}


def _script_object_class(qualified_name: str) -> type:
  return type("ScriptObject", (ScriptObject,), {"qualified_name": qualified_name})


def _codecs_encode(text, encoding="utf-8", errors="strict"):
  # Protocol-2 pickles spell `bytes` as _codecs.encode(str, 'latin1').
  return text.encode(encoding, errors)


def _identity(value, *unused_args):
  return value


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles torch checkpoints, allowing only pure-data globals."""

  def __init__(self, file, *, path, storage_loader, allow_script_objects=False):
    super().__init__(file)
    self._path = path
    self._storage_loader = storage_loader
    self._allow_script_objects = allow_script_objects
    self._storages = {}
    self._storages_given_whole = set()
    self._script_classes = {}
    self._globals = self._allowed_globals()

  def _allowed_globals(self) -> dict[tuple[str, str], Any]:
    allowed = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
      ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
      ("torch._utils", "_rebuild_parameter"): _identity,
      ("torch._utils", "_rebuild_parameter_with_state"): _identity,
      ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
      ("torch._tensor", "Tensor"): _TensorClassMarker,
      ("torch", "Tensor"): _TensorClassMarker,
      ("torch.nn.parameter", "Parameter"): _TensorClassMarker,
      ("torch", "Size"): tuple,
      ("torch.storage", "UntypedStorage"): _StorageType(np.dtype(np.uint8)),
      ("torch", "UntypedStorage"): _StorageType(np.dtype(np.uint8)),
      ("yacs.config", "CfgNode"): _ConfigNode,
      ("argparse", "Namespace"): _Namespace,
      ("_codecs", "encode"): _codecs_encode,
      ("numpy", "dtype"): np.dtype,
      ("numpy", "ndarray"): np.ndarray,
      ("numpy.core.multiarray", "scalar"): _numpy_scalar,
      ("numpy._core.multiarray", "scalar"): _numpy_scalar,
      ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
      ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    }
    for name, dtype in STORAGE_DTYPES.items():
      allowed[("torch", name)] = _StorageType(dtype)
    for name, dtype in _TORCH_DTYPES.items():
      allowed[("torch", name)] = dtype
    # Protocol-2 pickles name builtins `__builtin__`.
    for module in ("builtins", "__builtin__"):
      for container in (set, frozenset, list, dict, tuple, bytearray, complex):
        allowed[(module, container.__name__)] = container
    # TorchScript tags container types with these no-op builders.
    for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "restore_type_tag"):
      allowed[("torch.jit._pickle", name)] = _identity
    return allowed

  def find_class(self, module, name):
    if self._allow_script_objects and module.split(".")[0] == "__torch__":
      qualified_name = f"{module}.{name}"
      if qualified_name not in self._script_classes:
        self._script_classes[qualified_name] = _script_object_class(qualified_name)
      return self._script_classes[qualified_name]
    try:
      return self._globals[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
        f"{self._path}: refusing to load global '{module}.{name}': it is not "
        "on the allowlist of plain tensor/config data, and unpickling it could "
        "run arbitrary code."
      ) from None

  def persistent_load(self, pid):
    # ('storage', storage_type, key, location, numel[, view_metadata]).
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise CheckpointFormatError(
        f"{self._path}: unsupported persistent id {pid!r} (expected a tensor storage reference)"
      )
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    view_metadata = pid[5] if len(pid) == 6 else None
    if key not in self._storages:
      elements = self._storage_loader(key, storage_type.dtype, numel)
      self._storages[key] = _Storage(key, elements)
    storage = self._storages[key]
    if view_metadata is None:
      return storage
    # Legacy files could reference a slice of another storage.
    view_key, offset, view_numel = view_metadata
    return _Storage(f"{key}/{view_key}", storage.elements[offset : offset + view_numel])

  def _rebuild_tensor(self, storage, storage_offset, size, stride):
    if not isinstance(storage, _Storage):
      raise CheckpointFormatError(f"{self._path}: tensor rebuilt from {type(storage).__name__}, not from a storage")
    return self._tensor_from_storage(storage, storage.elements.dtype, storage_offset, size, stride)

  def _rebuild_tensor_v2(
    self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
  ):
    del requires_grad, backward_hooks, metadata  # Training-only state.
    return self._rebuild_tensor(storage, storage_offset, size, stride)

  def _rebuild_tensor_v3(
    self, storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
  ):
    del requires_grad, backward_hooks, metadata  # Training-only state.
    if not isinstance(storage, _Storage) or not isinstance(dtype, np.dtype):
      raise CheckpointFormatError(
        f"{self._path}: malformed _rebuild_tensor_v3 arguments ({type(storage).__name__}, {dtype!r})"
      )
    return self._tensor_from_storage(storage, dtype, storage_offset, size, stride)

  def _tensor_from_storage(self, storage, dtype, offset, size, stride):
    """Returns the numpy array the (offset, size, stride) view describes."""
    size, stride = tuple(size), tuple(stride)
    elements = storage.elements
    if elements.dtype != dtype:
      if elements.dtype != np.uint8:
        raise CheckpointFormatError(
          f"{self._path}: storage {storage.key} holds {elements.dtype}, a tensor reads it as {dtype}"
        )
      if elements.size % dtype.itemsize:
        raise CheckpointFormatError(
          f"{self._path}: storage {storage.key} has {elements.size} bytes, not a whole number of {dtype} elements"
        )
      elements = elements.view(dtype)
    if len(size) != len(stride) or any(s < 0 for s in size + stride):
      raise CheckpointFormatError(f"{self._path}: bad tensor geometry size={size} stride={stride}")
    if 0 in size:
      return np.zeros(size, dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= elements.size:
      raise CheckpointFormatError(
        f"{self._path}: tensor (offset {offset}, size {size}, stride "
        f"{stride}) reaches past the end of storage {storage.key} "
        f"({elements.size} elements)"
      )
    numel = int(np.prod(size))
    if (
      offset == 0
      and numel == elements.size
      and stride == contiguous_strides(size)
      and storage.key not in self._storages_given_whole
    ):
      # The common case: the tensor is its whole storage; hand it over uncopied.
      self._storages_given_whole.add(storage.key)
      return elements.reshape(size)
    # Views of a shared storage get their own copy, so outputs never alias.
    itemsize = elements.itemsize
    view = np.lib.stride_tricks.as_strided(
      elements[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_from_type_v2(function, new_type, args, state):
  # Tensor subclasses pickle as (rebuild, type, args, state); only plain tensors and
  # parameters reach here (find_class refuses other types), so state is dropped.
  del new_type, state
  return function(*args)


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise CheckpointFormatError(f"unsupported numpy scalar dtype {dtype!r}")
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype, shape, dtype):
  if subtype is not np.ndarray:
    raise CheckpointFormatError(f"unsupported numpy array type {subtype!r}")
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
  """Element strides of a C-contiguous tensor, computed as torch does (also what the writer declares)."""
  strides = []
  running = 1
  for n in reversed(size):
    strides.append(running)
    running *= max(n, 1)
  return tuple(reversed(strides))


def _to_plain_data(value):
  """Turns config records into plain dicts, recursing through containers."""
  if isinstance(value, (_ConfigNode, _Namespace)):
    return {key: _to_plain_data(item) for key, item in value.items()}
  if isinstance(value, dict):
    for key, item in value.items():
      value[key] = _to_plain_data(item)
    return value
  if isinstance(value, list):
    return [_to_plain_data(item) for item in value]
  if isinstance(value, tuple):
    return tuple(_to_plain_data(item) for item in value)
  return value


class ZipArchive:
  """Records of a torch zip archive (`<prefix>/data.pkl`, `<prefix>/data/<key>`)."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    try:
      self._zip = zipfile.ZipFile(path)
      names = self._zip.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
      raise CheckpointFormatError(f"{path}: not a readable torch zip archive ({error})") from error
    pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
      raise CheckpointFormatError(
        f"{path}: expected exactly one '<archive>/data.pkl' record, found {pickles or 'none'}"
      )
    self.prefix = pickles[0][: -len("data.pkl")]
    self._names = set(names)

  def close(self):
    self._zip.close()

  def has(self, record: str) -> bool:
    return self.prefix + record in self._names

  def is_torchscript(self) -> bool:
    """Whether this is a TorchScript archive (`torch.jit.save`), not a torch.save file."""
    return self.has("constants.pkl") and any(name.startswith("code/") for name in self.record_names())

  def record_names(self) -> list[str]:
    return [name[len(self.prefix) :] for name in self._zip.namelist() if name.startswith(self.prefix)]

  def read(self, record: str) -> bytes:
    name = self.prefix + record
    if name not in self._names:
      raise CheckpointFormatError(f"{self.path}: record '{name}' is missing")
    try:
      return self._zip.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
      raise CheckpointFormatError(f"{self.path}: record '{name}' is corrupt ({error})") from error

  def byteorder(self) -> str:
    if not self.has("byteorder"):
      return "little"  # Archives from before the record existed are little-endian.
    order = self.read("byteorder").decode().strip()
    if order not in ("little", "big"):
      raise CheckpointFormatError(f"{self.path}: unknown byteorder {order!r}")
    return order

  def storage_loader(self) -> Callable[[str, np.dtype, int], np.ndarray]:
    order = self.byteorder()

    def load(key, dtype, numel):
      raw = self.read(f"data/{key}")
      if len(raw) < numel * dtype.itemsize:
        raise CheckpointFormatError(
          f"{self.path}: storage record data/{key} has {len(raw)} bytes, "
          f"expected {numel} x {dtype} = {numel * dtype.itemsize}"
        )
      stored = dtype.newbyteorder("<" if order == "little" else ">")
      elements = np.frombuffer(raw, dtype=stored, count=numel)
      # A writable native-order copy, so the arrays behave like any numpy array.
      return elements.astype(dtype, copy=True)

    return load

  def unpickle(self, record: str, allow_script_objects=False):
    """The object pickled in `record`, its tensors read from this archive's storages."""
    unpickler = _RestrictedUnpickler(
      io.BytesIO(self.read(record)),
      path=self.path,
      storage_loader=self.storage_loader(),
      allow_script_objects=allow_script_objects,
    )
    return _unpickle(unpickler, self.path, record)


def _unpickle(unpickler: _RestrictedUnpickler, path, what: str):
  try:
    return _to_plain_data(unpickler.load())
  except (UnsafeCheckpointError, CheckpointFormatError):
    raise
  except (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    struct.error,
    MemoryError,  # a pickle asking for a huge object, e.g. bytearray(10**14)
    OverflowError,
  ) as error:
    raise CheckpointFormatError(f"{path}: cannot unpickle {what}: {type(error).__name__}: {error}") from error


def load_torch_file(path) -> Any:
  """Loads a `torch.save` file as plain Python data with numpy arrays for tensors.

  Reads the zip format (torch >= 1.6) and the legacy pickle-stream format.

  Args:
    path: the file.

  Returns:
    The saved object: dicts (OrderedDicts stay OrderedDicts), lists, tuples,
    numbers, strings, and numpy arrays for tensors. Configs pickled as yacs
    `CfgNode` or `argparse.Namespace` come back as nested dicts.

  Raises:
    UnsafeCheckpointError: the pickle references a global that could run code.
    CheckpointFormatError: the file is truncated, corrupt, a TorchScript archive
      or in an unsupported format.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if zipfile.is_zipfile(path):
    archive = ZipArchive(path)
    try:
      if archive.is_torchscript():
        raise CheckpointFormatError(
          f"{path} is a TorchScript archive; read it with torchscript.load_torchscript_state_dict"
        )
      return archive.unpickle("data.pkl")
    finally:
      archive.close()
  with open(path, "rb") as file:
    if file.read(4) == b"PK\x03\x04":  # a zip's first entry, but no readable directory at its end
      raise CheckpointFormatError(f"{path}: a zip archive cut short (an incomplete download or copy?)")
  if tarfile.is_tarfile(path):
    raise CheckpointFormatError(
      f"{path}: the pre-2018 tar checkpoint format is not supported; re-save it with a recent torch.save"
    )
  return _load_legacy(path)


def _load_legacy(path: pathlib.Path):
  """Reads the pre-1.6 format: magic, version, sys_info, object, keys, storages."""
  with open(path, "rb") as file:
    try:
      header_unpickler = _RestrictedUnpickler(file, path=path, storage_loader=None)
      magic = header_unpickler.load()
      version = header_unpickler.load()
      sys_info = header_unpickler.load()
    except UnsafeCheckpointError:
      raise  # a plain pickle with a dangerous global: say that, not "bad format"
    except Exception as error:
      raise CheckpointFormatError(
        f"{path}: neither a torch zip archive nor a legacy torch.save file ({type(error).__name__}: {error})"
      ) from error
    if magic != _LEGACY_MAGIC_NUMBER:
      raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic number)")
    if version != _LEGACY_PROTOCOL_VERSION:
      raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {version}")
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
      raise CheckpointFormatError(f"{path}: big-endian legacy files are not supported")

    # The storages come after the object's pickle, so a first pass over it
    # learns each storage's dtype (handing out zero-filled placeholders) and the
    # second pass, once the storage offsets are known, builds the real tensors.
    object_start = file.tell()
    dtypes = {}

    def placeholder(key, dtype, numel):
      dtypes[key] = dtype
      return np.zeros(numel, dtype)

    _unpickle(_RestrictedUnpickler(file, path=path, storage_loader=placeholder), path, "the saved object")
    object_end = file.tell()
    keys = _unpickle(_RestrictedUnpickler(file, path=path, storage_loader=None), path, "the storage key list")
    offsets = {}
    for key in keys:
      header = file.read(8)
      if len(header) != 8:
        raise CheckpointFormatError(f"{path}: truncated before storage {key}")
      (numel,) = struct.unpack("<q", header)
      itemsize = dtypes.get(key, np.dtype(np.uint8)).itemsize
      offsets[key] = (file.tell(), numel)
      file.seek(numel * itemsize, os.SEEK_CUR)

    def load(key, dtype, numel):
      if key not in offsets:
        raise CheckpointFormatError(f"{path}: storage {key} is missing")
      offset, stored_numel = offsets[key]
      if stored_numel < numel:
        raise CheckpointFormatError(f"{path}: storage {key} has {stored_numel} elements, the pickle needs {numel}")
      file.seek(offset)
      raw = file.read(numel * dtype.itemsize)
      if len(raw) != numel * dtype.itemsize:
        raise CheckpointFormatError(f"{path}: truncated inside storage {key}")
      return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)

    # Storage reads move the file position, so the second pass unpickles an
    # in-memory copy of the object's pickle.
    file.seek(object_start)
    object_pickle = io.BytesIO(file.read(object_end - object_start))
    unpickler = _RestrictedUnpickler(object_pickle, path=path, storage_loader=load)
    return _unpickle(unpickler, path, "the saved object")
