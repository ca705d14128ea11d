"""Writing files so that a failure never leaves a partial or damaged one.

Every file nstjax writes (images, summaries, converted weights) goes through
:func:`atomic_write`: the data is written to a temporary name beside the target
and renamed onto it only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import threading
from pathlib import Path

from nstjax.errors import NSTError


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, n))


def _swap_stop_handlers(recorder) -> dict:
  """Puts ``recorder`` in place of every stop signal's Python handler; returns the handlers."""
  swapped = {}
  for sig in _STOP_SIGNALS:
    handler = signal.getsignal(sig)
    if callable(handler):
      swapped[sig] = handler
      signal.signal(sig, recorder)
  return swapped


def _restore_stop_handlers(swapped: dict) -> None:
  for sig, handler in swapped.items():
    signal.signal(sig, handler)


@contextlib.contextmanager
def deferred_stop_signals():
  """Stop signals (SIGINT, SIGTERM, SIGHUP) with Python handlers wait until the block ends.

  A compiled call that donates its inputs must hand its outputs back before a
  stop request is raised: one raised inside JAX's Python code after the call
  would lose both the donated state and the new one; a compilation (on JAX's
  worker thread) must finish before the process may exit. Handlers are swapped for
  a recorder (main thread only) and the first recorded signal is delivered to
  its own handler when the block ends.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  swapped = _swap_stop_handlers(lambda signum, frame: received.append((signum, frame)))
  try:
    yield
  finally:
    _restore_stop_handlers(swapped)
    if received:
      signum, frame = received[0]
      swapped[signum](signum, frame)


@contextlib.contextmanager
def agreed_stop_signals(agree):
  """Stop signals are recorded in the block and acted on only where every process agrees.

  For processes that step one image together (``--shard spatial`` across
  hosts): one stopping alone would leave the others waiting in a collective.
  Handlers are swapped for a recorder (main thread only); the block gets a
  ``check()`` to call where all processes are at the same point (after each
  compiled call): it asks ``agree(signum or 0)`` (a collective returning the
  largest over the processes) and, if any process received a stop signal,
  every process calls its own handler for that signal, as if it had received
  it. A signal received after the last check is delivered when the block ends.
  """
  if threading.current_thread() is not threading.main_thread():
    yield lambda: None
    return
  received = []
  swapped = _swap_stop_handlers(lambda signum, frame: received.append(signum))

  def check():
    signum = agree(received[0] if received else 0)
    if signum:
      received.clear()
      _restore_stop_handlers(swapped)
      if signum not in swapped:
        raise KeyboardInterrupt
      swapped[signum](signum, None)

  try:
    yield check
  finally:
    _restore_stop_handlers(swapped)
  if received:
    swapped[received[0]](received[0], None)


def atomic_write(path, write, suffix: str = "") -> Path:
  """Calls ``write(tmp)`` on a temporary path beside ``path``, then renames it onto ``path``.

  A failure or a stop request at any moment leaves ``path`` as it was (or
  complete) and no partial file. A function, not a context manager, on
  purpose: a signal handler raising at the entry of a ``with`` statement's
  ``__exit__`` would skip the clean-up (one did, in a save-every snapshot).
  The temporary name is chosen before anything is created, and everything
  that can create the file is inside the ``try`` that removes it. (Holding
  the signals instead does not work: in a process with other threads, as
  every JAX process has, a blocked signal is delivered to another thread and
  its Python handler still runs in the main thread.)
  """
  path = Path(path)
  # A short prefix keeps the temporary name within the file system's name limit
  # (255 bytes) whatever the target's length; the random part keeps it unique.
  while True:
    tmp = path.parent / f".{path.name[:48]}.{secrets.token_hex(6)}{suffix[:16]}.part"
    if not os.path.lexists(tmp):
      break
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  return path


def write_json(path, data: dict) -> Path:
  """Writes ``data`` as indented JSON, atomically; NSTError (one line) if that fails."""
  path = Path(path)
  try:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
  except OSError as e:
    raise NSTError(f"cannot write {path}: {e.strerror or e}") from None
  return path


def read_json_object(path, what: str) -> dict:
  """A JSON file holding an object; NSTError naming ``what`` if unreadable or not an object."""
  try:
    data = json.loads(Path(path).read_text())
  except (OSError, ValueError) as e:
    raise NSTError(f"cannot read {what} {path}: {e}") from None
  if not isinstance(data, dict):
    raise NSTError(f"{what} {path}: expected a JSON object")
  return data


NAME_MAX = 255   # bytes in one path component on Linux, macOS and Windows file systems


def check_name_length(path) -> None:
  """NSTError if ``path``'s last component is longer than file systems allow."""
  name = Path(path).name
  if len(name.encode()) > NAME_MAX:
    raise NSTError(f"file name {name[:40]}... is {len(name.encode())} bytes; file systems allow "
                   f"{NAME_MAX}")


def check_writable_file(path, what: str = "output") -> Path:
  """NSTError unless a file can be written at ``path`` (checked before any compute)."""
  path = Path(path)
  check_name_length(path)
  if path.is_dir():
    raise NSTError(f"{what} {path} is a directory")
  parent = path.parent if str(path.parent) else Path(".")
  if not parent.is_dir():
    raise NSTError(f"{what} directory {parent} does not exist")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise NSTError(f"{what} directory {parent} is not writable")
  if path.exists() and not os.access(path, os.W_OK):
    raise NSTError(f"{what} {path} exists and is not writable")
  return path


def check_distinct(inputs: dict, outputs: dict) -> None:
  """Refuses an output that is an input or another output of the same run.

  Args:
    inputs, outputs: ``{what: path}`` (``None`` paths are ignored). Paths are
      compared resolved (links followed) and, where both exist, by device and
      inode (hard links).
  """
  def ident(p):
    p = Path(p)
    try:
      st = p.stat()
      return ("inode", st.st_dev, st.st_ino)
    except OSError:
      return ("path", str(p.resolve()))

  seen = {}
  for what, p in inputs.items():
    if p is not None:
      seen.setdefault(ident(p), what)
  for what, p in outputs.items():
    if p is None:
      continue
    key = ident(p)
    if key in seen:
      raise NSTError(f"{what} {p} is the same file as the {seen[key]}; refusing to overwrite it")
    seen[key] = what
    resolved = ("path", str(Path(p).resolve()))
    if resolved != key:
      if resolved in seen:
        raise NSTError(f"{what} {p} is the same file as the {seen[resolved]}; refusing to overwrite it")
      seen[resolved] = what
