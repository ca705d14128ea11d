"""``nstjax batch``: many jobs, one compiled program per group, sharded over devices, across hosts."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from nstjax.cli.common import (BIT_DEPTH_OPTION, COORDINATOR_OPTION, NUM_PROCESSES_OPTION,
                               PRESET_OPTION, PROCESS_ID_OPTION, STOP, WEIGHTS_OPTION, apply_preset,
                               enable_compilation_cache, guarded_compilation_cache, init_distributed,
                               load_net, say)
from nstjax.cli.options import config_options, explicit
from nstjax.errors import NSTError


def contact_sheet(path: Path, entries, thumb=192):
  """A grid of result images, each labelled with its job name and status."""
  from PIL import Image, ImageDraw
  from nstjax.image import save_image
  import numpy as np
  cols = max(1, min(4, len(entries)))
  rows = -(-len(entries) // cols)
  sheet = Image.new("RGB", (cols * (thumb + 8), rows * (thumb + 30)), (255, 255, 255))
  for k, (label, image_path) in enumerate(entries):
    x, y = (k % cols) * (thumb + 8), (k // cols) * (thumb + 30)
    if image_path and Path(image_path).exists():
      im = Image.open(image_path).convert("RGB")
      im.thumbnail((thumb, thumb))
      sheet.paste(im, (x, y + 28))
    d = ImageDraw.Draw(sheet)
    for line_no, chunk in enumerate([label[i:i + 30] for i in range(0, min(len(label), 60), 30)]):
      d.text((x + 2, y + 2 + 12 * line_no), chunk, fill=(0, 0, 0))
  save_image(np.asarray(sheet, np.float32) / 255.0, path)


@config_options
def batch(
    ctx: typer.Context,
    jobs_file: Optional[Path] = typer.Argument(None, help="Manifest: JSONL or CSV with content, style and optional per-job fields (any stylize option)."),
    outdir: Path = typer.Option(..., "-o", "--outdir", help="Folder for <job>.png, <job>.json and batch_summary.json."),
    contents: Optional[Path] = typer.Option(None, help="Folder of content images (with --styles: every pair)."),
    styles: Optional[Path] = typer.Option(None, help="Folder of style images."),
    content: Optional[Path] = typer.Option(None, help="One content image (with --style and --sweep)."),
    style: Optional[Path] = typer.Option(None, help="One style image."),
    sweep: list[str] = typer.Option([], help="NAME=V1,V2,... grid over one pair (repeatable), e.g. style-weight=1e-4,1e-3."),
    preset: Optional[str] = PRESET_OPTION,
    weights: Optional[str] = WEIGHTS_OPTION,
    overwrite: bool = typer.Option(False, help="Run jobs whose output exists (default: skip them)."),
    bit_depth: int = BIT_DEPTH_OPTION,
    traces: bool = typer.Option(False, help="Also write <job>.trace.json: every step's losses "
                                            "(as stylize --trace)."),
    contact_sheet_path: Optional[Path] = typer.Option(None, "--contact-sheet", help="Also draw a labelled grid of the results."),
    distributed: bool = typer.Option(False, help="Initialise jax.distributed; each process takes its "
                                                 "share of the jobs (--shard spatial jobs: all of them, together)."),
    coordinator: Optional[str] = COORDINATOR_OPTION,
    num_processes: Optional[int] = NUM_PROCESSES_OPTION,
    process_id: Optional[int] = PROCESS_ID_OPTION,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    config_values: dict = None,
):
  """Stylise many jobs: same-shape jobs run as one compiled, device-sharded program.

  Every stylize option sets the jobs' base configuration; a manifest column or
  --sweep of the same name overrides it per job.
  """
  from nstjax import jobs as njobs
  from nstjax.config import StyleConfig
  started = time.time()

  sources = sum(x is not None for x in (jobs_file, contents, content))
  if sources != 1:
    raise NSTError("give exactly one of: a JOBS manifest, --contents/--styles, or --content/--style/--sweep")
  if jobs_file is not None:
    job_list = njobs.read_manifest(jobs_file)
  elif contents is not None:
    if styles is None:
      raise NSTError("--contents needs --styles")
    job_list = njobs.pair_jobs(contents, styles)
  else:
    if style is None:
      raise NSTError("--content needs --style")
    job_list = njobs.sweep_jobs(content, style, sweep) if sweep else [njobs.make_job(content, style)]
  names = [j["name"] for j in job_list]
  if len(set(names)) != len(names):
    dup = next(n for n in names if names.count(n) > 1)
    raise NSTError(f"two jobs are both named {dup!r}; give them distinct 'name' fields")

  base = StyleConfig(**config_values)
  base.validate()
  from nstjax import image as nimage
  nimage.check_bit_depth(outdir / "job.png", bit_depth)   # every job is written as .png
  if contact_sheet_path is not None:
    nimage.check_writable(contact_sheet_path)
  if outdir.exists() and not outdir.is_dir():
    raise NSTError(f"output folder {outdir} exists and is not a folder")
  try:
    outdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise NSTError(f"cannot create output folder {outdir}: {e.strerror or e}") from None
  if not os.access(outdir, os.W_OK):
    raise NSTError(f"output folder {outdir} is not writable")
  pid, nproc = 0, 1
  if distributed:
    pid, nproc = init_distributed(coordinator, num_processes, process_id)
  def together(job):   # a --shard spatial job across processes: all of them step its image
    return nproc > 1 and not job["error"] and job["overrides"].get("shard", base.shard) == "spatial"

  share = set([j["name"] for j in job_list if not together(j)][pid::nproc])   # the others shared out
  mine = [j for j in job_list if together(j) or j["name"] in share]

  import nstjax
  from nstjax import files

  enable_compilation_cache()
  net, weights_record = load_net(weights, quiet)
  if preset is not None:
    base = apply_preset(preset, base, net, explicit(ctx))

  from nstjax import spatial
  records, runnable = {}, []
  for job in mine:
    out = outdir / f"{job['name']}.png"
    rec = {"name": job["name"], "content": job["content"], "style": job["style"],
           "overrides": job["overrides"], "output": str(out), "process": pid}
    shared = together(job)
    if pid == 0 or not shared:   # a shared job is process 0's to record and write
      records[job["name"]] = rec
    if job["error"]:
      rec.update(status="failed", reason=job["error"])
      continue
    exists = spatial.agree_first(out.exists()) if shared else out.exists()   # process 0's word
    if exists and not overwrite:
      rec.update(status="skipped", reason="output exists (use --overwrite)")
      continue
    try:
      cfg = dataclasses.replace(base, **job["overrides"])
    except NSTError as e:
      rec.update(status="failed", reason=str(e))
      continue
    runnable.append((job, cfg))

  def write(i, result):
    """Writes one job's files as soon as the library hands over its result."""
    job, cfg = runnable[i]
    rec = records.get(job["name"])
    if rec is None:   # another process writes this shared job
      return
    rec.update(status="done" if result.status == "done" else "failed", reason=result.reason)
    if result.image is None:
      return
    if result.status == "interrupted":   # not finished: kept under another name, rerun on resume
      rec.update(status="interrupted", output=str(outdir / f"{job['name']}.interrupted.png"))
    metadata = {"content": job["content"], "style": job["style"], "weights": weights_record,
                "config": dataclasses.asdict(cfg)}
    nimage.save_image(result.image, rec["output"], metadata=metadata, bit_depth=bit_depth)
    files.write_json(outdir / f"{job['name']}.json",
                     dict(result.summary, weights=weights_record, content=job["content"],
                          style=job["style"], output=rec["output"], name=job["name"]))
    if traces:
      files.write_json(outdir / f"{job['name']}.trace.json",
                       {"loss_weights": result.summary["loss_weights"], "records": result.trace})
    rec.update(losses=result.summary["losses"], evaluations=result.summary["evaluations"])

  t_start = time.perf_counter()

  def progress(p):
    if not quiet and (p.iteration % max(1, p.iterations // 5) == 0 or p.iteration == p.iterations):
      say(f"group {p.group + 1}/{p.groups} ({p.jobs} jobs): iteration {p.iteration}/{p.iterations}, "
          f"{p.iteration / max(p.elapsed, 1e-9):.2f} it/s, "
          f"losses {', '.join(f'{l:.3g}' for l in p.losses)}")

  interrupted = False
  try:
    with guarded_compilation_cache():
      nstjax.stylize_batch(net, [j["content"] for j, _ in runnable],
                           [j["style"] for j, _ in runnable], [cfg for _, cfg in runnable],
                           callback=progress, on_result=write)
  except KeyboardInterrupt:
    interrupted = True
  interrupted = interrupted or any(r.get("status") == "interrupted" for r in records.values())
  seconds = time.perf_counter() - t_start

  part = {"process": pid, "processes": nproc, "seconds": round(seconds, 3),
          "jobs": list(records.values())}
  files.write_json(outdir / f"batch_summary.process{pid}.json", part)
  if pid == 0:
    parts = [part] if nproc == 1 else _gather_parts(outdir, nproc, started)
    all_jobs = [j for p in parts for j in p["jobs"]]
    counts = {s: sum(j.get("status") == s for j in all_jobs)
              for s in ("done", "skipped", "failed", "interrupted")}
    summary = {"jobs": sorted(all_jobs, key=lambda j: j["name"]), "counts": counts,
               "processes": nproc, "seconds": max(p["seconds"] for p in parts),
               "weights": weights_record, "config": dataclasses.asdict(base)}
    files.write_json(outdir / "batch_summary.json", summary)
    if contact_sheet_path is not None:
      entries = [(f"{j['name']} [{j['status']}]", j["output"]) for j in summary["jobs"]]
      contact_sheet(contact_sheet_path, entries)
    failed = [j for j in all_jobs if j["status"] == "failed"]
    if not quiet:
      say(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
          f"({seconds:.1f} s); summary in {outdir / 'batch_summary.json'}")
    for j in failed:
      say(f"job {j['name']} failed: {j['reason']}")
    if interrupted:
      raise typer.Exit(STOP.exit_code)
    if failed:
      raise typer.Exit(1)
  elif interrupted:
    raise typer.Exit(STOP.exit_code)
  elif any(j["status"] == "failed" for j in records.values()):
    raise typer.Exit(1)


def _gather_parts(outdir: Path, nproc: int, started: float, timeout=3600.0):
  """Process 0 waits for every process's partial summary (files: no collectives needed).

  Only parts written after ``started`` count: jax.distributed.initialize returns
  only once every process has connected, so this run's parts are newer than
  process 0's start, and a previous run's leftovers are older.
  """
  deadline = time.time() + timeout
  while True:
    paths = [outdir / f"batch_summary.process{i}.json" for i in range(nproc)]
    if all(p.exists() and p.stat().st_mtime >= started for p in paths):
      return [json.loads(p.read_text()) for p in paths]
    if time.time() > deadline:
      missing = [str(p) for p in paths if not p.exists()]
      raise NSTError(f"timed out waiting for other processes' summaries: {missing}")
    time.sleep(0.5)
