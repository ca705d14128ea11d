"""Stop requests (Ctrl-C, SIGTERM, SIGHUP) as one exception, raised once.

Imports nothing heavy, so the console script installs it before JAX loads.
"""

from __future__ import annotations

import signal
import sys

from nstjax.errors import Interrupted


class StopSignals:
  """Ctrl-C, SIGTERM and SIGHUP (``timeout``, ``docker stop``, Slurm, a dropped SSH
  session) all become :class:`~nstjax.errors.Interrupted`, once.

  The first signal raises it, so the optimisation loop keeps its current image
  and the command writes it. Later signals only say that the command is
  stopping: they never cut the final writes short.
  """

  NAMES = ("SIGINT", "SIGTERM", "SIGHUP")

  def __init__(self):
    self.signum = None

  def install(self) -> dict:
    """Installs the handlers (forgetting an earlier signal); returns the previous ones."""
    self.signum = None
    previous = {}
    for name in self.NAMES:
      if hasattr(signal, name):
        num = getattr(signal, name)
        previous[num] = signal.signal(num, self._handle)
    return previous

  @staticmethod
  def restore(previous: dict) -> None:
    for num, handler in previous.items():
      signal.signal(num, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      sys.stderr.write("nstjax: stopping: writing what has been computed\n")
      return
    self.signum = signum
    raise Interrupted(signum, signal.Signals(signum).name)

  @property
  def exit_code(self) -> int:
    """128 + the signal's number, as shells report a process a signal ended."""
    return 128 + (self.signum or 2)


STOP = StopSignals()


class Stopped(Exception):
  """A stop request that ended a command before it had anything to write.

  Typer turns a ``KeyboardInterrupt`` escaping a command into a silent exit
  130; a command wrapped with :func:`stoppable` raises this instead, so the
  entry point prints one line and exits 128 + the signal.
  """

  def __init__(self, signum: int, name: str):
    super().__init__(name)
    self.signum, self.name = signum, name


def stoppable(command):
  """Wraps a Typer command so that a stop request escaping it becomes :class:`Stopped`."""
  import functools

  @functools.wraps(command)
  def wrapper(*args, **kwargs):
    try:
      return command(*args, **kwargs)
    except KeyboardInterrupt as e:
      raise Stopped(getattr(e, "signum", signal.SIGINT), getattr(e, "name", "SIGINT")) from None

  return wrapper
