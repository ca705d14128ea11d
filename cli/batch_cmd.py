"""``nstjax batch``: many jobs, one compiled program per group, sharded over devices, across hosts."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from nstjax.errors import NSTError


def _init_distributed(coordinator, num_processes, process_id):
  """jax.distributed from flags, else from the environment (Slurm, Open MPI, Cloud TPU, JAX_* vars)."""
  import jax
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes if num_processes is not None else (
      int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None)
  process_id = process_id if process_id is not None else (
      int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=120)
  except (RuntimeError, ValueError) as e:
    raise NSTError(f"cannot initialise jax.distributed: {e}") from None
  return jax.process_index(), jax.process_count()


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


def batch(
    jobs_file: Optional[Path] = typer.Argument(None, help="Manifest: JSONL or CSV with content, style and optional per-job fields."),
    outdir: Path = typer.Option(..., "-o", "--outdir", help="Folder for <job>.png, <job>.json and batch_summary.json."),
    contents: Optional[Path] = typer.Option(None, help="Folder of content images (with --styles: every pair)."),
    styles: Optional[Path] = typer.Option(None, help="Folder of style images."),
    content: Optional[Path] = typer.Option(None, help="One content image (with --style and --sweep)."),
    style: Optional[Path] = typer.Option(None, help="One style image."),
    sweep: list[str] = typer.Option([], help="NAME=V1,V2,... grid over one pair (repeatable), e.g. style-weight=1e-4,1e-3."),
    size: int = typer.Option(512, help="Long side in pixels (a job may override)."),
    iterations: int = typer.Option(500, help="Optimiser steps."),
    optimizer: str = typer.Option("lbfgs", help="lbfgs or adam."),
    lr: Optional[float] = typer.Option(None, help="Adam's learning rate; for L-BFGS a fixed step."),
    lbfgs_memory: int = typer.Option(100, help="L-BFGS history size."),
    content_weight: Optional[float] = typer.Option(None, help="α (default per weights)."),
    style_weight: Optional[float] = typer.Option(None, help="β (default per weights)."),
    tv_weight: Optional[float] = typer.Option(None, help="TV weight."),
    pooling: str = typer.Option("avg", help="avg or max."),
    init: str = typer.Option("content", help="content, noise or style."),
    seed: int = typer.Option(0, help="Seed for --init noise (a job may override)."),
    style_loss: str = typer.Option("gram", help="gram, pca, pca-paper, svd or weighted."),
    attention_weight: float = typer.Option(0.0, help="γ of the attention loss."),
    attention_layers: str = typer.Option("relu4_1", help="Attention layers."),
    weights: Optional[str] = typer.Option(None, help="Weights (as for stylize)."),
    overwrite: bool = typer.Option(False, help="Run jobs whose output exists (default: skip them)."),
    contact_sheet_path: Optional[Path] = typer.Option(None, "--contact-sheet", help="Also draw a labelled grid of the results."),
    distributed: bool = typer.Option(False, help="Initialise jax.distributed; each process takes its share of the jobs."),
    coordinator: Optional[str] = typer.Option(None, help="Coordinator host:port (else JAX_COORDINATOR_ADDRESS / cluster detection)."),
    num_processes: Optional[int] = typer.Option(None, help="Process count (else environment)."),
    process_id: Optional[int] = typer.Option(None, help="This process's index (else environment)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
):
  """Stylise many jobs: same-shape jobs run as one compiled, device-sharded program."""
  from nstjax import jobs as njobs
  from nstjax.config import StyleConfig
  from nstjax.cli.main import _say as say
  from nstjax.cli.main import _weights_record, _write_json
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

  outdir.mkdir(parents=True, exist_ok=True)
  if not os.access(outdir, os.W_OK):
    raise NSTError(f"output folder {outdir} is not writable")
  pid, nproc = 0, 1
  if distributed:
    pid, nproc = _init_distributed(coordinator, num_processes, process_id)
  mine = job_list[pid::nproc]

  base = StyleConfig(size=size, iterations=iterations, optimizer=optimizer, lr=lr,
                     lbfgs_memory=lbfgs_memory, content_weight=content_weight,
                     style_weight=style_weight, tv_weight=tv_weight, pooling=pooling, init=init,
                     seed=seed, style_loss=style_loss, attention_weight=attention_weight,
                     attention_layers=tuple(x.strip() for x in attention_layers.split(",") if x.strip()))
  base.validate()

  import nstjax
  from nstjax import batch as nbatch
  from nstjax import image as nimage
  from nstjax.weights import format as wformat
  from nstjax.weights import registry

  from nstjax.cli.main import _enable_compilation_cache
  _enable_compilation_cache()
  weights_path = registry.resolve(weights, notify=None if quiet else say)
  net, info = wformat.read(weights_path)
  weights_record = _weights_record(info, weights_path, net)

  records, runnable = {}, []
  for job in mine:
    out = outdir / f"{job['name']}.png"
    rec = {"name": job["name"], "content": job["content"], "style": job["style"],
           "overrides": job["overrides"], "output": str(out), "process": pid}
    records[job["name"]] = rec
    if job["error"]:
      rec.update(status="failed", reason=job["error"])
      continue
    if out.exists() and not overwrite:
      rec.update(status="skipped", reason="output exists (use --overwrite)")
      continue
    try:
      cfg = dataclasses.replace(base, **job["overrides"]).validate(net.arch)
      c_img, s_img = nstjax.prepare_images(nimage.load_image(job["content"]),
                                           nimage.load_image(job["style"]), cfg)
      nstjax.optim.check_image_sizes(cfg, c_img, s_img)
    except NSTError as e:
      rec.update(status="failed", reason=str(e))
      continue
    runnable.append((job, c_img, s_img, cfg))

  groups: dict = {}
  for k, item in enumerate(runnable):
    groups.setdefault(nbatch.group_key(item[3], item[1], item[2], k), []).append(item)
  t_start = time.perf_counter()
  done_jobs = 0
  for g, items in enumerate(groups.values(), 1):
    def progress(it, losses, elapsed, g=g, items=items):
      if not quiet and (it % max(1, items[0][3].iterations // 5) == 0 or it == items[0][3].iterations):
        say(f"group {g}/{len(groups)} ({len(items)} jobs, {done_jobs} of {len(runnable)} done before it): "
            f"iteration {it}/{items[0][3].iterations}, {it / max(elapsed, 1e-9):.2f} it/s, "
            f"losses {', '.join(f'{l:.3g}' for l in losses)}")
    results = nbatch.run_group(net, [i[1] for i in items], [i[2] for i in items],
                               [i[3] for i in items], callback=progress)
    for (job, _, _, cfg), r in zip(items, results):
      rec = records[job["name"]]
      metadata = {"content": job["content"], "style": job["style"], "weights": weights_record,
                  "config": dataclasses.asdict(cfg)}
      nimage.save_image(r["image"], rec["output"], metadata=metadata)
      summary = dict(r["summary"], weights=weights_record, content=job["content"],
                     style=job["style"], output=rec["output"], name=job["name"])
      _write_json(outdir / f"{job['name']}.json", summary)
      rec.update(status="done" if r["status"] == "done" else "failed",
                 reason=None if r["status"] == "done" else "loss became non-finite; last finite image written",
                 losses=r["summary"]["losses"], evaluations=r["summary"]["evaluations"])
    done_jobs += len(items)
  seconds = time.perf_counter() - t_start

  part = {"process": pid, "processes": nproc, "seconds": round(seconds, 3),
          "jobs": list(records.values())}
  _write_json(outdir / f"batch_summary.process{pid}.json", part)
  if pid == 0:
    parts = [part] if nproc == 1 else _gather_parts(outdir, nproc, started)
    all_jobs = [j for p in parts for j in p["jobs"]]
    counts = {s: sum(j["status"] == s for j in all_jobs) for s in ("done", "skipped", "failed")}
    summary = {"jobs": sorted(all_jobs, key=lambda j: j["name"]), "counts": counts,
               "processes": nproc, "seconds": max(p["seconds"] for p in parts),
               "weights": weights_record, "config": dataclasses.asdict(base)}
    _write_json(outdir / "batch_summary.json", summary)
    if contact_sheet_path is not None:
      entries = [(f"{j['name']} [{j['status']}]", j["output"]) for j in summary["jobs"]]
      contact_sheet(contact_sheet_path, entries)
    failed = [j for j in all_jobs if j["status"] == "failed"]
    if not quiet:
      say(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
          f"({seconds:.1f} s); summary in {outdir / 'batch_summary.json'}")
    for j in failed:
      say(f"job {j['name']} failed: {j['reason']}")
    if failed:
      raise typer.Exit(1)
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
