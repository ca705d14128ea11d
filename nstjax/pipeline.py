"""The one pipeline every entry point runs: prepare, run, summarise.

* :func:`prepare`: load and resize the images, validate the config against
  the network, check the image sizes against the layers, keep only the part
  of the network the run uses, compute every term's target once and the
  loss weights.
* :func:`run`: optimise from the content/noise/style start image, from any
  given image, or from a previous run's :class:`~nstjax.optim.State` (its
  L-BFGS history included), for any number of steps, reporting each step to
  a callback. A NaN or inf loss stops the run and keeps the last image whose
  loss was finite; Ctrl-C ends it with the current image.
* :func:`summarise`: the JSON-ready record of a run (single and batch runs
  build it here).

:func:`nstjax.stylize`, :func:`nstjax.stylize_batch` and both CLI commands
call these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import colour as ncolour
from nstjax import image as nimage
from nstjax import files, memory, objective, optim, programs, spatial, tiling, vgg
from nstjax.config import StyleConfig
from nstjax.errors import NonFiniteLoss, NSTError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Progress:
  """What the loop reports after each step (to ``callback``)."""
  iteration: int          # steps done
  iterations: int         # steps asked for
  evaluations: int        # loss+gradient evaluations done
  loss: float             # total loss at the image this step started from
  elapsed: float          # seconds in the loop so far
  image: Array | None     # current image (H, W, 3), unclipped; None inside a multi-step call
  terms: dict | None = None   # named loss terms (and "total") of the image this step started
                              # from, or None where the step does not report them


@dataclasses.dataclass
class Result:
  """The outcome of one stylisation.

  Attributes:
    image: (H, W, 3) float32 numpy array in [0, 1] (clipped); for a failed
      batch job, ``None`` or the last image whose loss was finite.
    status: ``"done"``; ``"interrupted"`` (Ctrl-C; the image is the last
      step's); in a batch also ``"non-finite"`` (the loss became NaN/inf; the
      image is the last finite one) and ``"failed"`` (see ``reason``).
    summary: JSON-ready dict (iterations, evaluations, seconds, compile_seconds,
      losses, initial_losses, ...).
    state: the final :class:`~nstjax.optim.State`, to continue with
      :func:`run` (``None`` for batch jobs, whose histories stay in the group).
    reason: why a batch job did not finish, or ``None``.
    trace: one record per step (:func:`run`): ``{"iteration", "evaluations",
      "seconds", "losses": {term: value, ..., "total"}}``, the losses of the
      image the step started from, taken from the step's own evaluation.
  """
  image: np.ndarray | None
  status: str
  summary: dict
  state: Any = None
  reason: str | None = None
  trace: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Everything a run needs, computed once: see :func:`prepare`."""
  config: StyleConfig
  net: vgg.VGGParams        # trimmed to the layers used, with pre-flipped kernels
  content: Array            # (H, W, 3) at the working size
  styles: tuple             # the style images (H', W', 3) at the working size, weight > 0
  style_weights: tuple      # their blend weights (positive, summing to 1)
  colours: Any              # the content at the working size, in colour (post/luminance modes)
  targets: dict             # {term: target}
  weights: dict             # {term: {"weight": w, "layers": {layer: w}}} (float32 arrays)
  loss_weights: dict        # {term: weight} as floats, for the record

  @property
  def style(self) -> Array:
    """The first style image (``init="style"`` starts from it)."""
    return self.styles[0]


def style_list(style) -> list:
  """One style, a list of styles, or a folder (every image in it) -> a list."""
  items = list(style) if isinstance(style, (list, tuple)) else [style]
  out = []
  for item in items:
    if isinstance(item, (str, Path)) and Path(item).is_dir():
      out += nimage.list_images(item, "style folder")
    else:
      out.append(item)
  if not out:
    raise NSTError("no style image given")
  return out


def blend_weights(config: StyleConfig, n: int) -> tuple[float, ...]:
  """The ``n`` styles' weights, normalised to sum 1 (``2,0`` is ``1,0``)."""
  given = config.style_blend_weights
  if given is None:
    return (1.0 / n,) * n
  if len(given) != n:
    raise NSTError(f"{len(given)} style blend weights for {n} style images")
  total = sum(given)
  return tuple(w / total for w in given)


def prepare_images(content, style, config: StyleConfig):
  """Loads (if paths) and resizes content and style(s) as ``config`` says.

  The content's long side becomes ``config.size`` (``None``: kept); each
  style's long side ``config.style_scale`` (one value, or one per style) times
  the content's. Returns ``(content, style)`` for one style image, ``(content,
  [styles])`` for a list or a folder.
  """
  content = nimage.as_rgb(content, "content")
  several = isinstance(style, (list, tuple)) or (isinstance(style, (str, Path))
                                                 and Path(style).is_dir())
  styles = style_list(style)
  scales = config.style_scale
  if len(scales) not in (1, len(styles)):
    raise NSTError(f"{len(scales)} style scales for {len(styles)} style images")
  if config.size is not None:
    content = nimage.resize_long_side(content, config.size)
  long_side = max(content.shape[:2])
  out = []
  for i, s in enumerate(styles):
    what = "style" if len(styles) == 1 else f"style {i + 1}"
    scale = scales[i] if len(scales) > 1 else scales[0]
    out.append(nimage.resize_long_side(nimage.as_rgb(s, what), max(1, round(long_side * scale))))
  return content, (out if several else out[0])


# Fields that reach the loss weights, the starting image or the solver, never the
# images or the targets: jobs differing only in these share their preparation.
NOT_IN_TARGETS = ("content_weight", "style_weight", "tv_weight", "iterations", "init", "seed",
                  "optimizer", "lr", "line_search", "batch_mode")


def targets_key(content, style, config: StyleConfig):
  """Equal for two jobs whose :func:`prepare` would give the same images and targets
  (inputs given as paths compare by path, other inputs by identity)."""
  ident = lambda x: ("path", str(x)) if isinstance(x, (str, os.PathLike)) else ("object", id(x))
  defaults = {f.name: f.default for f in dataclasses.fields(config) if f.name in NOT_IN_TARGETS}
  return ident(content), tuple(map(ident, style_list(style))), dataclasses.replace(config, **defaults)


def prepare(net: vgg.VGGParams, content, style, config: StyleConfig, *, resize: bool = True,
            network: vgg.VGGParams | None = None, like: Prepared | None = None) -> Prepared:
  """Validates and prepares one run.

  Args:
    net: the weights (:func:`nstjax.load_weights`).
    content, style: paths, PIL images or (H, W, 3) RGB arrays (``uint8``, or
      floats in [0, 1]).
    config: the run's settings.
    resize: apply ``config.size``/``style_scale`` (``False``: the images are
      already at the working size, as :func:`nstjax.optimize` takes them).
    network: ``net`` already prepared for this config
      (:func:`nstjax.objective.network`; batches share one).
    like: a job prepared from the same inputs with an equal :func:`targets_key`
      (a sweep over loss weights or seeds): its images and targets are reused.
  """
  if not isinstance(config, StyleConfig):
    raise NSTError(f"config must be a nstjax.StyleConfig, got {type(config).__name__}")
  if not isinstance(net, vgg.VGGParams):
    raise NSTError(f"net must be nstjax.VGGParams (nstjax.load_weights()), got {type(net).__name__}")
  config.validate(net.arch)
  if net.preprocessing != "caffe" and (config.input_scale is not None
                                       or config.loss_form == "jcjohnson"):
    raise NSTError(f"input scale and loss form jcjohnson apply to Caffe-preprocessed weights; "
                   f"these are {net.preprocessing!r}")
  if like is not None:
    check_history_fits(config, like.content.shape[0], like.content.shape[1])
    return dataclasses.replace(
        like, config=config, weights=objective.make_weights(config, net.preprocessing, net.normalized),
        loss_weights=config.loss_weights(net.preprocessing, net.normalized))
  if resize:
    content, style = prepare_images(content, style, config)
  else:
    content = nimage.as_rgb(content, "content")
    style = [nimage.as_rgb(s, "style") for s in style_list(style)]
  styles = style if isinstance(style, list) else [style]
  weights = blend_weights(config, len(styles))
  # A style of weight 0 is dropped: (1, 0) is exactly the first style alone.
  styles = [s for s, w in zip(styles, weights) if w > 0]
  weights = tuple(w for w in weights if w > 0)
  objective.check_image_sizes(config, content, styles)
  check_history_fits(config, content.shape[0], content.shape[1])
  if network is None:
    network = objective.network(net, config)
  colours = content
  if config.preserve_colors == "match":       # the styles recoloured before their targets
    styles = [ncolour.match_colour(s, content) for s in styles]
  elif config.preserve_colors == "luminance":  # the optimisation sees luminance only
    content_y = ncolour.luminance(content)
    styles = [ncolour.gray(ncolour.match_luminance(ncolour.luminance(s), content_y)) for s in styles]
    content = ncolour.gray(content_y)
  content = jnp.asarray(content, jnp.float32)
  styles = tuple(jnp.asarray(s, jnp.float32) for s in styles)
  targets = objective.make_targets(network, content, list(styles), config, weights)
  if config.shard == "spatial":
    mesh = spatial.make_mesh()
    spatial.check(content.shape[0], mesh)
    content, targets = spatial.place((content, targets), mesh, content.shape)
  memory.release_host_memory()   # what compiling the network's programs freed (after the calls)
  return Prepared(config=config, net=network, content=content, styles=styles,
                  style_weights=weights, colours=colours, targets=targets,
                  weights=objective.make_weights(config, net.preprocessing, net.normalized),
                  loss_weights=config.loss_weights(net.preprocessing, net.normalized))


def check_history_fits(config: StyleConfig, height: int, width: int, device=None) -> None:
  """NSTError, naming the figures, when the L-BFGS history alone cannot fit the device."""
  if config.optimizer != "lbfgs":
    return
  need = memory.lbfgs_history_bytes(height, width, config.lbfgs_memory)
  have = memory.device_capacity(device)
  if have is not None and need > have:
    fits = max(1, have // max(1, memory.lbfgs_history_bytes(height, width, 1)) // 2)
    raise NSTError(f"an L-BFGS history of {config.lbfgs_memory} pairs at {width}x{height} needs "
                   f"{memory.human(need)}, more than the {memory.human(have)} this device has; "
                   f"use --lbfgs-memory {min(fits, 100)} or less")


def steps_program(prepared: Prepared, state: optim.State, k: int = 1, devices=None):
  """The compiled program taking ``k`` steps for ``prepared``'s static config and these
  shapes; ``(fn, seconds)``.

  ``fn(net, image, opt_state, evaluations, targets, weights) -> (state, metrics,
  good)``: ``metrics`` stacked over the ``k`` steps (a fixed-trip loop: no
  host round trip between steps), ``good`` the last image whose loss was
  finite. A non-finite loss freezes the state for the call's remaining steps.
  """
  static = prepared.config.static_key()
  args = (prepared.net, state.image, state.opt_state, state.evaluations,
          prepared.targets, prepared.weights)
  return programs.compiled(f"steps{k}", objective.program_key(static),
                           lambda: make_steps(static, k), args, devices=devices,
                           donate_argnums=(2,))


def make_steps(config: StyleConfig, k: int):
  """``k`` optimiser steps as one function (see :func:`steps_program`)."""
  step = optim.make_step(config)
  if config.shard == "spatial":   # outputs in the inputs' layout: one program for every call
    inner = _steps(step, k)

    def steps(net, image, opt_state, evaluations, targets, weights):
      out = inner(net, image, opt_state, evaluations, targets, weights)
      return spatial.constrain(out, spatial.make_mesh(), image.shape)

    return steps
  return _steps(step, k)


def _steps(step, k: int):
  def steps(net, image, opt_state, evaluations, targets, weights):
    def body(carry, _):
      state, good, stopped = carry
      new, metrics = step(net, *state, targets, weights)
      stop = stopped | ~jnp.isfinite(metrics["loss"])
      keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(stop, x, y), a, b)
      good = jnp.where(stop, good, state[0])   # the incoming image's loss was finite
      return (keep(state, tuple(new)), good, stop), metrics

    if k == 1:   # no loop at all
      new, metrics = step(net, image, opt_state, evaluations, targets, weights)
      return new, jax.tree.map(lambda a: a[None], metrics), image
    carry = ((image, opt_state, evaluations), image, jnp.zeros((), bool))
    (state, good, _), metrics = jax.lax.scan(body, carry, length=k)
    return optim.State(*state), metrics, good

  return steps


def terms_program(prepared: Prepared, image):
  """The compiled ``terms(image, net, targets, weights) -> {term: value}``; (fn, seconds)."""
  static = prepared.config.static_key()

  def make():
    terms = objective.make_terms_fn(static)
    return lambda image, net, targets, weights: terms(image, net=net, targets=targets,
                                                      weights=weights)

  return programs.compiled("terms", objective.program_key(static), make,
                           (image, prepared.net, prepared.targets, prepared.weights))


def finish_image(prepared: Prepared, image) -> np.ndarray:
  """The optimised image as the user gets it: clipped, with the content's chroma in the
  ``post`` and ``luminance`` colour modes."""
  image = np.clip(spatial.to_host(image).astype(np.float32), 0.0, 1.0)
  if prepared.config.preserve_colors in ("post", "luminance"):
    image = ncolour.transfer_chroma(image, prepared.colours)
  return image


def initial_image(prepared: Prepared):
  """``config.init``: the content, the style (resized), seeded noise, or an image file resized
  to the working size (Lanczos, as the content was)."""
  init = prepared.config.init
  if init in ("content", "noise", "style"):
    return optim.initial_image(prepared.config, prepared.content, prepared.style)
  if init == "mean":   # jcjohnson's -init random: randn·0.001 in the network's input units
    noise = 1e-3 * jax.random.normal(jax.random.key(prepared.config.seed), prepared.content.shape)
    return vgg.deprocess(noise, prepared.net.preprocessing, prepared.config.input_scale)
  h, w = prepared.content.shape[:2]
  image = nimage.resize_to(nimage.load_image(init), h, w)
  if prepared.config.preserve_colors == "luminance":
    image = ncolour.gray(ncolour.luminance(image))
  return jnp.asarray(image)


def loss_floats(terms: dict, weights: dict) -> dict[str, float]:
  """``{term: value, ..., "total": Σ weight·term}`` as Python floats."""
  out = {k: float(v) for k, v in terms.items()}
  out["total"] = float(objective.total(terms, weights))
  return out


def start_state(prepared: Prepared, start=None) -> optim.State:
  """The state a run starts from.

  ``start``: ``None`` (``config.init``: content, noise or style), an (H, W, 3)
  image (a fresh optimiser at it), or a :class:`~nstjax.optim.State` (continue
  it, L-BFGS history included).
  """
  if isinstance(start, optim.State):
    if start.image.shape != prepared.content.shape:
      raise NSTError(f"the state to continue is for a {start.image.shape[1]}x"
                     f"{start.image.shape[0]} image, this run's is "
                     f"{prepared.content.shape[1]}x{prepared.content.shape[0]}")
    state = jax.tree.map(jnp.copy, start)   # the step donates opt_state; keep the caller's
  else:
    if start is None:
      image = initial_image(prepared)
    else:
      start = spatial.to_host(start) if isinstance(start, jax.Array) else start
      image = jnp.asarray(nimage.as_rgb(start, "start image"))
      if image.shape != prepared.content.shape:
        image = jax.image.resize(image, prepared.content.shape, "linear")
    state = optim.init_state(prepared.config.static_key(), image, terms=prepared.weights)
  if prepared.config.shard == "spatial":
    state = spatial.place(state, spatial.make_mesh(), prepared.content.shape)
  return state


def devices_record(devices) -> dict:
  """The devices a run used: a short description and the full list."""
  devices = list(devices)
  kinds = sorted({d.device_kind for d in devices})
  return {"device": f"{len(devices)} x {', '.join(kinds)} ({devices[0].platform})"
          if len(devices) > 1 else f"{devices[0].device_kind} ({devices[0].platform})",
          "devices": [str(d) for d in devices]}


def tile_record(config, shape, arch: str) -> dict | None:
  """The tiling of a run (``None`` untiled): tile, grid, halo, window and the windows' pixels
  over the image's (the halo's extra compute per network pass)."""
  if config.tile is None:
    return None
  grid = tiling.make_grid(shape, config.tile, arch, objective.feature_layers(config))
  return {**grid.describe(), "window_pixels_ratio": round(tiling.extra_compute(grid), 3)}


def summarise(prepared: Prepared, *, status: str, iterations: int, evaluations: int,
              seconds: float, compile_seconds: float, initial: dict, final: dict,
              devices=None, **extra) -> dict:
  """The JSON-ready record of one run (or one job of a batch)."""
  config = prepared.config
  return {
      "status": status,
      "iterations": iterations,
      "evaluations": evaluations,
      "seconds": round(seconds, 4),
      "seconds_per_evaluation": round(seconds / evaluations, 5) if evaluations else None,
      "compile_seconds": round(compile_seconds, 4),
      "initial_losses": initial,
      "losses": final,
      "loss_weights": prepared.loss_weights,
      "style_representation": config.style_spec().describe(),
      "precision": objective.precision(config),
      "conv_algorithm": vgg.conv_algorithm(prepared.net),
      "line_search": optim.line_search(config),
      "tile": tile_record(config, prepared.content.shape, prepared.net.arch),
      "shard": (None if config.shard == "none" else
                {"mode": config.shard, "devices": len(jax.devices()), "axis": "height"}),
      "style_weights": list(prepared.style_weights),
      "height": int(prepared.content.shape[0]), "width": int(prepared.content.shape[1]),
      **devices_record(devices if devices is not None else jax.devices()[:1]),
      **extra,
      "config": dataclasses.asdict(config),
  }


CALL_SECONDS = 0.25   # a compiled call of several steps lasts about this long (Ctrl-C waits)
MAX_STEPS_PER_CALL = 64


def choose_steps_per_call(seconds_per_step: float) -> int:
  """The most steps (a power of two) one call can take within ``CALL_SECONDS``."""
  if not seconds_per_step > 0:
    return 1
  k = 1
  while k * 2 <= MAX_STEPS_PER_CALL and k * 2 * seconds_per_step <= CALL_SECONDS:
    k *= 2
  return k


class StepCalls:
  """The compiled programs of a loop that takes several steps per call, and how many.

  ``build(n) -> (program, compile seconds)`` makes the ``n``-step program. With
  ``steps_per_call=None`` the count is chosen from the second call's time (the
  first includes warm-up) by :func:`choose_steps_per_call`; ``agree`` maps it to
  the value every process uses (processes stepping one image together must call
  the same programs). Used by :func:`run` and by batches.
  """

  def __init__(self, build: Callable[[int], tuple], steps_per_call: int | None = None,
               agree: Callable[[int], int] | None = None):
    self._build, self._agree = build, agree
    self.auto = steps_per_call is None
    self.k = 1 if self.auto else max(1, int(steps_per_call))
    self._programs: dict = {}
    self.compile_seconds = 0.0
    self.get(1)   # built before the loop starts: its compilation is not loop time

  def get(self, left: int):
    """``(n, program)`` for the next call, ``left`` steps before the loop must stop."""
    n = self.k if left >= self.k else 1
    if n not in self._programs:
      self._programs[n], seconds = self._build(n)
      self.compile_seconds += seconds
    return n, self._programs[n]

  def timed(self, done_before: int, seconds: float) -> None:
    """Records a call that began after ``done_before`` steps and lasted ``seconds``."""
    if self.auto and done_before == 1:
      k = choose_steps_per_call(seconds)
      self.k = self._agree(k) if self._agree is not None else k


def run(prepared: Prepared, *, iterations: int | None = None, start=None,
        callback: Callable[[Progress], None] | None = None, terms_every: int = 10,
        image_every: int = 0, steps_per_call: int | None = None,
        progress_offset: tuple[int, int] = (0, 0)) -> Result:
  """Optimises ``prepared``'s image.

  Args:
    prepared: from :func:`prepare`.
    iterations: steps to take (default ``config.iterations``).
    start: where to start (:func:`start_state`): ``None``, an image or a
      previous :class:`Result`'s ``state``.
    callback: called after every step with a :class:`Progress`.
    terms_every: for optax's zoom line search, whose steps do not report the
      named loss terms, every this many steps (and at the last) the callback
      gets them at the cost of one forward pass (0: never). nstjax's L-BFGS
      and Adam report them every step, from the step's own evaluation.
    image_every: the callback gets the current image at least every this many
      steps (a call of several steps ends there); 0: only where a call ends.
    steps_per_call: steps per compiled call; ``None`` chooses from the first
      step's time so that a call lasts about a quarter of a second (1 on a
      CPU at usual sizes).
    progress_offset: ``(steps before this run, steps in all)`` when this run
      is one scale of several: the callback's iteration numbers, the total
      and ``image_every`` then count over all scales.

  Returns:
    A :class:`Result` whose ``state`` continues the run and whose ``trace``
    has one record per step. A NaN or inf loss raises
    :class:`~nstjax.errors.NonFiniteLoss`, which carries the last image whose
    loss was finite.
  """
  config = prepared.config
  iterations = config.iterations if iterations is None else int(iterations)
  if iterations < 0:
    raise NSTError(f"iterations must be >= 0, got {iterations}")
  state = start_state(prepared, start)
  kw = (prepared.net, prepared.targets, prepared.weights)
  terms_fn, terms_seconds = terms_program(prepared, state.image)
  initial = loss_floats(terms_fn(state.image, *kw), prepared.weights)
  evaluations0 = int(state.evaluations)

  status, done, stopped_by, trace, pending = "done", 0, None, [], None
  offset, overall = progress_offset
  overall = overall or iterations
  good = state.image
  # One image over several processes: they stop together, after the same call.
  multi = config.shard == "spatial" and spatial.multiprocess()
  calls = StepCalls(lambda n: steps_program(prepared, state, n), steps_per_call,
                    spatial.agree_first if multi else None)
  stop_guard = (files.agreed_stop_signals(spatial.agree_max) if multi
                else contextlib.nullcontext(lambda: None))
  t_loop = time.perf_counter()
  with stop_guard as check_stop:
    try:
      while done < iterations:
        left = iterations - done
        if image_every:
          left = min(left, image_every - (offset + done) % image_every)
        n, program = calls.get(left)
        t_call = time.perf_counter()
        # The call donates the optimiser state: the new state is kept at once (an
        # interrupt while waiting for the results below must not leave `state`
        # pointing at donated buffers); `pending` counts its steps until replayed.
        with files.deferred_stop_signals():
          new_state, metrics, call_good = program(prepared.net, state.image, state.opt_state,
                                                  state.evaluations, prepared.targets,
                                                  prepared.weights)
          state, pending = optim.State(*new_state), (done, n)
        metrics = jax.device_get(metrics)     # one transfer per call
        calls.timed(done, time.perf_counter() - t_call)
        losses = np.asarray(metrics["loss"])
        if np.isfinite(losses[0]):   # else the last finite image is from an earlier call
          good = call_good
        for j in range(n):
          loss = float(losses[j])             # the loss of the image step j started from
          if not np.isfinite(loss):
            if done == 0:
              raise NonFiniteLoss(f"the loss of the initial image is {loss}; check the inputs "
                                  f"and loss weights", iteration=0, image=None)
            raise NonFiniteLoss(
                f"loss became {loss} after iteration {done}; keeping the last image with a "
                f"finite loss (iteration {done - 1}); try smaller loss weights or learning rate",
                iteration=done - 1, image=np.clip(spatial.to_host(good), 0, 1))
          done += 1
          elapsed = time.perf_counter() - t_loop
          terms = None
          if "terms" in metrics:
            terms = {name: float(v[j]) for name, v in metrics["terms"].items()}
            terms["total"] = loss
          trace.append({"iteration": done, "evaluations": int(metrics["evaluations"][j]) - evaluations0,
                        "seconds": round(elapsed, 5), "losses": terms or {"total": loss}})
          if callback is not None:
            last = j == n - 1
            if terms is None and terms_every and last and (done % terms_every == 0
                                                           or done == iterations):
              terms = loss_floats(terms_fn(state.image, *kw), prepared.weights)
            image = state.image if last else None
            if multi and last:   # gathered only where asked for (a collective)
              image = (spatial.to_host(image) if done == iterations or (
                  image_every and (offset + done) % image_every == 0) else None)
            callback(Progress(iteration=offset + done, iterations=overall,
                              evaluations=trace[-1]["evaluations"], loss=loss, elapsed=elapsed,
                              image=image, terms=terms))
        pending = None
        check_stop()
    except KeyboardInterrupt as e:   # Ctrl-C, or SIGTERM/SIGHUP as nstjax.errors.Interrupted
      status, stopped_by = "interrupted", getattr(e, "name", "SIGINT")
      if pending is not None:   # the state is past this call's steps, whatever was replayed
        done = pending[0] + pending[1]
    seconds = time.perf_counter() - t_loop

    image = optim.accepted_image(config.static_key(), state)
    final = loss_floats(terms_fn(image, *kw), prepared.weights)
    if not np.isfinite(final["total"]):
      # The last step's result was never checked by the loop; its predecessor was.
      previous = None if done == 0 else np.clip(spatial.to_host(good), 0, 1)
      raise NonFiniteLoss(
          f"the loss of the final image is {final['total']}; keeping the last image "
          f"with a finite loss (iteration {done - 1})", iteration=done - 1, image=previous)
    finished = finish_image(prepared, image)
  summary = summarise(prepared, status=status, iterations=done,
                      evaluations=int(state.evaluations) - evaluations0, seconds=seconds,
                      compile_seconds=calls.compile_seconds + terms_seconds, initial=initial,
                      final=final, steps_per_call=calls.k,
                      **({"interrupted_by": stopped_by} if stopped_by else {}))
  return Result(image=finished, status=status, summary=summary, state=state, trace=trace)


AUTO_SMALLEST = 128   # auto scales: halve the size down to this (crowsonkb starts at 128)


def scale_schedule(config: StyleConfig, long_side: int | None = None) -> list[tuple[int, int]]:
  """``[(long side, steps), ...]`` of a coarse-to-fine run (one entry without ``scales``).

  ``auto``: the output size, halved while the half is at least 128 px
  (256 -> 128, 256; 1024 -> 128, 256, 512, 1024). Steps: ``scale_iterations``,
  or ``iterations`` at the last scale and twice the next scale's at each one
  below (a 128 -> 256 run of 30 top steps: 60 + 30), so every scale costs
  about half the one above it. ``long_side``: the content's, when ``size`` is
  ``None``.
  """
  size = config.size if config.size is not None else long_side
  if config.scales is None:
    return [(size, config.iterations)]
  if config.scales == "auto":
    sizes = [size]
    while sizes[0] // 2 >= AUTO_SMALLEST:
      sizes.insert(0, sizes[0] // 2)
  else:
    sizes = list(config.scales)
  if config.scale_iterations is not None:
    steps = list(config.scale_iterations)
    if len(steps) != len(sizes):
      raise NSTError(f"{len(steps)} scale iterations for {len(sizes)} scales "
                     f"({','.join(map(str, sizes))})")
  else:
    steps = [config.iterations * 2 ** (len(sizes) - 1 - i) for i in range(len(sizes))]
  return list(zip(sizes, steps))


def run_scales(net: vgg.VGGParams, content, style, config: StyleConfig, *,
               callback: Callable[[Progress], None] | None = None, image_every: int = 0,
               network: vgg.VGGParams | None = None) -> Result:
  """A coarse-to-fine run (``config.scales``): each scale prepared afresh (content and
  styles resized, style targets recomputed, a new L-BFGS history) and started from the
  previous scale's image, upsampled (cubic). One scale: :func:`run` of :func:`prepare`.

  The summary is the last scale's, with ``"scales"``: one record per scale (size,
  steps, evaluations, seconds, losses), and totals over all scales; ``trace``
  records carry their ``"scale"``; the callback counts steps over all scales.
  A Ctrl-C ends the run with the current scale's image (at that scale's size).
  """
  content = nimage.as_rgb(content, "content")
  plan = scale_schedule(config, max(content.shape[:2]))
  if len(plan) == 1:
    single = dataclasses.replace(config, scales=None, scale_iterations=None)
    return run(prepare(net, content, style, single, network=network), callback=callback,
               image_every=image_every)
  overall = sum(n for _, n in plan)
  done, image, records, trace, result = 0, None, [], [], None
  for i, (size, steps) in enumerate(plan):
    cfg = dataclasses.replace(config, size=size, iterations=steps, scales=None,
                              scale_iterations=None)
    prepared = prepare(net, content, style, cfg, network=network)
    if image is not None:   # cubic overshoots at edges: clipped again
      image = jnp.clip(jax.image.resize(image, prepared.content.shape, "cubic"), 0.0, 1.0)
    result = run(prepared, start=image, callback=callback, image_every=image_every,
                 progress_offset=(done, overall))
    s = result.summary
    records.append({"scale": i, "size": size, "width": s["width"], "height": s["height"],
                    "iterations": s["iterations"], "evaluations": s["evaluations"],
                    "seconds": s["seconds"], "compile_seconds": s["compile_seconds"],
                    "initial_losses": s["initial_losses"], "losses": s["losses"]})
    trace += [dict(r, scale=i, iteration=done + r["iteration"]) for r in result.trace]
    done += s["iterations"]
    # The next scale starts from this one's image as the user would see it (clipped).
    image = jnp.clip(optim.accepted_image(cfg.static_key(), result.state), 0.0, 1.0)
    if result.status != "done":
      break
  summary = dict(result.summary, scales=records, iterations=done,
                 evaluations=sum(r["evaluations"] for r in records),
                 seconds=round(sum(r["seconds"] for r in records), 4),
                 compile_seconds=round(sum(r["compile_seconds"] for r in records), 4),
                 initial_losses=records[0]["initial_losses"],
                 config=dataclasses.asdict(config))
  summary["seconds_per_evaluation"] = (round(summary["seconds"] / summary["evaluations"], 5)
                                       if summary["evaluations"] else None)
  return dataclasses.replace(result, summary=summary, trace=trace)


def optimize(net: vgg.VGGParams, content, style, config: StyleConfig = StyleConfig(), *,
             callback: Callable[[Progress], None] | None = None, terms_every: int = 10,
             start=None) -> Result:
  """Optimises an image to match ``content``'s features and ``style``'s statistics.

  ``content`` and ``style`` are already at the working size (``config.size``
  and ``style_scale`` are not applied; see :func:`stylize`). Equal to
  ``run(prepare(net, content, style, config, resize=False), ...)``.
  """
  return run(prepare(net, content, style, config, resize=False), callback=callback,
             terms_every=terms_every, start=start)


def stylize_result(content, style, config: StyleConfig = StyleConfig(), *,
                   net: vgg.VGGParams | None = None, callback=None, start=None) -> Result:
  """Like :func:`stylize` but returns the whole :class:`Result` (image, status, summary, state)."""
  if net is None:
    from nstjax.weights.registry import load_weights
    if isinstance(config, StyleConfig):
      config.validate()
    net = load_weights()
  if start is None and isinstance(config, StyleConfig) and config.scales is not None:
    return run_scales(net, content, style, config, callback=callback)
  return run(prepare(net, content, style, config), callback=callback, start=start)


def stylize(content, style, config: StyleConfig = StyleConfig(), *,
            net: vgg.VGGParams | None = None, callback=None, start=None) -> np.ndarray:
  """Stylises ``content`` with ``style``; returns (H, W, 3) float32 in [0, 1].

  Args:
    content, style: file paths, PIL images or (H, W, 3) RGB arrays (``uint8``,
      or floats in [0, 1]).
    config: :class:`~nstjax.config.StyleConfig`.
    net: weights from :func:`nstjax.load_weights`; ``None`` loads the default VGG19.
    callback: called with a :class:`Progress` after every optimiser step.
    start: start image instead of ``config.init`` (any size: resized), or a
      previous result's ``state`` to continue.
  """
  return stylize_result(content, style, config, net=net, callback=callback, start=start).image
