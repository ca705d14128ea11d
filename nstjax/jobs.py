"""Batch job lists: manifests (JSONL/CSV), directory pairs and parameter sweeps."""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path

from nstjax import config
from nstjax.errors import NSTError

def parse_overrides(raw: dict) -> dict:
  """``{"style-weight": "1e6", "seed": "3"}`` -> typed StyleConfig values; NSTError if invalid.

  Every :class:`~nstjax.config.StyleConfig` field is a valid job field
  (:func:`nstjax.config.per_job_fields`); jobs that differ in a static field
  run as separate groups.
  """
  return config.read_overrides(raw)


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")


def job_name(content, style, overrides: dict) -> str:
  parts = [Path(str(content)).stem, Path(str(style)).stem]
  parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(overrides.items())]
  return _slug("__".join(parts))


def make_job(content, style, raw_overrides=None, name=None) -> dict:
  """A job dict: name, content, style, overrides (typed) or error (the reason it cannot run)."""
  job = {"content": str(content), "style": str(style), "raw": dict(raw_overrides or {})}
  try:
    job["overrides"] = parse_overrides(raw_overrides or {})
    job["error"] = None
  except NSTError as e:
    job["overrides"], job["error"] = {}, str(e)
  job["name"] = _slug(name) if name else job_name(content, style, job["overrides"])
  return job


def read_manifest(path) -> list[dict]:
  """Jobs from a JSONL (one object per line) or CSV (header row) file.

  Each row needs ``content`` and ``style``; optional ``name`` and the fields in
  :class:`~nstjax.config.StyleConfig` fields (dashes or underscores). Relative image paths are relative to
  the manifest. A malformed row becomes a job that fails with its reason.
  """
  path = Path(path)
  if not path.is_file():
    raise NSTError(f"manifest {path} does not exist or is not a file")
  rows = []
  text = path.read_text()
  if path.suffix.lower() == ".csv":
    rows = list(csv.DictReader(text.splitlines()))
  else:
    for i, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        rows.append({"__error__": f"line {i}: not JSON ({e})"})
        continue
      rows.append(row if isinstance(row, dict) else {"__error__": f"line {i}: not an object"})
  if not rows:
    raise NSTError(f"manifest {path} has no jobs")
  jobs = []
  for i, row in enumerate(rows, 1):
    if "__error__" in row or not row.get("content") or not row.get("style"):
      bad = make_job(f"row{i}", "", {}, name=f"row{i}")
      bad["error"] = row.get("__error__") or f"row {i}: needs 'content' and 'style'"
      jobs.append(bad)
      continue
    rel = lambda p: str(p if Path(p).is_absolute() else path.parent / p)
    extra = {k: v for k, v in row.items() if k not in ("content", "style", "name")}
    jobs.append(make_job(rel(row["content"]), rel(row["style"]), extra, row.get("name")))
  return jobs


def pair_jobs(contents_dir, styles_dir) -> list[dict]:
  """Every content × style pair of two folders."""
  from nstjax.image import list_images
  return [make_job(c, s) for c in list_images(contents_dir, "contents folder")
          for s in list_images(styles_dir, "styles folder")]


def sweep_jobs(content, style, sweeps) -> list[dict]:
  """The grid of ``["style-weight=1e5,1e6", "seed=0,1"]`` over one pair."""
  axes = []
  for spec in sweeps:
    if "=" not in spec:
      raise NSTError(f"--sweep expects NAME=V1,V2,..., got {spec!r}")
    name, values = spec.split("=", 1)
    values = [v for v in values.split(",") if v.strip()]
    if not values:
      raise NSTError(f"--sweep {name}: no values")
    parse_overrides({name: values[0]})   # validates the name up front
    axes.append([(name, v) for v in values])
  return [make_job(content, style, dict(combo)) for combo in itertools.product(*axes)]
