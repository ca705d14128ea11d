"""nstjax's converted weights format: one HDF5 file per network.

Layout (the one the PyTorch comparison program reads too, so both programs
can load the same file)::

    convB_I/kernel   float32 (3, 3, Cin, Cout)   HWIO, cross-correlation
    convB_I/bias     float32 (Cout,)
    attrs: arch            'vgg16' | 'vgg19'
           preprocessing   'caffe' | 'torch'
           source          registry name or description of the source file
           source_sha256   sha256 of the source file
           format          'nstjax-vgg/1'
           widths          (optional) per-block channels of a reduced test net
           normalized      (optional) filter-mean normalisation record (JSON)

This is the only format the library reads; everything else goes through a
converter in :mod:`nstjax.weights.convert`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import jax.numpy as jnp
import numpy as np

from nstjax.errors import NSTError
from nstjax.files import atomic_write
from nstjax.vgg import BLOCKS, PREPROCESSINGS, VGGParams, conv_layers

FORMAT = "nstjax-vgg/1"


def sha256_file(path, chunk=1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def _attr_str(v):
  if v is None:
    return None
  if isinstance(v, bytes):
    return v.decode()
  if isinstance(v, np.ndarray) and v.shape == ():
    v = v.item()
  return v if isinstance(v, str) else str(v)


def check_params(arch, convs, *, widths=None, where="weights", only=False):
  """Checks a ``{name: (kernel, bias)}`` table against the architecture.

  Raises NSTError naming the first layer that is missing or mis-shaped. With
  ``only``, checks just the layers present.
  """
  expected = conv_layers(arch, widths)
  extra = sorted(set(convs) - {n for n, _, _ in expected})
  if extra:
    raise NSTError(f"{where}: unexpected layers {extra} for {arch}")
  for name, c_in, c_out in expected:
    if only and name not in convs:
      continue
    if name not in convs:
      raise NSTError(f"{where}: {arch} layer {name} is missing")
    k, b = convs[name]
    if tuple(k.shape) != (3, 3, c_in, c_out):
      raise NSTError(f"{where}: {name} kernel: expected shape {(3, 3, c_in, c_out)}, "
                     f"found {tuple(k.shape)}")
    if tuple(b.shape) != (c_out,):
      raise NSTError(f"{where}: {name} bias: expected shape {(c_out,)}, found {tuple(b.shape)}")
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(b))):
      raise NSTError(f"{where}: {name} has non-finite values")


def arrays_digest(arch, convs, widths=None) -> str:
  """sha256 over every kernel and bias (float32, little-endian) in network order."""
  h = hashlib.sha256()
  for name, _, _ in conv_layers(arch, widths):
    k, b = convs[name]
    for a in (k, b):
      h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
  return h.hexdigest()


def write(path, arch, convs, *, preprocessing, source, source_sha256, widths=None,
          extra_attrs=None, extra_datasets=None):
  """Writes ``{name: (kernel_hwio, bias)}`` atomically in the nstjax layout."""
  if preprocessing not in PREPROCESSINGS:
    raise NSTError(f"unknown preprocessing {preprocessing!r}")
  check_params(arch, convs, widths=widths, where=str(path))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  def fill(tmp):
    with h5py.File(tmp, "w") as f:
      f.attrs["format"] = FORMAT
      f.attrs["arch"] = arch
      f.attrs["preprocessing"] = preprocessing
      f.attrs["source"] = source
      f.attrs["source_sha256"] = source_sha256
      f.attrs["arrays_sha256"] = arrays_digest(arch, convs, widths)
      if widths is not None:
        f.attrs["widths"] = np.asarray(widths, np.int64)
      for key, value in (extra_attrs or {}).items():
        f.attrs[key] = value if isinstance(value, str) else json.dumps(value)
      for name, _, _ in conv_layers(arch, widths):
        k, b = convs[name]
        f.create_dataset(f"{name}/kernel", data=np.asarray(k, np.float32))
        f.create_dataset(f"{name}/bias", data=np.asarray(b, np.float32))
      for key, value in (extra_datasets or {}).items():
        f.create_dataset(key, data=value)
  atomic_write(path, fill)
  return path


def write_params(path, params: VGGParams, info: dict, **kwargs):
  """Writes loaded :class:`VGGParams` back with ``info``'s provenance."""
  convs = {n: (np.asarray(p["kernel"]), np.asarray(p["bias"])) for n, p in params.convs.items()}
  widths = tuple(info["widths"]) if info.get("widths") else None
  return write(path, params.arch, convs, preprocessing=params.preprocessing,
               source=info.get("source", "unknown"), source_sha256=info.get("source_sha256", ""),
               widths=widths, **kwargs)


def read_info(path) -> dict:
  """The file's attributes (arch, preprocessing, source, ...) without the arrays."""
  path = _check_file(path)
  with _open(path) as f:
    info = {k: _attr_str(v) if k != "widths" else tuple(int(x) for x in v)
            for k, v in f.attrs.items()}
  info["path"] = str(path)
  if "normalized" in info:
    info["normalized"] = json.loads(info["normalized"])
  return info


def _check_file(path):
  path = Path(path)
  if not path.exists():
    raise NSTError(f"weights file {path} does not exist")
  if path.is_dir():
    raise NSTError(f"weights path {path} is a directory, not a file")
  if not h5py.is_hdf5(path):
    raise NSTError(f"weights file {path} is not an HDF5 file "
                   f"(convert it first: nstjax weights convert)")
  return path


def _open(path):
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise NSTError(f"cannot read weights file {path}: {e}") from None


def read(path) -> tuple[VGGParams, dict]:
  """Loads a converted file as :class:`VGGParams` plus its attributes.

  Every layer's presence and shape is checked against the file's ``arch``.
  """
  path = _check_file(path)
  try:
    with _open(path) as f:
      arch = _attr_str(f.attrs.get("arch"))
      if arch not in BLOCKS:
        raise NSTError(f"weights file {path}: attribute 'arch' is {arch!r}, expected "
                       f"one of {sorted(BLOCKS)} (is this an nstjax weights file?)")
      preprocessing = _attr_str(f.attrs.get("preprocessing"))
      if preprocessing not in PREPROCESSINGS:
        raise NSTError(f"weights file {path}: attribute 'preprocessing' is "
                       f"{preprocessing!r}, expected one of {PREPROCESSINGS}")
      widths = f.attrs.get("widths")
      widths = tuple(int(w) for w in widths) if widths is not None else None
      convs, digest = {}, hashlib.sha256()
      for name, _, _ in conv_layers(arch, widths):
        if f"{name}/kernel" not in f or f"{name}/bias" not in f:
          raise NSTError(f"weights file {path}: {arch} layer {name} is missing")
        layer = {name: (np.asarray(f[f"{name}/kernel"], np.float32),
                        np.asarray(f[f"{name}/bias"], np.float32))}
        check_params(arch, layer, widths=widths, where=f"weights file {path}", only=True)
        for a in layer[name]:
          digest.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
        # Layer by layer onto the device: the host copy of the whole net never
        # coexists with the device copy.
        convs[name] = {"kernel": jnp.asarray(layer[name][0]), "bias": jnp.asarray(layer[name][1])}
  except (OSError, KeyError, ValueError) as e:
    raise NSTError(f"cannot read weights file {path}: {e}") from None
  info = read_info(path)
  recorded = info.get("arrays_sha256")
  if recorded is not None and recorded != digest.hexdigest():
    source = str(info.get("source") or "")
    how = (f"fetch it again: nstjax weights fetch {source} --force" if source and ":" not in source
           else "convert its source again: nstjax weights convert")
    raise NSTError(f"weights file {path} is damaged: its arrays no longer match the digest "
                   f"recorded when it was converted; {how}")
  return VGGParams(convs=convs, arch=arch, preprocessing=preprocessing,
                   normalized="normalized" in info), info
