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

Across hosts (``jax.distributed`` initialised first: ``nstjax stylize
--distributed``), the mesh is every process's devices: each process holds its
own rows, every process runs the same loop and calls the same programs in the
same order, and the few decisions a process could take alone (steps per call,
stopping on a signal) are agreed first (:func:`agree_max`,
:func:`agree_first`). Only :func:`to_host` gathers the whole image: for the
result, a snapshot, the next scale's start.
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


def multiprocess() -> bool:
  """Whether this run spans several processes (``jax.distributed`` initialised with more than one)."""
  return jax.process_count() > 1


def _put(x, sharding):
  if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)   # (a global array already spans the processes)
  # Across processes each one builds only its own shards, from its copy of ``x``
  # (every process computed the same value).
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(tree, mesh: Mesh, image_shape):
  """``tree``'s arrays put on ``mesh`` in the layout :func:`spec` gives."""
  return jax.tree.map(lambda x: _put(x, _sharding(x, mesh, image_shape)), tree)


def to_host(x) -> np.ndarray:
  """``x`` as one host array on every process (a collective when ``x`` spans processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def agree_max(value: int) -> int:
  """The largest of every process's ``value`` (a collective: every process must call it)."""
  if not multiprocess():
    return int(value)
  from jax.experimental import multihost_utils
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def agree_first(value: int) -> int:
  """Process 0's ``value``, on every process (a collective: every process must call it)."""
  if not multiprocess():
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def constrain(tree, mesh: Mesh, image_shape):
  """Inside a compiled step: ``tree``'s arrays kept in :func:`spec`'s layout."""
  return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(x, _sharding(x, mesh, image_shape)), tree)
