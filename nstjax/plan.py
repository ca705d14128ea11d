"""A memory plan before running: what each scale's compiled step will hold at its peak.

:func:`make_plan` compiles the step the run would compile, at each scale's
shapes, without computing anything at those sizes (the targets' shapes come
from :func:`jax.eval_shape`), and reads XLA's own memory analysis of the
compiled program. The estimate of the peak is

    arguments + outputs - aliased (the donated optimiser state) + temporaries

where the arguments are the network's weights, the targets, the image and the
optimiser state (the L-BFGS history), and the temporaries are XLA's working
set (the activations kept for the backward pass, the attention term's blocks).
``nstjax stylize --dry-run`` prints it and compares it with the device's
capacity; ``--max-memory`` acts on it (:func:`fit`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import memory, objective, optim, pipeline, vgg
from nstjax import image as nimage
from nstjax.config import StyleConfig
from nstjax.errors import NSTError


def tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def scale_plan(net: vgg.VGGParams, content_hw: tuple[int, int], style_hws, config: StyleConfig,
               network: vgg.VGGParams | None = None) -> dict:
  """One scale's plan at these image shapes (no image of that size is ever computed)."""
  static = config.static_key()
  network = network or objective.network(net, config)
  h, w = content_hw
  sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  content = sds((h, w, 3))
  styles = [sds((sh, sw, 3)) for sh, sw in style_hws]
  weights = tuple(1.0 / len(styles) for _ in styles)   # blend weights change no shape
  objective.check_image_sizes(config, content, styles)
  targets = jax.eval_shape(
      lambda c, s: objective.make_targets(network, c, s, config, weights), content, styles)
  loss_weights = objective.make_weights(config, net.preprocessing, net.normalized)
  state = jax.eval_shape(lambda x: optim.init_state(static, x, terms=loss_weights), content)
  step = jax.jit(pipeline.make_steps(static, 1), donate_argnums=(2,))
  compiled = step.lower(network, state.image, state.opt_state, state.evaluations, targets,
                        loss_weights).compile()
  analysis = compiled.memory_analysis()
  parts = {
      "weights_bytes": tree_bytes(network),
      "targets_bytes": tree_bytes(targets),
      "image_bytes": tree_bytes(state.image),
      "optimizer_state_bytes": tree_bytes(state.opt_state),
  }
  if analysis is None:   # a backend without memory analysis: the arguments only
    xla = {"temp_bytes": None, "argument_bytes": None, "output_bytes": None, "alias_bytes": None}
    peak = sum(parts.values())
  else:
    xla = {"temp_bytes": int(analysis.temp_size_in_bytes),
           "argument_bytes": int(analysis.argument_size_in_bytes),
           "output_bytes": int(analysis.output_size_in_bytes),
           "alias_bytes": int(analysis.alias_size_in_bytes)}
    peak = (xla["argument_bytes"] + xla["output_bytes"] - xla["alias_bytes"] + xla["temp_bytes"])
  return {"width": w, "height": h, "estimated_peak_bytes": int(peak), **parts,
          "tile": pipeline.tile_record(config, (h, w), network.arch),
          "lbfgs_history_bytes": (memory.lbfgs_history_bytes(h, w, config.lbfgs_memory)
                                  if config.optimizer == "lbfgs" else 0),
          **xla}


def make_plan(net: vgg.VGGParams, content, style, config: StyleConfig, device=None) -> dict:
  """The plan of a whole run: one entry per scale, and the device's capacity."""
  content = nimage.as_rgb(content, "content")
  styles = [nimage.as_rgb(s, "style") for s in pipeline.style_list(style)]
  schedule = pipeline.scale_schedule(config, max(content.shape[:2]))
  network = objective.network(net, config, device.platform if device is not None else None)
  scales = config.style_scale
  entries = []
  for size, steps in schedule:
    cfg = dataclasses.replace(config, size=size, iterations=steps, scales=None,
                              scale_iterations=None)
    # The shapes pipeline.prepare_images resizes to (nimage.long_side_shape).
    h, w = content.shape[:2] if size is None else nimage.long_side_shape(*content.shape[:2], size)
    style_hws = []
    for i, s in enumerate(styles):
      scale = scales[i] if len(scales) > 1 else scales[0]
      style_hws.append(nimage.long_side_shape(*s.shape[:2], max(1, round(max(h, w) * scale))))
    entries.append({"size": size, "iterations": steps,
                    **scale_plan(net, (h, w), style_hws, cfg, network)})
  capacity = memory.device_capacity(device)
  peak = max(e["estimated_peak_bytes"] for e in entries)
  return {"plan": entries, "estimated_peak_bytes": peak, "device_capacity_bytes": capacity,
          "fits": None if capacity is None else peak <= capacity}


def parse_max_memory(value: str | None, device=None) -> int | None:
  """``--max-memory``: ``"auto"`` (the device's capacity), ``"12GB"``, ``"800MB"`` -> bytes."""
  if value is None:
    return None
  if value.strip().lower() == "auto":
    capacity = memory.device_capacity(device)
    if capacity is None:
      raise NSTError("--max-memory auto: this device does not report its memory; give a size")
    return capacity
  from nstjax.attention import parse_bytes
  return parse_bytes(value)


MIN_PAIRS_BEFORE_TILING = 20   # below this the history costs more quality than tiling costs time
MIN_PAIRS = 5


def _shrink_history(net, content, style, config, budget, plan, floor, device):
  """The largest L-BFGS history (at least ``floor`` pairs) whose plan fits, from the plan's
  arithmetic (2·m image-sized vectors), planned again; ``None`` if none fits."""
  worst = max(plan["plan"], key=lambda e: e["estimated_peak_bytes"])
  per_pair = memory.lbfgs_history_bytes(worst["height"], worst["width"], 1)
  rest = worst["estimated_peak_bytes"] - worst["lbfgs_history_bytes"]
  pairs = min(config.lbfgs_memory - 1, int((budget - rest) // max(per_pair, 1)))
  if pairs < floor:
    return None
  config = dataclasses.replace(config, lbfgs_memory=pairs)
  return config, make_plan(net, content, style, config, device)


def tile_candidates(long_side: int) -> list[int]:
  """Tile sizes tried by :func:`fit`, largest first: halves of the image down to 128 px."""
  out, t = [], 1 << max(long_side - 1, 1).bit_length()
  while t > 128:
    t //= 2
    if t < long_side:
      out.append(t)
  return out


def fit(net: vgg.VGGParams, content, style, config: StyleConfig, budget: int,
        device=None) -> tuple[StyleConfig, dict, list[str]]:
  """The config whose plan fits ``budget`` bytes, the plan, and the measures taken.

  The measures, cheapest first, each only if the plan still exceeds the budget:

  1. a smaller L-BFGS history, down to 20 pairs (computed from the plan: the
     history is 2·m image-sized vectors, in both the arguments and the outputs);
  2. exact tiling (:mod:`nstjax.tiling`; same loss and gradient, more compute):
     the largest tile that fits, halving from the image's size down to 128 px;
  3. a history down to 5 pairs, with that tiling.

  Each is checked by planning again. When nothing fits, NSTError names the figures.
  """
  plan = make_plan(net, content, style, config, device)
  measures = []
  lbfgs = config.optimizer == "lbfgs"
  if plan["estimated_peak_bytes"] > budget and lbfgs:
    shrunk = _shrink_history(net, content, style, config, budget, plan,
                             MIN_PAIRS_BEFORE_TILING, device)
    if shrunk is not None:
      measures.append(f"L-BFGS history {config.lbfgs_memory} -> {shrunk[0].lbfgs_memory} pairs")
      config, plan = shrunk
  if plan["estimated_peak_bytes"] > budget and config.tile is None:
    long_side = max(max(e["height"], e["width"]) for e in plan["plan"])
    for tile in tile_candidates(long_side):
      tiled = dataclasses.replace(config, tile=tile)
      tiled_plan = make_plan(net, content, style, tiled, device)
      config, plan = tiled, tiled_plan
      if tiled_plan["estimated_peak_bytes"] <= budget:
        break
    if config.tile is not None:
      measures.append(f"tiling: tiles of {config.tile} px (exact; more compute)")
  if plan["estimated_peak_bytes"] > budget and lbfgs and config.lbfgs_memory > MIN_PAIRS:
    shrunk = _shrink_history(net, content, style, config, budget, plan, MIN_PAIRS, device)
    if shrunk is not None:
      measures.append(f"L-BFGS history {config.lbfgs_memory} -> {shrunk[0].lbfgs_memory} pairs")
      config, plan = shrunk
  if plan["estimated_peak_bytes"] > budget:
    worst = max(plan["plan"], key=lambda e: e["estimated_peak_bytes"])
    raise NSTError(
        f"the run needs about {memory.human(plan['estimated_peak_bytes'])} at "
        f"{worst['width']}x{worst['height']} (XLA working set "
        f"{memory.human(worst['temp_bytes'] or 0)}, L-BFGS history "
        f"{memory.human(worst['lbfgs_history_bytes'])}), more than the budget of "
        f"{memory.human(budget)} even tiled with a history of {MIN_PAIRS} pairs: "
        f"use a smaller --size")
  return config, plan, measures
