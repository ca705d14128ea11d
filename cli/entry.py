"""The ``nstjax`` console script: stop signals are handled from the first moment.

This module imports nothing heavy: it installs the handlers for Ctrl-C, SIGTERM
and SIGHUP, and only then imports the command (and JAX with it), so a stop
request during start-up also ends with one line, never a traceback.
"""

from __future__ import annotations

import sys


def main(argv=None):
  from nstjax.cli.signals import STOP
  STOP.install()
  try:
    from nstjax.cli.main import run
  except KeyboardInterrupt as e:
    sys.stderr.write(f"nstjax: error: interrupted ({getattr(e, 'name', 'SIGINT')}) while starting; "
                     f"nothing was written\n")
    sys.exit(STOP.exit_code)
  run(argv)


if __name__ == "__main__":
  main()
