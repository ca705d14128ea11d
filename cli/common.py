"""What the ``nstjax`` commands share: messages, the progress bar, records, caches."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import typer

from nstjax.cli.signals import STOP  # noqa: F401  (the commands' exit codes)
from nstjax.config import PRESETS
from nstjax.errors import NSTError

EXIT_ERROR = 1




def err(message: str) -> None:
  typer.echo(f"nstjax: error: {message}", err=True)


def say(message: str) -> None:
  typer.echo(f"nstjax: {message}", err=True)


def compilation_cache_dir() -> Path:
  from nstjax.weights.registry import cache_dir
  return cache_dir() / "xla"


def enable_compilation_cache():
  """Persistent XLA cache in the user's cache dir: later runs skip compilation."""
  import jax
  try:
    path = compilation_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  except OSError:
    pass   # a read-only cache dir only costs compile time


@contextlib.contextmanager
def guarded_compilation_cache():
  """Replaces a damaged persistent-cache entry instead of warning about it on every run.

  JAX warns when an entry cannot be read, compiles, and keeps the damaged entry
  (it never overwrites one). Here the warning is caught, and the cache folder
  (nstjax's own) is emptied once, with one line saying so; the next run
  recompiles and writes good entries.
  """
  import warnings
  damaged = []
  original = warnings.showwarning

  def show(message, category, filename, lineno, file=None, line=None):
    if "persistent compilation cache entry" in str(message):
      damaged.append(str(message))
      return
    original(message, category, filename, lineno, file, line)

  warnings.showwarning = show
  try:
    yield
  finally:
    warnings.showwarning = original
    if damaged:
      import shutil
      folder = compilation_cache_dir()
      shutil.rmtree(folder, ignore_errors=True)
      say(f"the compilation cache {folder} had a damaged entry; emptied it (the next run "
          f"compiles once and caches again)")


def check_json_writable(path: Path, what: str = "summary"):
  from nstjax.files import check_writable_file
  check_writable_file(path, what)


def file_digest(path) -> str | None:
  """sha256 of a file, or None if it cannot be read."""
  import hashlib
  try:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()
  except OSError:
    return None


def run_record(*, content, style, weights: dict, config, loss_weights: dict) -> dict:
  """What reproduces a run: inputs and their digests, weights, settings, versions, devices."""
  import dataclasses
  import sys
  from importlib import metadata

  import jax

  def version(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None

  styles = style if isinstance(style, (list, tuple)) else [style]
  from nstjax.pipeline import style_list
  files = [str(s) for s in style_list(styles)]
  return {"content": str(content), "content_sha256": file_digest(content),
          "style": files[0] if len(files) == 1 else files,
          "style_sha256": file_digest(files[0]) if len(files) == 1 else [file_digest(f) for f in files],
          "weights": weights, "loss_weights": loss_weights, "config": dataclasses.asdict(config),
          "versions": {"nstjax": version("nstjax"), "jax": jax.__version__,
                       "jaxlib": version("jaxlib"), "python": sys.version.split()[0]},
          "devices": [str(d) for d in jax.devices()],
          "command": ["nstjax"] + sys.argv[1:]}


def read_run_file(path) -> dict:
  """A previous run's summary (or a bare settings object) for ``--config``."""
  from nstjax.files import read_json_object
  data = read_json_object(path, "--config")
  settings = data.get("config", data)
  if not isinstance(settings, dict):
    raise NSTError(f"--config {path}: 'config' is not an object")
  from nstjax.config import per_job_fields
  unknown = sorted(set(settings) - set(per_job_fields()))
  if unknown:
    raise NSTError(f"--config {path}: unknown settings {', '.join(unknown)}")
  return {**data, "config": settings}


def weights_record(info: dict, path, net) -> dict:
  """The provenance a summary and an image's metadata carry about the weights."""
  return {"name": info.get("source"), "sha256": info.get("source_sha256"), "path": str(path),
          "arch": net.arch, "preprocessing": net.preprocessing}


def load_net(weights, quiet=False):
  """(net, weights record) for ``--weights``."""
  from nstjax.weights import format as wformat
  from nstjax.weights import registry
  path = registry.resolve(weights, notify=None if quiet else say)
  net, info = wformat.read(path)
  return net, weights_record(info, path, net)


def format_terms(terms: dict) -> str:
  """``loss 1.2e3 (content 4, style 5, tv 6)``: every term, whatever the objective holds."""
  parts = ", ".join(f"{k} {v:.3g}" for k, v in terms.items() if k != "total")
  return f"loss {terms['total']:.3g} ({parts})"


class Bar:
  """Rich progress bar: iteration, loss terms, it/s, ETA; plain lines off a terminal."""

  def __init__(self, total: int, quiet: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    self.console = Console(stderr=True)
    # Off a terminal (logs, CI, batch hosts) a live bar is noise: print ~10 plain lines.
    self.plain = not quiet and not self.console.is_terminal
    self.every = max(1, total // 10)
    quiet = quiet or self.plain
    self.progress = Progress(
        TextColumn("[bold]stylize"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), TextColumn("{task.fields[terms]}"),
        console=self.console, disable=quiet, transient=False)
    self.task = self.progress.add_task("stylize", total=total, rate="", terms="")
    self.last_terms = ""

  def __enter__(self):
    self.progress.__enter__()
    return self

  def __exit__(self, *exc):
    return self.progress.__exit__(*exc)

  def update(self, p):
    rate = p.iteration / p.elapsed if p.elapsed > 0 else 0.0
    if p.terms:
      self.last_terms = f"{format_terms(p.terms)} evals {p.evaluations}"
    if self.plain and (p.iteration % self.every == 0 or p.iteration == p.iterations):
      eta = (p.iterations - p.iteration) / rate if rate > 0 else float("nan")
      typer.echo(f"nstjax: iteration {p.iteration}/{p.iterations}, {rate:.2f} it/s, ETA {eta:.0f} s, "
                 f"{self.last_terms or f'loss {p.loss:.4g}, evals {p.evaluations}'}", err=True)
    self.progress.update(self.task, completed=p.iteration, rate=f"{rate:.2f} it/s",
                         terms=self.last_terms or f"loss {p.loss:.3g}")


def apply_preset(name, config, net, given: set[str]):
  """A preset fills the settings the user did not give explicitly."""
  if name not in PRESETS:
    raise NSTError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  preset = PRESETS[name](net.preprocessing, net.normalized)
  updates = {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset)
             if f.name not in given and getattr(preset, f.name) != f.default}
  return dataclasses.replace(config, **updates)


PRESET_OPTION = typer.Option(None, metavar="|".join(sorted(PRESETS)),
                             help="Named settings scaled to the weights (flags given explicitly still win).")
BIT_DEPTH_OPTION = typer.Option(8, "--bit-depth", metavar="8|16",
                                help="Bits per channel of the output: 16 keeps the float image's "
                                     "precision (.png or .tif).")
WEIGHTS_OPTION = typer.Option(None, help="Weights: a source name (nstjax weights list) or a converted "
                                         ".h5 file. Default: VGG19, fetched on first use.")


def init_distributed(coordinator, num_processes, process_id):
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


COORDINATOR_OPTION = typer.Option(None, help="Coordinator host:port (else JAX_COORDINATOR_ADDRESS / cluster detection).")
NUM_PROCESSES_OPTION = typer.Option(None, help="Process count (else environment).")
PROCESS_ID_OPTION = typer.Option(None, help="This process's index (else environment).")
