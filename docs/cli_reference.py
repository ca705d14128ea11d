"""Writes (or, with --check, compares) the README's command reference from ``--help``.

The README holds each command's ``--help`` output, rendered at 100 columns
without colour, between the markers below; ``tests/test_docs.py`` requires it
to match the installed command exactly.

    python docs/cli_reference.py            # rewrite README.md's reference
    python docs/cli_reference.py --check    # exit 1 if it differs
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- cli-reference: begin -->", "<!-- cli-reference: end -->"
COMMANDS = ([], ["stylize"], ["batch"], ["presets"], ["attention-map"], ["weights"],
            ["weights", "list"], ["weights", "fetch"], ["weights", "convert"], ["weights", "normalize"], ["weights", "info"])


def help_text(args) -> str:
  env = dict(os.environ, COLUMNS="100", NO_COLOR="1", TERM="dumb", TERMINAL_WIDTH="100",
             _TYPER_FORCE_DISABLE_TERMINAL="1")
  code = "from nstjax.cli.main import run; run()"
  out = subprocess.run([sys.executable, "-c", code, *args, "--help"], capture_output=True,
                       text=True, env=env, check=True).stdout
  return "\n".join(line.rstrip() for line in out.strip("\n").splitlines())


def typer_version() -> str:
  from importlib import metadata
  return metadata.version("typer")


def reference() -> str:
  parts = [f"<!-- rendered by docs/cli_reference.py with typer {typer_version()} -->"]
  for args in COMMANDS:
    title = " ".join(["nstjax", *args])
    parts.append(f"<details><summary><code>{title} --help</code></summary>\n\n```text\n"
                 f"{help_text(args)}\n```\n\n</details>")
  return "\n\n".join(parts)


def main():
  text = README.read_text()
  start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
  new = text[:start] + "\n" + reference() + "\n" + text[stop:]
  if "--check" in sys.argv:
    sys.exit(0 if new == text else 1)
  README.write_text(new)


if __name__ == "__main__":
  main()
