"""nstjax vs the PyTorch peer, side by side: seconds per loss+gradient evaluation
and peak RSS at several sizes, for L-BFGS and Adam, in one invocation.

Each (rep, size, optimizer) cell runs nstjax and the peer as fresh processes,
one after the other (never concurrently: 2-thread timings do not survive a
neighbour), on the same converted weights file, the same square images
(PIL bicubic resize, as the peer does), the same layers (content relu4_2,
style relu1_1..relu5_1), pooling and loss weights. Prints a table and a JSON
document with every figure.

    python bench/bench.py --peer-python /path/to/venv-peer/bin/python \
        --peer-dir /path/to/peer --sizes 128,256,512 --reps 3

The peer is a PyTorch implementation of the same algorithm (``gatys.py`` in
``--peer-dir``: loss modules in a copy of VGG, torch.optim.LBFGS with a
closure), reading the same converted weights file. An optimizer named with a
``-direct`` suffix (``lbfgs-direct``) runs nstjax with ``conv_algorithm="direct"``
(XLA's convolutions; the default on a CPU is Winograd in blocks 3-5); the peer
runs the optimizer without the suffix.

``--weights`` defaults to the cached default VGG19 (real weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = {128: 30, 256: 20, 384: 12, 512: 10, 1024: 4}
CONTENT, STYLE = ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"


def square(path, size):
  import numpy as np
  from PIL import Image
  img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
  return np.asarray(img, np.float32) / 255.0


def worker(args):
  """One nstjax measurement in this process; prints one JSON line."""
  import jax
  if args.compile_cache:   # as the CLI does: a warm cache skips XLA compilation entirely
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  import nstjax
  net = nstjax.load_weights(args.weights)
  content, style = square(CONTENT, args.size), square(STYLE, args.size)
  # "lbfgs-zoom": optax's zoom line search; "lbfgs": the default (nstjax's backtracking).
  # A "-direct" suffix: XLA's convolutions throughout (--conv-algorithm direct).
  name, direct = args.optimizer.removesuffix("-direct"), args.optimizer.endswith("-direct")
  optimizer, line_search = (("lbfgs", "zoom") if name == "lbfgs-zoom" else (name, "auto"))
  cfg = nstjax.StyleConfig(size=None, iterations=args.steps + args.warmup, optimizer=optimizer,
                           line_search=line_search,
                           pooling=args.pooling, content_weight=args.alpha, style_weight=args.beta,
                           tv_weight=0.0, lbfgs_memory=args.lbfgs_memory,
                           conv_algorithm="direct" if direct else "auto")
  stamps = []
  r = nstjax.optimize(net, content, style, cfg, terms_every=0,
                      callback=lambda p: stamps.append((time.perf_counter(), p.evaluations)))
  # Drop the warm-up steps, as the peer does (first-call allocations).
  (t0, e0), (t1, e1) = stamps[args.warmup - 1], stamps[-1]
  evals = e1 - e0
  print(json.dumps({
      "impl": "nstjax", "size": args.size, "optimizer": args.optimizer, "evals": evals,
      "s_per_eval": round((t1 - t0) / evals, 4),
      "compile_s": r.summary["compile_seconds"],
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "final_total_loss": r.summary["losses"]["total"],
      "conv_algorithm": r.summary["conv_algorithm"],
      "device": r.summary["device"], "jax": jax.__version__}))


def steps(args, size):
  """Timed steps: ``--steps``, else a count per size (more than 100 fills both L-BFGS histories)."""
  return args.timed_steps or STEPS.get(size, 10)


def run_peer(args, size, optimizer):
  cmd = [args.peer_python, str(Path(args.peer_dir) / "gatys.py"), "--weights", args.weights_path,
         "--size", str(size), "--steps", str(steps(args, size)), "--threads", str(args.threads),
         "--content", str(CONTENT), "--style", str(STYLE),
         "--optimizer", "lbfgs" if optimizer.startswith("lbfgs") else optimizer.removesuffix("-direct"),
         "--pooling", args.pooling, "--alpha", str(args.alpha), "--beta", str(args.beta)]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  r = json.loads(out.strip().splitlines()[-1])
  return {"impl": "peer", "size": size, "optimizer": optimizer, "evals": r["evals"],
          "s_per_eval": r["s_per_eval"], "peak_rss_mb": r["peak_rss_mb"], "torch": r["torch"]}


def run_ours(args, size, optimizer):
  cmd = [sys.executable, __file__, "--worker", "--weights", args.weights_path, "--size", str(size),
         "--steps", str(steps(args, size)), "--optimizer", optimizer, "--pooling", args.pooling,
         "--alpha", str(args.alpha), "--beta", str(args.beta),
         "--lbfgs-memory", str(args.lbfgs_memory)]
  if args.compile_cache:
    cmd += ["--compile-cache", args.compile_cache]
    subprocess.run(cmd, check=True, capture_output=True)   # fill the cache; measure the next run
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
  ap.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
  ap.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
  ap.add_argument("--optimizer", default="lbfgs", help=argparse.SUPPRESS)
  ap.add_argument("--sizes", default="128,256,512")
  ap.add_argument("--timed-steps", type=int, default=None,
                  help="timed steps per run, both sides (default: 30, 20, 10 at 128, 256, 512 px)")
  ap.add_argument("--optimizers", default="lbfgs,adam")
  ap.add_argument("--reps", type=int, default=1)
  ap.add_argument("--weights", default=None, help="source name or converted file (default: cached VGG19)")
  ap.add_argument("--pooling", default="max", help="the peer's default is max")
  ap.add_argument("--alpha", type=float, default=1.0)
  ap.add_argument("--beta", type=float, default=1e-3)
  ap.add_argument("--lbfgs-memory", type=int, default=100, help="the peer (torch.optim.LBFGS) keeps 100")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--compile-cache", default=None,
                  help="XLA persistent cache dir: measure nstjax's second run (as CLI users see it)")
  ap.add_argument("--peer-python", default=None, help="python of a venv with torch (skip the peer if absent)")
  ap.add_argument("--peer-dir", default=str(ROOT.parent / "shared" / "peer"))
  args = ap.parse_args()
  if args.worker:
    return worker(args)

  from nstjax.weights import registry
  args.weights_path = str(registry.resolve(args.weights))
  rows = []
  for rep in range(args.reps):
    for size in [int(s) for s in args.sizes.split(",")]:
      for opt in args.optimizers.split(","):
        for impl in (("nstjax", "peer") if rep % 2 == 0 else ("peer", "nstjax")):
          if impl == "peer" and not args.peer_python:
            continue
          r = run_ours(args, size, opt) if impl == "nstjax" else run_peer(args, size, opt)
          r["rep"] = rep
          rows.append(r)
          print(f"rep {rep} {impl:>6} {size:>4}px {opt:<5}: {r['s_per_eval']:.4f} s/eval, "
                f"{r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)

  summary = []
  print("\n| size | optimizer | nstjax s/eval | peer s/eval | ratio | nstjax RSS MB | peer RSS MB | nstjax compile s |",
        file=sys.stderr)
  print("|---|---|---|---|---|---|---|---|", file=sys.stderr)
  for size in sorted({r["size"] for r in rows}):
    for opt in args.optimizers.split(","):
      med = lambda impl, key: statistics.median(
          r[key] for r in rows if (r["impl"], r["size"], r["optimizer"]) == (impl, size, opt))
      ours_t, ours_m, comp = med("nstjax", "s_per_eval"), med("nstjax", "peak_rss_mb"), med("nstjax", "compile_s")
      cell = {"size": size, "optimizer": opt, "nstjax_s_per_eval": ours_t, "nstjax_peak_rss_mb": ours_m,
              "nstjax_compile_s": comp}
      if args.peer_python:
        peer_t, peer_m = med("peer", "s_per_eval"), med("peer", "peak_rss_mb")
        cell.update(peer_s_per_eval=peer_t, peer_peak_rss_mb=peer_m,
                    time_ratio=round(ours_t / peer_t, 3), rss_ratio=round(ours_m / peer_m, 3))
      summary.append(cell)
      print(f"| {size} | {opt} | {ours_t:.4f} | {cell.get('peer_s_per_eval', float('nan')):.4f} | "
            f"{cell.get('time_ratio', float('nan')):.2f} | {ours_m:.0f} | "
            f"{cell.get('peer_peak_rss_mb', float('nan')):.0f} | {comp:.2f} |", file=sys.stderr)
  print(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "processor": platform.processor()},
                    "weights": args.weights_path, "pooling": args.pooling, "reps": args.reps,
                    "timed_steps": {s: steps(args, int(s)) for s in args.sizes.split(",")},
                    "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
  main()
