"""One image over several devices (``--shard spatial``): everything image-sized split by rows.

The image, the content targets (feature maps) and the optimiser's image-sized
vectors (the L-BFGS history, stored flat, pixel-major, so rows of the image
are contiguous runs of the flat vector) are placed on a one-axis mesh of the
devices along the image's height; everything small (the Gram targets, the
loss weights, the network) is replicated. The step is compiled as usual: XLA's
SPMD partitioner follows the inputs' shardings, exchanges the convolutions'
halos between neighbouring devices (collective-permutes) and all-reduces the
Grams' and the L-BFGS dot products' partial sums; nothing image-sized is
gathered (tested on the compiled program). The step's outputs are constrained
to the same layout, so one compiled program serves every call.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nstjax.errors import NSTError

AXIS = "rows"
SHARDS = ("none", "spatial")


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh (``rows``) of ``devices`` (default: every device of the default backend)."""
  devices = list(devices if devices is not None else jax.devices())
  return Mesh(np.asarray(devices), (AXIS,))


def check(height: int, mesh: Mesh) -> None:
  """NSTError when the image has fewer rows than the mesh has devices (or cannot be split evenly)."""
  n = mesh.devices.size
  if height % n:
    raise NSTError(f"--shard spatial splits the image's {height} rows over {n} devices: the "
                   f"height must be a multiple of {n} (choose --size accordingly)")


def spec(x, image_shape) -> P:
  """The layout of one array: image-sized ones split along their rows, others replicated.

  (h, w, C) maps (the image, content targets), (n,) flat image vectors and (m, n)
  histories with n = the image's element count.
  """
  n = int(np.prod(image_shape))
  shape = tuple(getattr(x, "shape", ()))
  if len(shape) == 3:
    return P(AXIS)
  if len(shape) == 2 and shape[1] == n:
    return P(None, AXIS)
  if len(shape) == 1 and shape[0] == n:
    return P(AXIS)
  return P()


def _sharding(x, mesh, image_shape):
  s = spec(x, image_shape)
  if s != P() and len(x.shape) == 3 and x.shape[0] % mesh.devices.size:
    return NamedSharding(mesh, P())   # a deep feature map too short to split: replicated
  return NamedSharding(mesh, s)


def place(tree, mesh: Mesh, image_shape):
  """``tree``'s arrays put on ``mesh`` in the layout :func:`spec` gives."""
  return jax.tree.map(lambda x: jax.device_put(x, _sharding(x, mesh, image_shape)), tree)


def constrain(tree, mesh: Mesh, image_shape):
  """Inside a compiled step: ``tree``'s arrays kept in :func:`spec`'s layout."""
  return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(x, _sharding(x, mesh, image_shape)), tree)
