"""Writing files so that a failure never leaves a partial or damaged one.

Every file nstjax writes (images, summaries, converted weights) goes through
:func:`atomic_path`: the data is written to a temporary name beside the target
and renamed onto it only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix=""):
  """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

  A failure or interruption leaves ``path`` as it was and no partial file.
  """
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".part",
                             dir=path.parent)
  os.close(fd)
  try:
    yield Path(tmp)
    # mkstemp creates 0600 files; give the result the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_json(path, data: dict) -> Path:
  """Writes ``data`` as indented JSON, atomically."""
  path = Path(path)
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
  return path
