"""What a device can hold, and the image-sized buffers a run keeps."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import jax


def device_capacity(device=None) -> int | None:
  """Bytes the device can use: an accelerator's memory limit, or a CPU host's available RAM.

  ``None`` where neither is reported.
  """
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    try:
      stats = device.memory_stats() or {}
    except Exception:   # backends without memory statistics
      stats = {}
    return stats.get("bytes_limit")
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


@functools.cache
def _malloc_trim():
  """glibc's ``malloc_trim``, or ``None`` (musl, macOS, Windows)."""
  try:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name).malloc_trim if name else None
  except (OSError, AttributeError):
    return None


def release_host_memory() -> bool:
  """Hands the host memory that ``free`` kept back to the operating system; whether it could.

  XLA's compiler allocates hundreds of MB of small blocks and frees them when a
  program is built; glibc keeps them in its arenas, so the process's resident
  memory stays that much higher for the rest of the run and the optimisation's
  buffers come on top. Called after each compilation (:mod:`nstjax.programs`)
  and after a run's preparation: on the project's CPU it lowers the peak RSS of
  256 and 512 px runs by about 230 MB (BENCHMARKS). A no-op without glibc.
  """
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def lbfgs_history_bytes(height: int, width: int, memory: int) -> int:
  """float32 bytes of an L-BFGS history of ``memory`` (s, y) pairs for an H x W x 3 image."""
  return 2 * memory * height * width * 3 * 4


def human(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
    if abs(n) < 1024 or unit == "PB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n:.1f} PB"
