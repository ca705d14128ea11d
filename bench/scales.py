"""Coarse-to-fine against single-scale, on the real VGG19, in one invocation.

    python bench/scales.py --size 256 --single 90 --top 30 > bench/out/scales_256.json

For each shared example pair: a single-scale run of ``--single`` steps at
``--size`` and an ``auto`` coarse-to-fine run whose top scale takes ``--top``
steps (each scale below twice the next's). Reports the final loss at full
size, the optimisation seconds (compile excluded; compile reported apart),
the seconds the coarse-to-fine run took to reach the single-scale run's final
loss (if it did), and writes both images (``--images DIR``) for the figure.
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
  args = ap.parse_args()
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


if __name__ == "__main__":
  main()
