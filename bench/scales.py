"""Coarse-to-fine against single-scale, on the real VGG19, in one invocation.

    python bench/scales.py --size 256 --single 90 --top 30 > bench/out/scales_256.json
    python bench/scales.py --size 1024 --single 60 --top 20 --images DIR \
        --figure docs/features/scales_1024.jpg > bench/out/scales_1024.json

For each shared example pair: a single-scale run of ``--single`` steps at
``--size`` and an ``auto`` coarse-to-fine run whose top scale takes ``--top``
steps (each scale below twice the next's). Reports the final loss at full
size, the optimisation seconds (compile excluded; compile reported apart),
the seconds the coarse-to-fine run took to reach the single-scale run's final
loss (if it did) and the single-scale run's seconds to the coarse-to-fine run's
final loss, and writes both images (``--images DIR``) and a labelled figure of
them (``--figure PATH``: each image shrunk to ``--panel-width``, then a crop of
each at full size).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("tubingen", "starry_night"), ("tubingen", "the_scream"))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--single", type=int, default=90)
  ap.add_argument("--top", type=int, default=30)
  ap.add_argument("--pairs", type=int, default=1)
  ap.add_argument("--line-search", default="auto")
  ap.add_argument("--images", type=Path, default=None)
  ap.add_argument("--figure", type=Path, default=None)
  ap.add_argument("--panel-width", type=int, default=640)
  args = ap.parse_args()
  if args.figure and not args.images:
    ap.error("--figure needs --images")
  import jax
  import nstjax
  from nstjax import image as nimage
  from nstjax import pipeline
  net = nstjax.load_weights()
  rows = []
  for content, style in PAIRS[:args.pairs]:
    c, s = ROOT / "examples" / f"{content}.jpg", ROOT / "examples" / f"{style}.jpg"
    base = nstjax.StyleConfig(size=args.size, line_search=args.line_search)
    single_cfg = nstjax.StyleConfig(**{**base.__dict__, "iterations": args.single})
    multi_cfg = nstjax.StyleConfig(**{**base.__dict__, "iterations": args.top, "scales": "auto"})
    out = {}
    for name, cfg in (("single", single_cfg), ("multi", multi_cfg)):
      t0 = time.perf_counter()
      r = pipeline.run_scales(net, c, s, cfg)
      wall = time.perf_counter() - t0
      out[name] = (r, wall)
      if args.images:
        args.images.mkdir(parents=True, exist_ok=True)
        nimage.save_image(r.image, args.images / f"{content}_{style}_{args.size}_{name}.png")
    single, multi = out["single"][0], out["multi"][0]
    target = single.summary["losses"]["total"]
    # Seconds (optimisation only) until the multi-scale run's full-size loss reaches target.
    last_scale = max(t.get("scale", 0) for t in multi.trace)
    before = sum(x["seconds"] for x in multi.summary.get("scales", [])[:-1])
    reached = next((before + t["seconds"] for t in multi.trace
                    if t.get("scale", 0) == last_scale and t["losses"]["total"] <= target), None)
    final = multi.summary["losses"]["total"]
    # And the other way round: seconds the single-scale run took to reach the multi's final loss.
    single_reached = next((t["seconds"] for t in single.trace if t["losses"]["total"] <= final), None)
    rows.append({
        "content": content, "style": style, "size": args.size,
        "single": {"steps": args.single, "loss": target, "seconds": single.summary["seconds"],
                   "compile_seconds": single.summary["compile_seconds"],
                   "wall_seconds": round(out["single"][1], 2),
                   "seconds_to_reach_multi_loss": single_reached,
                   "trace": [[t["iteration"], round(t["seconds"], 2), round(t["losses"]["total"], 1)]
                             for t in single.trace[::5]]},
        "multi": {"scales": [{k: x[k] for k in ("size", "iterations", "evaluations", "seconds")}
                             for x in multi.summary["scales"]],
                  "loss": multi.summary["losses"]["total"], "seconds": multi.summary["seconds"],
                  "compile_seconds": multi.summary["compile_seconds"],
                  "wall_seconds": round(out["multi"][1], 2),
                  "seconds_to_reach_single_loss": reached,
                  "trace": [[t["iteration"], t.get("scale", 0), round(t["seconds"], 2),
                             round(t["losses"]["total"], 1)] for t in multi.trace[::5]]},
        "loss_ratio_multi_over_single": multi.summary["losses"]["total"] / target,
        "time_ratio_multi_over_single": multi.summary["seconds"] / single.summary["seconds"],
        "wall_ratio_multi_over_single": out["multi"][1] / out["single"][1],
    })
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print(json.dumps({"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                    "line_search": args.line_search, "rows": rows}, indent=1))
  if args.figure:
    figure(rows, args.images, args.figure, args.panel_width)


def figure(rows, images: Path, path: Path, panel_width: int = 640, crop: int = 256):
  """Single-scale and coarse-to-fine images side by side, labelled with steps, loss and
  seconds; under them a ``crop`` px square of each at full size (from the sky, top middle)."""
  from PIL import Image, ImageDraw
  tiles = []
  for row in rows:
    for name in ("single", "multi"):
      im = Image.open(images / f"{row['content']}_{row['style']}_{row['size']}_{name}.png").convert("RGB")
      r = row[name]
      steps = (f"{r['steps']} steps" if name == "single" else
               " + ".join(f"{x['iterations']}@{x['size']}" for x in r["scales"]))
      label = f"{steps}: loss {r['loss']:,.0f}, {r['seconds']:.0f} s"
      small = im.resize((panel_width, round(im.height * panel_width / im.width)), Image.LANCZOS)
      x0 = (im.width - crop) // 2
      tiles.append((label, small, im.crop((x0, 0, x0 + crop, crop))))
  pad, top = 6, 16
  width = sum(t[1].width for t in tiles) + pad * (len(tiles) - 1)
  height = top + max(t[1].height for t in tiles) + pad + crop
  canvas = Image.new("RGB", (width, height), "white")
  draw, x = ImageDraw.Draw(canvas), 0
  for label, small, detail in tiles:
    draw.text((x + 2, 2), label, fill=(0, 0, 0))
    canvas.paste(small, (x, top))
    canvas.paste(detail, (x, top + small.height + pad))
    x += small.width + pad
  jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
  canvas.save(path, **({"quality": 92} if jpeg else {}))


if __name__ == "__main__":
  main()
