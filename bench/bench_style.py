"""Style representations (issue 3) vs the full Gram, with real VGG19.

For each size and variant, in a fresh process: seconds per loss+gradient
evaluation of the style term alone (Σ over relu1_1..relu5_1, w.r.t. real VGG19
features of the content image, the VGG excluded), of the whole optimisation
step, peak RSS, and after the same number of L-BFGS steps the final content
loss and the *full-Gram* style loss of the result (the common yardstick).
Prints JSON; writes the images to --out.

    python bench/bench_style.py --sizes 256,512 --quality-size 256 --iterations 100 --out docs/style_variants
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"gram": {}, "pca-k4": {"style_loss": "pca", "pca_k": "0.25"},
            "pca-k2": {"style_loss": "pca", "pca_k": "0.5"},
            "pca-paper": {"style_loss": "pca-paper", "pca_k": "0.5"},
            "svd": {"style_loss": "svd"}, "weighted": {"style_loss": "weighted"}}


def _median_time(fn, *args, reps=7):
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def worker(args):
  import jax
  import jax.numpy as jnp
  import nstjax
  from nstjax import objective, pipeline, style
  from nstjax.image import save_image
  net = nstjax.load_weights(args.weights)
  cfg = nstjax.StyleConfig(size=args.size, iterations=args.iterations, **VARIANTS[args.variant])
  content, style_img = nstjax.prepare_images(ROOT / "examples" / "tubingen.jpg",
                                             ROOT / "examples" / "starry_night.jpg", cfg)
  p = pipeline.prepare(net, content, style_img, cfg, resize=False)
  prepared, targets = p.net, p.targets
  feats = jax.jit(nstjax.vgg.features, static_argnames=("layers", "pooling"))(
      prepared, jnp.asarray(content), layers=cfg.style_layers, pooling=cfg.pooling)
  rep = style.REPRESENTATIONS[cfg.style_loss]
  term = jax.jit(jax.value_and_grad(
      lambda f, t: sum(rep.loss(f[k], t[k]) for k in cfg.style_layers) / len(cfg.style_layers)))
  style_term_s = _median_time(term, feats, targets["style"])

  stamps = []
  r = nstjax.optimize(net, content, style_img, cfg, terms_every=0,
                      callback=lambda p: stamps.append((time.perf_counter(), p.evaluations)))
  (t0, e0), (t1, e1) = stamps[1], stamps[-1]
  # The yardstick: the full Gram style loss of the result, and its content loss.
  gram_cfg = nstjax.StyleConfig(size=None, pooling=cfg.pooling)
  gram = pipeline.prepare(net, content, style_img, gram_cfg, resize=False)
  yard = objective.make_terms_fn(gram_cfg)(jnp.asarray(r.image), net=gram.net, targets=gram.targets,
                                           weights=gram.weights)
  if args.out:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    save_image(r.image, Path(args.out) / f"{args.variant}_{args.size}.png")
  print(json.dumps({
      "variant": args.variant, "size": args.size, "params": VARIANTS[args.variant],
      "style_term_s": round(style_term_s, 5),
      "step_s_per_eval": round((t1 - t0) / max(e1 - e0, 1), 4),
      "iterations": r.summary["iterations"], "evaluations": r.summary["evaluations"],
      "final_content_loss": float(yard["content"]), "final_gram_style_loss": float(yard["style"]),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--variant", default="gram", help=argparse.SUPPRESS)
  ap.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
  ap.add_argument("--sizes", default="256,512")
  ap.add_argument("--quality-size", type=int, default=256, help="size at which all --iterations run")
  ap.add_argument("--iterations", type=int, default=100)
  ap.add_argument("--timing-iterations", type=int, default=12, help="steps at the other sizes")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--weights", default=None)
  ap.add_argument("--out", default=None, help="folder for the result images")
  args = ap.parse_args()
  if args.worker:
    return worker(args)
  rows = []
  for size in [int(s) for s in args.sizes.split(",")]:
    for variant in args.variants.split(","):
      its = args.iterations if size == args.quality_size else args.timing_iterations
      cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--size", str(size),
             "--iterations", str(its)]
      if args.weights:
        cmd += ["--weights", args.weights]
      if args.out and size == args.quality_size:
        cmd += ["--out", args.out]
      row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
      rows.append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)
  base = {r["size"]: r for r in rows if r["variant"] == "gram"}
  for r in rows:
    b = base.get(r["size"])
    if b:
      r["style_term_speedup"] = round(b["style_term_s"] / r["style_term_s"], 2)
      r["step_speedup"] = round(b["step_s_per_eval"] / r["step_s_per_eval"], 3)
      r["gram_style_loss_vs_gram_run"] = round(r["final_gram_style_loss"] / b["final_gram_style_loss"], 3)
  print(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
  main()
