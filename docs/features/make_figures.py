"""The README's figures for colour control and blended styles.

    python docs/features/make_figures.py --size 192 --iterations 80

Writes docs/features/colours.png (content | none | post | match | luminance)
and docs/features/blend.png (starry night | 0.7/0.3 blend | the scream), with
each run's summary beside it as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import nstjax

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"


def montage(panels, labels, path):
  h = max(p.shape[0] for p in panels)
  canvas = Image.new("RGB", (sum(p.shape[1] for p in panels) + 6 * (len(panels) - 1), h + 18), "white")
  x = 0
  for p, label in zip(panels, labels):
    canvas.paste(Image.fromarray((np.clip(p, 0, 1) * 255 + 0.5).astype(np.uint8)), (x, 18))
    ImageDraw.Draw(canvas).text((x + 4, 3), label, fill=(0, 0, 0))
    x += p.shape[1] + 6
  canvas.save(path)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", type=int, default=192)
  ap.add_argument("--iterations", type=int, default=80)
  ap.add_argument("--weights", default=None)
  args = ap.parse_args()
  net = nstjax.load_weights(args.weights)
  base = nstjax.StyleConfig(size=args.size, iterations=args.iterations)
  content, starry, scream = (EXAMPLES / n for n in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"))
  records, panels = {}, [nstjax.prepare_images(content, starry, base)[0]]
  for mode in ("none", "post", "match", "luminance"):
    r = nstjax.stylize_result(content, starry, dataclasses.replace(base, preserve_colors=mode), net=net)
    panels.append(r.image)
    records[mode] = r.summary
  montage(panels, ["content", "none", "post", "match", "luminance"], HERE / "colours.png")
  blend_panels = []
  for name, style, weights in (("starry", starry, None), ("blend", [starry, scream], (0.7, 0.3)),
                               ("scream", scream, None)):
    r = nstjax.stylize_result(content, style, dataclasses.replace(base, style_blend_weights=weights),
                              net=net)
    blend_panels.append(r.image)
    records[f"blend-{name}"] = r.summary
  montage(blend_panels, ["starry night", "0.7 starry + 0.3 scream", "the scream"], HERE / "blend.png")
  (HERE / "figures.json").write_text(json.dumps(
      {k: {"losses": v["losses"], "iterations": v["iterations"], "evaluations": v["evaluations"],
           "seconds": v["seconds"], "config": v["config"]} for k, v in records.items()}, indent=1) + "\n")


if __name__ == "__main__":
  main()
