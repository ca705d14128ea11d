"""Shared fixtures: tiny random VGGs, small images; strict JAX dtype and rank promotion for the
whole suite (the one exception, inside optax's Adam update, is confined in nstjax.optim)."""

import os
import sys
from pathlib import Path

collect_ignore = ["data"]   # scripts that regenerate fixtures, not tests

# The PyTorch peer (../shared/peer) sits beside the checkout here and in CI.
PEER_DIR = Path(os.environ.get("NSTJAX_PEER", Path(__file__).resolve().parents[2] / "shared" / "peer"))
if PEER_DIR.is_dir():
  sys.path.append(str(PEER_DIR))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "NSTJAX_HOME" not in os.environ:   # never touch the user's cache (weights, XLA cache)
  import tempfile
  os.environ["NSTJAX_HOME"] = tempfile.mkdtemp(prefix="nstjax-tests-")

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

from nstjax import vgg  # noqa: E402
from nstjax.weights import format as wformat  # noqa: E402

TINY_WIDTHS = (4, 6, 8, 8, 8)


def tiny_convs(arch="vgg19", widths=TINY_WIDTHS, seed=0):
  """{name: (kernel HWIO, bias)} of a reduced-width VGG, numpy float32."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, c_in, c_out in vgg.conv_layers(arch, widths):
    k = rng.standard_normal((3, 3, c_in, c_out)).astype(np.float32) * np.float32(np.sqrt(2 / (9 * c_in)))
    b = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
    out[name] = (k, b)
  return out


@pytest.fixture(scope="session")
def tiny_weights_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "tiny_vgg19.h5"
  return wformat.write(path, "vgg19", tiny_convs(), preprocessing="torch",
                       source="test:tiny", source_sha256="0" * 64, widths=TINY_WIDTHS)


@pytest.fixture(scope="session")
def tiny_net(tiny_weights_file):
  params, _ = wformat.read(tiny_weights_file)
  return params


def smooth_image(h, w, seed):
  """A smooth, image-like random RGB array in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  chans = [0.5 + 0.25 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * yy + rng.uniform(0.5, 2) * xx)
                               + rng.uniform(0, 6)) for _ in range(3)]
  img = np.stack(chans, -1) + 0.1 * rng.random((h, w, 3))
  return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture
def content32():
  return smooth_image(32, 40, 1)


@pytest.fixture
def style32():
  return smooth_image(36, 32, 2)


@pytest.fixture
def image_files(tmp_path, content32, style32):
  from nstjax.image import save_image
  return save_image(content32, tmp_path / "content.png"), save_image(style32, tmp_path / "style.png")


def communicate_all(procs, timeout):
  """Every process's (stdout, stderr); any still running when this fails is killed (a failed
  multi-process test must not leave processes waiting in a collective)."""
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def free_port() -> int:
  """A TCP port on loopback that nothing listens on now (for jax.distributed's coordinator)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
