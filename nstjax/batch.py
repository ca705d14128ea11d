"""Batch stylisation: one compiled program per group of same-shape jobs, sharded
over the local devices, each job isolated from the others' failures.

Every job goes through :func:`nstjax.pipeline.prepare` (load, resize,
validate, size checks, targets; jobs of the same images differing only in loss
weights, seeds or solver settings share one preparation); a job that fails
there gets a ``"failed"`` :class:`~nstjax.pipeline.Result` with its reason and
the others go on. Jobs whose static configuration
(:meth:`~nstjax.config.StyleConfig.static_key`), step count and argument shapes
agree form a group, run as one program: the
jobs are split over the devices with ``jax.shard_map`` (a 1-D ``data`` mesh;
the job count is padded to a multiple of the device count and the padding
discarded), and on each device the jobs are stepped together (``vmap``: one
batched program, the default for nstjax's L-BFGS and Adam, whose steps have no
control flow) or one after another (``map``: a loop over the jobs, each updated
in place; for optax's zoom line search, and on a CPU for images over 128 x 128
pixels, where batching is measured slower: :func:`batch_mode`). A call takes
several steps of every job (as many as fit in about a quarter of a second, as
for one image), so the losses reach the host once per call.
Each job keeps its own optimiser state, L-BFGS line search, targets and
weights; a job whose loss becomes NaN stops there and keeps its last finite
image (``"non-finite"``) while the others go on.

Why ``map`` for the zoom line search: under ``vmap`` it turns
every ``lax.cond`` into a ``select`` that runs both branches, measured 5–10×
slower than solving the jobs one after another; a sequential map per device
keeps each job's control flow and still shares one compilation, one weights
load and the targets' programs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from nstjax import files, objective, optim, programs, vgg
from nstjax.config import StyleConfig
from nstjax.errors import NonFiniteLoss, NSTError
from nstjax.pipeline import (Prepared, Result, StepCalls, finish_image, initial_image, loss_floats,
                             make_steps, prepare, run_scales, summarise, targets_key)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BatchProgress:
  """Reported after every step of a group."""
  group: int            # index of the group being run
  groups: int
  iteration: int
  iterations: int
  jobs: int             # jobs in this group
  losses: np.ndarray    # (jobs,) total loss of each job's incoming image
  elapsed: float


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def group_key(p: Prepared):
  """Jobs with equal keys run as one program: static config, step count, argument shapes."""
  shapes = programs.signature((p.content, p.targets, p.weights))
  return (p.config.static_key(), p.config.iterations, shapes)


# On a CPU a group's convolutions batched together run no faster per job than one
# job's, and slower past this size (8 jobs, vmap's time per job over map's: 1.06 at
# 128x96, within noise (0.98 in another run), 1.06 at 192x144, 1.08 at 256x192, 1.34
# at 512x384; BENCHMARKS.md, "Batched jobs").
CPU_VMAP_MAX_PIXELS = 128 * 128


def batch_mode(config, pixels: int | None = None, platform: str | None = None) -> str:
  """How a device steps its jobs: ``vmap`` (one batched program: the convolutions of all
  jobs together) or ``map`` (one job after another).

  ``auto``: ``map`` for optax's zoom (data-dependent loops: under ``vmap`` both
  sides of every branch run) and on a CPU for images of more than
  :data:`CPU_VMAP_MAX_PIXELS` pixels; else ``vmap`` (on a GPU or TPU a small
  image leaves most of the device idle: batching its convolutions is the point).
  """
  if config.batch_mode != "auto":
    return config.batch_mode
  if optim.uses_line_search(config):
    return "map"
  if platform == "cpu" and pixels is not None and pixels > CPU_VMAP_MAX_PIXELS:
    return "map"
  return "vmap"


def _batch_steps(static_key, mesh, k: int, mode: str):
  """``k`` steps of every job of a group in one call: each device steps its jobs
  together (``vmap``) or one after another (``map``: a ``fori_loop`` over them),
  each job's steps in :func:`nstjax.pipeline.make_steps`'s fixed-trip loop (a
  job whose loss turns non-finite is frozen for the call's remaining steps)."""
  steps = make_steps(static_key, k)

  if mode == "vmap":
    def per_device(net, images, opt_states, evaluations, targets, weights):
      return jax.vmap(lambda *args: steps(net, *args))(images, opt_states, evaluations, targets,
                                                        weights)
  else:
    # One job after another, each job's state read from and written back into the
    # stacked (donated) state: in place, where lax.map would stack a second copy of
    # every job's L-BFGS history as its output (+1.1 GB for 8 jobs at 512 px).
    def per_device(net, images, opt_states, evaluations, targets, weights):
      row = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
      first = row((images, opt_states, evaluations, targets, weights), 0)
      _, metrics_shape, good_shape = jax.eval_shape(lambda *a: steps(net, *a), *first)
      stacked = lambda shape: jnp.zeros((images.shape[0],) + shape.shape, shape.dtype)

      def body(i, carry):
        state, metrics, good = carry
        new, m, g = steps(net, *row(state, i), row(targets, i), row(weights, i))
        put = lambda tree, value: jax.tree.map(lambda a, v: a.at[i].set(v), tree, value)
        return put(state, tuple(new)), put(metrics, m), good.at[i].set(g)

      carry = ((images, opt_states, evaluations), jax.tree.map(stacked, metrics_shape),
               stacked(good_shape))
      state, metrics, good = jax.lax.fori_loop(0, images.shape[0], body, carry)
      return optim.State(*state), metrics, good

  # check_vma=False: value_and_grad_from_state's lax.cond mixes replicated and
  # per-device values (anchors-jax §1.3e).
  return jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P("data"), P("data"), P("data"), P("data"), P("data")),
                       out_specs=(P("data"), P("data"), P("data")), check_vma=False)


def _batch_terms(static_key):
  terms = objective.make_terms_fn(static_key)
  return jax.vmap(lambda image, net, targets, weights: terms(image, net=net, targets=targets,
                                                             weights=weights),
                  in_axes=(0, None, 0, 0))


def _batch_init(static_key):
  """Every job's fresh state from the stacked initial images, made in place on the
  devices (one job's L-BFGS history at 512 px is 472 MB: no host copy, no stacking)."""
  return jax.vmap(lambda image, weights: optim.init_state(static_key, image, terms=weights))


def run_group(jobs: Sequence[Prepared], *, devices=None,
              callback: Callable[[int, np.ndarray, float], None] | None = None,
              steps_per_call: int | None = None) -> list[Result]:
  """Optimises one group of prepared jobs (equal :func:`group_key`) together.

  Args:
    jobs: from :func:`nstjax.pipeline.prepare`, sharing one prepared network.
    devices: devices to shard over (default: ``jax.local_devices()``).
    callback: ``callback(iteration, losses (jobs,), elapsed)`` after every step.
    steps_per_call: steps per compiled call (every job's); ``None`` chooses, as
      :func:`nstjax.pipeline.run` does, from the second call's time.

  Returns:
    One :class:`~nstjax.pipeline.Result` per job, status ``"done"``,
    ``"non-finite"`` (last finite image kept) or ``"interrupted"`` (Ctrl-C).
  """
  n = len(jobs)
  base = jobs[0]
  static = base.config.static_key()
  key = objective.program_key(static)
  devices = tuple(devices if devices is not None else jax.local_devices())
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  mode = batch_mode(static, base.content.shape[0] * base.content.shape[1], devices[0].platform)
  # Pad to a multiple of the device count with copies of the last job (discarded).
  pad = (-n) % len(devices)
  padded = list(jobs) + [jobs[-1]] * pad
  shard = NamedSharding(mesh, P("data"))
  put = lambda trees: jax.device_put(_stack(trees), shard)
  targets, weights = put([p.targets for p in padded]), put([p.weights for p in padded])
  images = put([initial_image(p) for p in padded])
  init, init_seconds = programs.compiled(
      "batch-init", key, lambda: _batch_init(static), (images, weights), devices=devices,
      out_shardings=shard)
  state = optim.State(*init(images, weights))
  net = base.net
  terms_fn, terms_seconds = programs.compiled(
      "batch-terms", key, lambda: _batch_terms(static), (state.image, net, targets, weights),
      devices=devices)
  initial = terms_fn(state.image, net, targets, weights)

  def program(k):
    args = (net, state.image, state.opt_state, state.evaluations, targets, weights)
    # the mode is a function of the key's parts (config, shapes, devices)
    return programs.compiled(f"batch-steps{k}", key, lambda: _batch_steps(static, mesh, k, mode),
                             args, devices=devices, donate_argnums=(2,))

  calls = StepCalls(program, steps_per_call)

  iterations = base.config.iterations
  # Each call returns every job's last image whose loss was finite; a job whose
  # first loss in a call is not finite takes the previous call's (the images are
  # not donated). They reach the host only for a job that fails.
  previous_good = state.image
  good = {}                             # failed job -> its last image with a finite loss
  failed_at = np.full((n + pad,), -1)
  status, done, pending = "done", 0, None
  traces = [[] for _ in range(n)]       # one record per step and job (see Result.trace)
  t_loop = time.perf_counter()
  try:
    while done < iterations and np.any(failed_at[:n] < 0):
      steps_now, call = calls.get(iterations - done)
      t_call = time.perf_counter()
      with files.deferred_stop_signals():   # the old state's buffers are donated
        new_state, metrics, call_good = call(
            net, state.image, state.opt_state, state.evaluations, targets, weights)
        state, pending = optim.State(*new_state), (done, steps_now)
      metrics = jax.device_get(metrics)     # one transfer per call
      calls.timed(done, time.perf_counter() - t_call)
      losses = np.asarray(metrics["loss"])  # (jobs, steps)
      first_bad = np.where(np.isfinite(losses).all(axis=1), -1, np.argmin(np.isfinite(losses), 1))
      newly = (first_bad >= 0) & (failed_at < 0)
      if newly.any():
        this_call, before = np.asarray(call_good), np.asarray(previous_good)
        for i in np.flatnonzero(newly):
          good[int(i)] = (this_call if first_bad[i] > 0 else before)[i]
          failed_at[i] = done + first_bad[i]
      previous_good = call_good
      for j in range(steps_now):
        done += 1
        elapsed = time.perf_counter() - t_loop
        for i in range(n):
          if failed_at[i] < 0 or failed_at[i] >= done:
            rec = {name: float(v[i, j]) for name, v in metrics.get("terms", {}).items()}
            traces[i].append({"iteration": done, "evaluations": int(metrics["evaluations"][i, j]),
                              "seconds": round(elapsed, 5),
                              "losses": {**rec, "total": float(losses[i, j])}})
        if callback is not None:
          callback(done, losses[:n, j], elapsed)
      pending = None
  except KeyboardInterrupt:
    status = "interrupted"
    if pending is not None:   # the state is past this call's steps, whatever was replayed
      done = pending[0] + pending[1]
  seconds = time.perf_counter() - t_loop
  sharding = {"spec": [None if a is None else str(a) for a in state.image.sharding.spec],
              "devices_used": len(state.image.sharding.device_set)}
  final_image = optim.accepted_image(static, state)
  final = np.asarray(final_image)
  final_terms = terms_fn(final_image, net, targets, weights)
  evaluations = np.asarray(state.evaluations)
  results = []
  for i, p in enumerate(jobs):
    row = lambda tree: jax.tree.map(lambda x: x[i], tree)
    w = row(weights)
    final_losses = loss_floats(row(final_terms), w)
    job_status = status
    if failed_at[i] >= 0 or not np.isfinite(final_losses["total"]):
      job_status = "non-finite"
    # A final image whose loss is not finite was never checked by the loop: the
    # last call's last finite image stands in.
    image = final[i] if job_status != "non-finite" else good.get(i, np.asarray(previous_good)[i])
    summary = summarise(
        # a non-finite job: the iteration of the image kept, as NonFiniteLoss says it
        p, status=job_status, iterations=done if failed_at[i] < 0 else max(int(failed_at[i]) - 1, 0),
        evaluations=int(evaluations[i]), seconds=seconds,
        compile_seconds=calls.compile_seconds + init_seconds + terms_seconds,
        initial=loss_floats(row(initial), w), final=final_losses, devices=devices,
        steps_per_call=calls.k, seconds_note="wall time of the whole group's loop (jobs run together)",
        batch={"group_size": n, "padded_to": n + pad, "devices": len(devices), "mode": mode,
               **sharding})
    results.append(Result(
        # No per-job state: slicing every job's L-BFGS history out of the group
        # would copy it (630 MB a job at 512 px); continue a job with nstjax.run.
        image=finish_image(p, image), status=job_status, summary=summary, state=None,
        reason="the loss became non-finite; the last finite image is kept"
        if job_status == "non-finite" else None, trace=traces[i]))
  return results


def failed(config, reason: str, status: str = "failed") -> Result:
  """The result of a job that did not run (``"failed"``, or ``"interrupted"`` before it began)."""
  return Result(image=None, status=status, reason=reason,
                summary={"status": status, "reason": reason,
                         "config": dataclasses.asdict(config) if config is not None else None})


def stylize_batch(net: vgg.VGGParams, contents, styles, configs, *, devices=None,
                  callback: Callable[[BatchProgress], None] | None = None,
                  on_result: Callable[[int, Result], None] | None = None,
                  steps_per_call: int | None = None) -> list[Result]:
  """Stylises many (content, style, config) jobs; groups of same-shape jobs run together.

  Args:
    net: weights (:func:`nstjax.load_weights`).
    contents, styles: per-job file paths, PIL images or (H, W, 3) arrays.
    configs: one :class:`~nstjax.config.StyleConfig` per job, or one for all.
    devices: devices to shard each group over (default: all local devices).
    callback: receives a :class:`BatchProgress` after every step.
    on_result: ``on_result(job index, result)`` as soon as a job has its result
      (failed jobs first, then group by group), so a long batch can write its
      outputs as they finish.
    steps_per_call: steps per compiled call of a group (``None``: chosen from
      the second call's time so that a call lasts about a quarter of a second,
      as for one image); the losses reach the host once per call.

  Returns:
    One :class:`~nstjax.pipeline.Result` per job, in input order. A job that
    cannot run (a missing image, an invalid value, an image too small for its
    layers) is ``"failed"`` with its ``reason``; the others run. Ctrl-C ends
    the batch: the running group's jobs are ``"interrupted"`` (current image),
    jobs not started are ``"interrupted"`` with no image.
  """
  if isinstance(configs, StyleConfig):
    configs = [configs] * len(contents)
  if not (len(contents) == len(styles) == len(configs)):
    raise NSTError(f"{len(contents)} contents, {len(styles)} styles and {len(configs)} configs")
  out: list[Result | None] = [None] * len(configs)

  def deliver(i, result):
    out[i] = result
    if on_result is not None:
      on_result(i, result)

  networks, prepared, multiscale, shared = {}, {}, {}, {}
  for i, (c, s, cfg) in enumerate(zip(contents, styles, configs)):
    try:
      if not isinstance(cfg, StyleConfig):
        raise NSTError(f"job {i}: config must be a StyleConfig, got {type(cfg).__name__}")
      cfg.validate(net.arch)
      layers = objective.network_layers(cfg), objective.winograd_convs(cfg, net.arch, net.widths)
      if layers not in networks:
        networks[layers] = objective.network(net, cfg)
      if cfg.scales is not None or cfg.shard != "none":
        # coarse-to-fine (scale by scale) and spatially sharded jobs (each over every
        # device): one job at a time
        multiscale[i] = (c, s, cfg, networks[layers])
        continue
      key = targets_key(c, s, cfg)   # a sweep's jobs share one set of images and targets
      prepared[i] = prepare(net, c, s, cfg, network=networks[layers], like=shared.get(key))
      shared.setdefault(key, prepared[i])
    except NSTError as e:
      deliver(i, failed(cfg if isinstance(cfg, StyleConfig) else None, str(e)))
  groups: dict = {}
  for i, p in prepared.items():
    groups.setdefault(group_key(p), []).append(i)
  interrupted = False
  for g, idx in enumerate(groups.values()):
    if interrupted:
      for i in idx:
        deliver(i, failed(configs[i], "not started (interrupted)", status="interrupted"))
      continue

    def cb(it, losses, elapsed, g=g, idx=idx):
      if callback is not None:
        callback(BatchProgress(group=g, groups=len(groups), iteration=it,
                               iterations=prepared[idx[0]].config.iterations, jobs=len(idx),
                               losses=losses, elapsed=elapsed))
    results = run_group([prepared[i] for i in idx], devices=devices, callback=cb,
                        steps_per_call=steps_per_call)
    for i, r in zip(idx, results):
      interrupted = interrupted or r.status == "interrupted"
      deliver(i, r)
  for g, (i, (c, s, cfg, network)) in enumerate(multiscale.items(), start=len(groups)):
    if interrupted:
      deliver(i, failed(cfg, "not started (interrupted)", status="interrupted"))
      continue

    def cb(p, g=g):
      if callback is not None:
        callback(BatchProgress(group=g, groups=len(groups) + len(multiscale), iteration=p.iteration,
                               iterations=p.iterations, jobs=1, losses=np.asarray([p.loss]),
                               elapsed=p.elapsed))
    try:
      r = run_scales(net, c, s, cfg, callback=cb, network=network)
    except NonFiniteLoss as e:
      r = Result(image=e.image, status="non-finite", reason=str(e),
                 summary={"status": "non-finite", "reason": str(e), "losses": None,
                          "evaluations": None, "iterations": e.iteration,
                          "loss_weights": cfg.loss_weights(net.preprocessing, net.normalized),
                          "config": dataclasses.asdict(cfg)})
    except NSTError as e:
      r = failed(cfg, str(e))
    interrupted = r.status == "interrupted"
    deliver(i, r)
  return out
