"""Compiled programs, in one bounded cache.

A program is compiled once per (what it is, the config's static key, the
arguments' shapes, dtypes and shardings, the devices it runs on) and kept in a
least-recently-used cache of :data:`MAX_PROGRAMS` entries. :func:`clear_cache`
empties it; :func:`cache_info` reports hits, misses and size.

JAX keeps its own caches underneath (and, from the command line, XLA's
persistent compilation cache on disk); this one saves the lowering and gives
the compile time of each run to its summary.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

import jax

from nstjax import files, memory

MAX_PROGRAMS = 32


def signature(tree) -> tuple:
  """Hashable structure, shapes, dtypes and shardings of the arrays in ``tree``."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((tuple(x.shape), str(x.dtype), str(getattr(x, "sharding", None)))
                        for x in leaves)


class _Cache:
  def __init__(self, maxsize: int):
    self.maxsize = maxsize
    self.entries: collections.OrderedDict = collections.OrderedDict()
    self.hits = self.misses = 0
    self.lock = threading.Lock()

  def get(self, key, build: Callable[[], Any]):
    """``(program, seconds spent building it)``; 0 seconds on a hit."""
    with self.lock:
      if key in self.entries:
        self.entries.move_to_end(key)
        self.hits += 1
        return self.entries[key], 0.0
      self.misses += 1
    t0 = time.perf_counter()
    program = build()
    memory.release_host_memory()   # the compiler's freed blocks: not kept beside the run's buffers
    seconds = time.perf_counter() - t0
    with self.lock:
      self.entries[key] = program
      while len(self.entries) > self.maxsize:
        self.entries.popitem(last=False)
    return program, seconds


_CACHE = _Cache(MAX_PROGRAMS)


def compiled(kind: str, static_key, make: Callable[[], Callable], args: tuple, *, devices=None,
             donate_argnums=(), out_shardings=None):
  """``jax.jit(fn)`` lowered and compiled for ``args``; cached.

  Args:
    kind: what the program is (``"step"``, ``"terms"``, ``"batch-step"``, ...).
    static_key: the config's :meth:`~nstjax.config.StyleConfig.static_key`.
    make: returns the function to compile; called only on a miss.
    args: example arguments (their shapes, dtypes and shardings key the entry).
    devices: the devices the program is for (default: the default backend's).
    donate_argnums, out_shardings: as for ``jax.jit`` (the same for every
      call of one ``kind``).

  Returns:
    ``(compiled, seconds)``: the compiled executable (call it with arguments
    like ``args``) and the seconds lowering and compiling took (0 on a hit).
  """
  devices = tuple(devices) if devices is not None else tuple(jax.devices())
  key = (kind, static_key, signature(args), tuple(str(d) for d in devices))
  jit_kw = {} if out_shardings is None else {"out_shardings": out_shardings}
  # JAX compiles on a worker thread while this one waits; a stop signal raised
  # in the wait would leave the compilation running, and the interpreter's exit
  # then tears the runtime down under it (a segfault). The signal waits for it.
  with files.deferred_stop_signals():
    return _CACHE.get(key, lambda: jax.jit(make(), donate_argnums=donate_argnums,
                                           **jit_kw).lower(*args).compile())


def clear_cache() -> None:
  """Forgets every compiled program (and the counters)."""
  with _CACHE.lock:
    _CACHE.entries.clear()
    _CACHE.hits = _CACHE.misses = 0


def cache_info() -> dict:
  """``{"size", "maxsize", "hits", "misses"}`` of the program cache."""
  with _CACHE.lock:
    return {"size": len(_CACHE.entries), "maxsize": _CACHE.maxsize,
            "hits": _CACHE.hits, "misses": _CACHE.misses}
