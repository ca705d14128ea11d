"""Batch job lists: manifests (JSONL/CSV), directory pairs and parameter sweeps."""

from __future__ import annotations

import csv
import hashlib
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


NAME_LIMIT = 120   # characters of a job name; <name>.interrupted.png etc. stay within 255 bytes


def _slug(text: str) -> str:
  """A file-name-safe job name, shortened (with a hash of the whole) past ``NAME_LIMIT``."""
  slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_.") or "job"
  if len(slug) > NAME_LIMIT:
    slug = f"{slug[:NAME_LIMIT - 9]}_{hashlib.sha1(slug.encode()).hexdigest()[:8]}"
  return slug


def job_name(content, style, overrides: dict) -> str:
  styles = style if isinstance(style, (list, tuple)) else [style]
  parts = [Path(str(content)).stem, "+".join(Path(str(s)).stem for s in styles)]
  parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(overrides.items())]
  return _slug("__".join(parts))


def make_job(content, style, raw_overrides=None, name=None) -> dict:
  """A job dict: name, content, style, overrides (typed) or error (the reason it cannot run)."""
  style = [str(s) for s in style] if isinstance(style, (list, tuple)) else str(style)
  job = {"content": str(content), "style": style, "raw": dict(raw_overrides or {})}
  try:
    job["overrides"] = parse_overrides(raw_overrides or {})
    job["error"] = None
  except NSTError as e:
    job["overrides"], job["error"] = {}, str(e)
  job["name"] = _slug(name) if name else job_name(content, style, job["overrides"])
  return job


def _failed_row(i: int, reason: str) -> dict:
  job = make_job(f"row{i}", "", {}, name=f"row{i}")
  job["error"] = reason if reason.startswith(("line ", "row ")) else f"row {i}: {reason}"
  return job


def _decode(path: Path) -> str:
  """UTF-8 (with or without Excel's byte-order mark), else Latin-1 (every byte decodes)."""
  data = path.read_bytes()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError:
    return data.decode("latin-1")


def _csv_rows(text: str, path: Path) -> list:
  table = list(csv.reader(text.splitlines()))
  while table and not any(cell.strip() for cell in table[0]):
    table.pop(0)
  if not table:
    return []
  header = [h.strip() for h in table[0]]
  if "content" not in header or "style" not in header:
    raise NSTError(f"CSV manifest {path} needs a header row naming its columns, with content "
                   f"and style among them; its first row is {', '.join(header)[:120]}")
  rows = []
  for cells in table[1:]:
    if not any(c.strip() for c in cells):
      continue
    if len(cells) > len(header):
      rows.append(f"row {len(rows) + 1}: {len(cells)} values for {len(header)} columns")
      continue
    rows.append(dict(zip(header, cells)))
  return rows


def _jsonl_rows(text: str) -> list:
  rows = []
  for i, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError as e:
      rows.append(f"line {i}: not JSON ({e})")
      continue
    rows.append(row if isinstance(row, dict) else f"line {i}: not a JSON object")
  return rows


def read_manifest(path) -> list[dict]:
  """Jobs from a JSONL (one object per line) or CSV (header row) file.

  Each row needs ``content`` and ``style`` (paths, relative to the manifest's
  folder unless absolute); optional ``name`` and any
  :class:`~nstjax.config.StyleConfig` field (dashes or underscores). A
  malformed row becomes a job that fails with its reason; the others run.
  CSV files may be UTF-8 (with or without a byte-order mark) or Latin-1.
  """
  path = Path(path)
  if not path.is_file():
    raise NSTError(f"manifest {path} does not exist or is not a file")
  try:
    text = _decode(path)
  except OSError as e:
    raise NSTError(f"cannot read manifest {path}: {e.strerror or e}") from None
  rows = _csv_rows(text, path) if path.suffix.lower() == ".csv" else _jsonl_rows(text)
  if not rows:
    raise NSTError(f"manifest {path} has no jobs")
  jobs = []
  for i, row in enumerate(rows, 1):
    if isinstance(row, str):
      jobs.append(_failed_row(i, row))
      continue
    content, style, name = row.get("content"), row.get("style"), row.get("name")
    if isinstance(style, str) and ";" in style:   # several styles in one CSV cell: a.jpg;b.jpg
      style = [s.strip() for s in style.split(";") if s.strip()]
    styles_ok = (isinstance(style, str) and style) or (
        isinstance(style, list) and style and all(isinstance(s, str) and s for s in style))
    if not (isinstance(content, str) and content and styles_ok):
      jobs.append(_failed_row(i, "needs 'content' and 'style' image paths (strings; style may be "
                                 "a list)"))
      continue
    if name is not None and not (isinstance(name, str) and name.strip()):
      jobs.append(_failed_row(i, f"'name' must be a non-empty string, got {name!r}"))
      continue
    rel = lambda p: str(p if Path(p).is_absolute() else path.parent / p)
    extra = {k: v for k, v in row.items() if k not in ("content", "style", "name")}
    init = extra.get("init")
    if isinstance(init, str) and init and init not in config.INITS:
      extra["init"] = rel(init)   # a start image, relative to the manifest like the others
    style = [rel(s) for s in style] if isinstance(style, list) else rel(style)
    jobs.append(make_job(rel(content), style, extra, name or None))
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
