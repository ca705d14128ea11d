"""Prints the project's dependencies pinned at their declared minimums (``name>=v`` -> ``name==v``).

CI installs these into a second environment and runs the offline tests, so the
minimums in pyproject.toml stay true.
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
pins = []
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
  m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*)", requirement.strip())
  if not m:
    sys.exit(f"cannot pin {requirement!r}: declare it as name>=version")
  pins.append(f"{m.group(1)}=={m.group(2)}")
print(" ".join(pins))
