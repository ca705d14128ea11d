"""Batch stylisation: one compiled program per group of same-shape jobs, sharded
over the local devices, each job isolated from the others' failures.

Every job goes through :func:`nstjax.pipeline.prepare` (load, resize,
validate, size checks, targets); a job that fails there gets a ``"failed"``
:class:`~nstjax.pipeline.Result` with its reason and the others go on. Jobs
whose static configuration (:meth:`~nstjax.config.StyleConfig.static_key`),
step count and argument shapes agree form a group, run as one program: the
jobs are split over the devices with ``jax.shard_map`` (a 1-D ``data`` mesh;
the job count is padded to a multiple of the device count and the padding
discarded), and on each device the jobs are stepped together (``vmap``: one
batched program, the default for nstjax's L-BFGS and Adam, whose steps have no
control flow) or one after another (``lax.map``: optax's zoom line search).
Each job keeps its own optimiser state, L-BFGS line search, targets and
weights; a job whose loss becomes NaN stops there and keeps its last finite
image (``"non-finite"``) while the others go on.

Why ``lax.map`` for the zoom line search: under ``vmap`` it turns
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
from nstjax.pipeline import (Prepared, Result, finish_image, loss_floats, prepare, run_scales,
                             start_state, summarise)

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


def batch_mode(config) -> str:
  """How a device steps its jobs: ``vmap`` (one batched program: the convolutions of all
  jobs together) or ``map`` (one job after another)."""
  if config.batch_mode != "auto":
    return config.batch_mode
  # optax's zoom has data-dependent loops: under vmap both sides of every branch run.
  return "map" if optim.uses_line_search(config) else "vmap"


def _batch_step(static_key, mesh):
  step = optim.make_step(static_key)

  if batch_mode(static_key) == "vmap":
    def per_device(net, images, opt_states, evaluations, targets, weights):
      return jax.vmap(lambda *args: step(net, *args))(images, opt_states, evaluations, targets,
                                                       weights)
  else:
    def per_device(net, images, opt_states, evaluations, targets, weights):
      return jax.lax.map(lambda args: step(net, *args),
                         (images, opt_states, evaluations, targets, weights))

  # check_vma=False: value_and_grad_from_state's lax.cond mixes replicated and
  # per-device values (anchors-jax §1.3e).
  return jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P("data"), P("data"), P("data"), P("data"), P("data")),
                       out_specs=(P("data"), P("data")), check_vma=False)


def _batch_terms(static_key):
  terms = objective.make_terms_fn(static_key)
  return jax.vmap(lambda image, net, targets, weights: terms(image, net=net, targets=targets,
                                                             weights=weights),
                  in_axes=(0, None, 0, 0))


def run_group(jobs: Sequence[Prepared], *, devices=None,
              callback: Callable[[int, np.ndarray, float], None] | None = None) -> list[Result]:
  """Optimises one group of prepared jobs (equal :func:`group_key`) together.

  Args:
    jobs: from :func:`nstjax.pipeline.prepare`, sharing one prepared network.
    devices: devices to shard over (default: ``jax.local_devices()``).
    callback: ``callback(iteration, losses (jobs,), elapsed)`` after every step.

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
  states = [start_state(p) for p in jobs]
  # Pad to a multiple of the device count with copies of the last job (discarded).
  pad = (-n) % len(devices)
  padded = list(jobs) + [jobs[-1]] * pad
  states += [states[-1]] * pad
  shard = NamedSharding(mesh, P("data"))
  put = lambda trees: jax.device_put(_stack(trees), shard)
  targets, weights = put([p.targets for p in padded]), put([p.weights for p in padded])
  state = jax.tree.map(jnp.copy, put(states))   # the donated opt_state must not alias the images
  net = base.net
  terms_fn, terms_seconds = programs.compiled(
      "batch-terms", key, lambda: _batch_terms(static), (state.image, net, targets, weights),
      devices=devices)
  initial = terms_fn(state.image, net, targets, weights)
  args = (net, state.image, state.opt_state, state.evaluations, targets, weights)
  step, compile_seconds = programs.compiled("batch-step", key, lambda: _batch_step(static, mesh),
                                            args, devices=devices, donate_argnums=(2,))

  iterations = base.config.iterations
  # Images are not donated, so the previous step's device array is the last image
  # whose loss was checked; it reaches the host only for a job that fails.
  previous = state.image
  good = {}                               # failed job -> its last image with a finite loss
  failed_at = np.full((n + pad,), -1)
  status, done = "done", 0
  traces = [[] for _ in range(n)]       # one record per step and job (see Result.trace)
  t_loop = time.perf_counter()
  try:
    for it in range(1, iterations + 1):
      with files.deferred_stop_signals():   # the old state's buffers are donated
        new_state, metrics = step(net, state.image, state.opt_state, state.evaluations,
                                  targets, weights)
        checked, previous, state, done = previous, state.image, optim.State(*new_state), it
      metrics = jax.device_get(metrics)
      losses = np.asarray(metrics["loss"])
      elapsed = time.perf_counter() - t_loop
      for i in range(n):
        if failed_at[i] < 0 and np.isfinite(losses[i]):
          rec = {k: float(v[i]) for k, v in metrics.get("terms", {}).items()}
          traces[i].append({"iteration": it, "evaluations": int(metrics["evaluations"][i]),
                            "seconds": round(elapsed, 5),
                            "losses": {**rec, "total": float(losses[i])}})
      newly = ~np.isfinite(losses) & (failed_at < 0)
      if newly.any():
        host = np.asarray(checked)
        good.update({int(i): host[i] for i in np.flatnonzero(newly)})
        failed_at[newly] = it - 1
      if callback is not None:
        callback(it, losses[:n], time.perf_counter() - t_loop)
      if not np.any(failed_at[:n] < 0):
        break
  except KeyboardInterrupt:
    status = "interrupted"
  seconds = time.perf_counter() - t_loop
  sharding = {"spec": [None if a is None else str(a) for a in state.image.sharding.spec],
              "devices_used": len(state.image.sharding.device_set)}
  final_image = optim.accepted_image(static, state)
  final = np.asarray(final_image)
  last_checked = np.asarray(previous)
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
    image = final[i] if job_status != "non-finite" else good.get(i, last_checked[i])
    summary = summarise(
        p, status=job_status, iterations=done if failed_at[i] < 0 else int(failed_at[i]),
        evaluations=int(evaluations[i]), seconds=seconds,
        compile_seconds=compile_seconds + terms_seconds,
        initial=loss_floats(row(initial), w), final=final_losses, devices=devices,
        seconds_note="wall time of the whole group's loop (jobs run together)",
        batch={"group_size": n, "padded_to": n + pad, "devices": len(devices), **sharding})
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
                  on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
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

  networks, prepared, multiscale = {}, {}, {}
  for i, (c, s, cfg) in enumerate(zip(contents, styles, configs)):
    try:
      if not isinstance(cfg, StyleConfig):
        raise NSTError(f"job {i}: config must be a StyleConfig, got {type(cfg).__name__}")
      cfg.validate(net.arch)
      layers = objective.network_layers(cfg)
      if layers not in networks:
        networks[layers] = vgg.prepare(net, layers)
      if cfg.scales is not None or cfg.shard != "none":
        # coarse-to-fine (scale by scale) and spatially sharded jobs (each over every
        # device): one job at a time
        multiscale[i] = (c, s, cfg, networks[layers])
        continue
      prepared[i] = prepare(net, c, s, cfg, network=networks[layers])
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
    results = run_group([prepared[i] for i in idx], devices=devices, callback=cb)
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
