"""A run's loss trace as a picture: every weighted term and the total over the steps, log scale.

Drawn with Pillow (already a dependency), so ``--plot`` needs no plotting library.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"total": (20, 20, 20), "content": (31, 119, 180), "style": (214, 39, 40),
           "tv": (44, 160, 44), "attention": (148, 103, 189)}
OTHER = [(255, 127, 14), (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def series(trace: list[dict], loss_weights: dict[str, float]) -> dict[str, np.ndarray]:
  """``{name: values per step}``: each term times its weight (what the total sums), and the
  total. Terms a step did not report are NaN."""
  names = list(loss_weights) + ["total"]
  out = {}
  for name in names:
    w = 1.0 if name == "total" else loss_weights[name]
    out[name] = np.asarray([w * rec["losses"][name] if name in rec["losses"] else np.nan
                            for rec in trace], np.float64)
  return {k: v for k, v in out.items() if np.isfinite(v).any()}


def plot_trace(trace: list[dict], loss_weights: dict[str, float], width: int = 900,
               height: int = 520) -> np.ndarray:
  """The trace as an (height, width, 3) float image in [0, 1]."""
  data = series(trace, loss_weights)
  steps = np.asarray([rec["iteration"] for rec in trace], np.float64)
  img = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  left, right, top, bottom = 70, width - 150, 20, height - 45
  positive = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in data.values()] or [np.ones(1)])
  lo = math.floor(math.log10(positive.min())) if positive.size else 0
  hi = math.ceil(math.log10(positive.max())) if positive.size else 1
  hi = max(hi, lo + 1)
  lo = max(lo, hi - 7)   # a term that starts at ~0 (content, from the content image) would
                         # squash the rest: seven decades are shown, lower values at the floor
  x_max = max(steps.max() if steps.size else 1.0, 1.0)
  sx = lambda s: left + (right - left) * (s - 1) / max(x_max - 1, 1)
  sy = lambda v: bottom - (bottom - top) * (math.log10(v) - lo) / (hi - lo)
  draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
  for e in range(lo, hi + 1):
    y = sy(10.0 ** e)
    draw.line([left, y, right, y], fill=(225, 225, 225))
    draw.text((8, y - 6), f"1e{e}", fill=(0, 0, 0))
  for i in range(5):
    s = 1 + (x_max - 1) * i / 4
    draw.text((sx(s) - 10, bottom + 8), f"{round(s)}", fill=(0, 0, 0))
  draw.text(((left + right) // 2 - 20, height - 20), "step", fill=(0, 0, 0))
  others = iter(OTHER)
  for row, (name, values) in enumerate(data.items()):
    colour = COLOURS.get(name) or next(others, (0, 0, 0))
    points = [(sx(s), sy(max(v, 10.0 ** lo))) for s, v in zip(steps, values)
              if np.isfinite(v) and v > 0]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    elif points:
      x, y = points[0]
      draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    label = name if name == "total" else f"{name} x {loss_weights[name]:.3g}"
    draw.line([right + 10, top + 12 + 18 * row, right + 30, top + 12 + 18 * row], fill=colour,
              width=3)
    draw.text((right + 35, top + 6 + 18 * row), label, fill=(0, 0, 0))
  return np.asarray(img, np.float32) / 255.0
