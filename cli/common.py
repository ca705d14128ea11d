"""What the ``nstjax`` commands share: messages, the progress bar, records, caches."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer

from nstjax.config import PRESETS
from nstjax.errors import NSTError

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def err(message: str) -> None:
  typer.echo(f"nstjax: error: {message}", err=True)


def say(message: str) -> None:
  typer.echo(f"nstjax: {message}", err=True)


def enable_compilation_cache():
  """Persistent XLA cache in the user's cache dir: later runs skip compilation."""
  import jax
  from nstjax.weights.registry import cache_dir
  try:
    path = cache_dir() / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  except OSError:
    pass   # a read-only cache dir only costs compile time


def check_json_writable(path: Path):
  parent = path.parent if str(path.parent) else Path(".")
  if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
    raise NSTError(f"cannot write summary {path}: directory missing or not writable")


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
WEIGHTS_OPTION = typer.Option(None, help="Weights: a source name (nstjax weights list) or a converted "
                                         ".h5 file. Default: VGG19, fetched on first use.")
