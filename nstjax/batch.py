"""Batch stylisation: one compiled program per group of same-shape jobs, sharded
over the local devices.

Jobs whose images have the same shapes and whose configurations differ only in
traced values (α, β, TV, γ, layer weights, init, seed) form a group. A group
runs as one program: the jobs are split over the local devices with
``jax.shard_map`` (a 1-D ``data`` mesh; the job count is padded to a multiple of
the device count and the padding discarded), and on each device ``lax.map``
steps the jobs one after another. Each job keeps its own optimiser state, its
own L-BFGS line search, its own targets and weights.

Why ``lax.map`` and not ``vmap``: under ``vmap`` optax's zoom line search turns
every ``lax.cond`` into a ``select`` that runs both branches, measured 5–10×
slower than solving the jobs one after another (anchors-jax §1.3c–1.4); a
sequential map per device keeps each job's control flow and still shares one
compilation, one weights load and the targets' programs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from nstjax import optim, vgg
from nstjax.config import StyleConfig
from nstjax.errors import NSTError

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


def group_key(config: StyleConfig, content: np.ndarray, style: np.ndarray, index: int = 0):
  """Jobs with equal keys run as one program.

  The iteration count is part of the key (a group runs one loop). ``pca`` with
  an explained-variance k picks k from each style image, so such jobs' targets
  may differ in shape: each runs alone (``index``).
  """
  alone = (config.style_loss in ("pca", "pca-paper") and str(config.pca_k).startswith("var="))
  return (optim._static_key(config), config.iterations, content.shape, style.shape,
          index if alone else None)


@functools.lru_cache(maxsize=8)
def _batch_program(config_key: StyleConfig, devices: tuple):
  optimizer, step, terms = optim._programs(config_key)
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))

  def per_device(net, images, opt_states, evaluations, targets, weights):
    def one(args):
      return step.fn(net, *args)
    return jax.lax.map(one, (images, opt_states, evaluations, targets, weights))

  # check_vma=False: value_and_grad_from_state's lax.cond mixes replicated and
  # per-device values (anchors-jax §1.3e).
  sharded = jax.shard_map(per_device, mesh=mesh,
                          in_specs=(P(), P("data"), P("data"), P("data"), P("data"), P("data")),
                          out_specs=(P("data"), P("data")), check_vma=False)
  return optimizer, jax.jit(sharded, donate_argnums=(2,)), jax.jit(jax.vmap(
      lambda net, image, targets, weights: terms(image, net=net, targets=targets, weights=weights),
      in_axes=(None, 0, 0, 0))), mesh


def run_group(net: vgg.VGGParams, contents: Sequence[np.ndarray], styles: Sequence[np.ndarray],
              configs: Sequence[StyleConfig], *, devices=None,
              callback: Callable[[int, np.ndarray, float], None] | None = None):
  """Optimises one group of same-shape jobs together.

  Args:
    net: the (unprepared) network.
    contents, styles: per-job images at their working sizes (same shapes across jobs).
    configs: per-job configurations with equal :func:`group_key`.
    devices: devices to shard over (default: ``jax.local_devices()``).
    callback: ``callback(iteration, losses (jobs,), elapsed)`` after every step.

  Returns:
    A list of per-job dicts: ``image`` (H, W, 3) in [0, 1], ``status``
    (``"done"`` or ``"non-finite"``), ``summary`` (the core summary's fields).
  """
  n = len(configs)
  base = configs[0]
  devices = tuple(devices if devices is not None else jax.local_devices())
  optimizer, program, terms_fn, mesh = _batch_program(optim._static_key(base), devices)
  layers = optim.all_layers(base)
  prepared = vgg.prepare(net, layers)
  targets, weights, states = [], [], []
  for c, s, cfg in zip(contents, styles, configs):
    c, s = jnp.asarray(c, jnp.float32), jnp.asarray(s, jnp.float32)
    targets.append(optim.make_targets(prepared, c, s, cfg))
    weights.append(optim.make_weights(cfg, net.preprocessing, net.normalized))
    states.append(optim.init_state(optimizer, optim.initial_image(cfg, c, s)))
  # Pad to a multiple of the device count with copies of the last job (discarded).
  pad = (-n) % len(devices)
  targets, weights, states = (xs + [xs[-1]] * pad for xs in (targets, weights, states))
  shard = NamedSharding(mesh, P("data"))
  put = lambda tree: jax.device_put(_stack(tree), shard)
  targets, weights, state = put(targets), put(weights), put(states)
  state = jax.tree.map(jnp.copy, state)   # the donated opt_state must not alias the images
  initial = terms_fn(prepared, state.image, targets, weights)

  t0 = time.perf_counter()
  compiled = program.lower(prepared, state.image, state.opt_state, state.evaluations,
                           targets, weights).compile()
  compile_seconds = time.perf_counter() - t0

  iterations = base.iterations
  # Images are not donated, so the previous step's device array is the last image
  # whose loss was checked; it reaches the host only for a job that fails.
  previous = state.image
  good = {}                               # failed job -> its last image with a finite loss
  failed_at = np.full((n + pad,), -1)
  t_loop = time.perf_counter()
  for it in range(1, iterations + 1):
    new_state, metrics = compiled(prepared, state.image, state.opt_state, state.evaluations,
                                  targets, weights)
    losses = np.asarray(metrics["loss"])
    newly = ~np.isfinite(losses) & (failed_at < 0)
    if newly.any():
      host = np.asarray(previous)
      good.update({int(i): host[i] for i in np.flatnonzero(newly)})
      failed_at[newly] = it - 1
    previous, state = state.image, new_state
    if callback is not None:
      callback(it, losses[:n], time.perf_counter() - t_loop)
    if not np.any(failed_at[:n] < 0):
      break
  seconds = time.perf_counter() - t_loop
  sharding = {"spec": str(state.image.sharding.spec),
              "devices_used": len(state.image.sharding.device_set)}
  final = np.asarray(state.image)
  last_checked = np.asarray(previous)
  final_terms = terms_fn(prepared, state.image, targets, weights)
  evaluations = np.asarray(state.evaluations)
  results = []
  for i in range(n):
    row = lambda tree: jax.tree.map(lambda x: x[i], tree)
    w = row(weights)
    init_losses = optim._floats(row(initial), w)
    final_losses = optim._floats(row(final_terms), w)
    status = "done" if failed_at[i] < 0 and np.isfinite(final_losses["total"]) else "non-finite"
    image = final[i] if status == "done" else good.get(i, last_checked[i])
    results.append({
        "image": np.clip(image, 0.0, 1.0), "status": status,
        "summary": {
            "status": status, "iterations": iterations if failed_at[i] < 0 else int(failed_at[i]),
            "evaluations": int(evaluations[i]), "seconds": round(seconds, 4),
            "seconds_note": "wall time of the whole group's loop (jobs run together)",
            "compile_seconds": round(compile_seconds, 4), "initial_losses": init_losses,
            "losses": final_losses,
            "loss_weights": configs[i].loss_weights(net.preprocessing, net.normalized),
            "height": int(final.shape[1]), "width": int(final.shape[2]),
            "device": f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})",
            "batch": {"group_size": n, "padded_to": n + pad, "devices": len(devices), **sharding},
            "config": dataclasses.asdict(configs[i])}})
  return results


def stylize_batch(net: vgg.VGGParams, contents, styles, configs, *, devices=None,
                  callback: Callable[[BatchProgress], None] | None = None):
  """Stylises many (content, style, config) jobs; groups of same-shape jobs run together.

  Args:
    net: weights (:func:`nstjax.load_weights`).
    contents, styles: per-job file paths or (H, W, 3) arrays in [0, 1].
    configs: one :class:`StyleConfig` per job, or one for all.
    devices: devices to shard each group over (default: all local devices).
    callback: receives a :class:`BatchProgress` after every step.

  Returns:
    Per-job results in input order: dicts with ``image``, ``status``, ``summary``.
  """
  import nstjax
  if isinstance(configs, StyleConfig):
    configs = [configs] * len(contents)
  if not (len(contents) == len(styles) == len(configs)):
    raise NSTError(f"{len(contents)} contents, {len(styles)} styles and {len(configs)} configs")
  prepared = []
  for c, s, cfg in zip(contents, styles, configs):
    cfg.validate(net.arch)
    ci, si = nstjax.prepare_images(c, s, cfg)
    optim.check_image_sizes(cfg, ci, si)
    prepared.append((ci, si, cfg))
  groups: dict = {}
  for i, (ci, si, cfg) in enumerate(prepared):
    groups.setdefault(group_key(cfg, ci, si, i), []).append(i)
  out = [None] * len(prepared)
  for g, idx in enumerate(groups.values()):
    def cb(it, losses, elapsed, g=g, idx=idx):
      if callback is not None:
        callback(BatchProgress(group=g, groups=len(groups), iteration=it,
                               iterations=prepared[idx[0]][2].iterations, jobs=len(idx),
                               losses=losses, elapsed=elapsed))
    results = run_group(net, [prepared[i][0] for i in idx], [prepared[i][1] for i in idx],
                        [prepared[i][2] for i in idx], devices=devices, callback=cb)
    for i, r in zip(idx, results):
      out[i] = r
  return out
