"""The README a stranger follows: its Python runs, its command reference is --help, and
nothing user-facing points outside the repository."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_command_reference_matches_help():
  from importlib import metadata
  readme = (ROOT / "README.md").read_text()
  rendered = re.search(r"rendered by docs/cli_reference.py with typer (\S+) ", readme)
  if rendered is None or rendered.group(1) != metadata.version("typer"):
    pytest.skip("the reference was rendered with another typer, which lays help out differently")
  proc = subprocess.run([sys.executable, str(ROOT / "docs" / "cli_reference.py"), "--check"],
                        capture_output=True, text=True)
  assert proc.returncode == 0, "README's command reference is stale: run python docs/cli_reference.py"


def test_user_facing_text_stays_inside_the_repository():
  texts = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *ROOT.glob("docs/*.md")]
  texts += [p for folder in ("nstjax", "weights", "cli") for p in (ROOT / folder).glob("*.py")]
  offenders = [str(p.relative_to(ROOT)) for p in texts if "../shared" in p.read_text()]
  assert offenders == []


def test_readme_links_to_files_that_exist():
  readme = (ROOT / "README.md").read_text()
  for target in re.findall(r"\]\(([^)#:]+)\)", readme):
    assert (ROOT / target).exists(), target


@pytest.mark.real
def test_readme_python_blocks_run(tmp_path):
  blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
  assert blocks
  (tmp_path / "examples").symlink_to(ROOT / "examples")
  # One process runs every block, each in a fresh namespace as if it were its own script.
  runner = tmp_path / "run_blocks.py"
  runner.write_text(
      "import json, sys, traceback\n"
      "for i, block in enumerate(json.load(open(sys.argv[1]))):\n"
      "  try:\n"
      "    exec(compile(block, f'README python block {i}', 'exec'), {'__name__': '__main__'})\n"
      "  except BaseException:\n"
      "    print(f'README python block {i} failed:\\n{block}', file=sys.stderr)\n"
      "    traceback.print_exc()\n"
      "    sys.exit(1)\n")
  (tmp_path / "blocks.json").write_text(json.dumps(blocks))
  proc = subprocess.run([sys.executable, str(runner), str(tmp_path / "blocks.json")], cwd=tmp_path,
                        capture_output=True, text=True, env=dict(os.environ), timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
