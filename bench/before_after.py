"""Two versions of nstjax side by side: seconds per evaluation in one invocation.

Runs ``bench/bench.py``'s worker (the same measurement as the peer comparison:
real VGG19, square tubingen/starry_night, L-BFGS and Adam) alternately with the
installed nstjax and with another version importable from ``--other`` (a
folder holding an ``nstjax`` package laid out as installed), so both share the
machine's noise. Prints one JSON document with every run and the medians.

    python bench/before_after.py --other /tmp/oldpkg --sizes 256,512 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = {128: 30, 256: 20, 512: 10}


def one(version, other, weights, size, optimizer):
  env = dict(os.environ)
  if version == "other":
    env["PYTHONPATH"] = other
  cmd = [sys.executable, str(HERE / "bench.py"), "--worker", "--weights", weights, "--size", str(size),
         "--steps", str(STEPS.get(size, 10)), "--optimizer", optimizer, "--pooling", "max",
         "--alpha", "1", "--beta", "1e-3", "--lbfgs-memory", "100"]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd="/").stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--other", required=True, help="folder with the other version's nstjax package")
  ap.add_argument("--weights", default=None)
  ap.add_argument("--sizes", default="256,512")
  ap.add_argument("--optimizers", default="lbfgs,adam")
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()
  from nstjax.weights import registry
  weights = str(registry.resolve(args.weights))
  rows = []
  for rep in range(args.reps):
    for size in [int(s) for s in args.sizes.split(",")]:
      for opt in args.optimizers.split(","):
        for version in (("this", "other") if rep % 2 == 0 else ("other", "this")):
          r = one(version, args.other, weights, size, opt)
          r.update(version=version, rep=rep)
          rows.append(r)
          print(f"rep {rep} {version:>5} {size}px {opt}: {r['s_per_eval']:.4f} s/eval, "
                f"{r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
  summary = []
  for size in sorted({r["size"] for r in rows}):
    for opt in args.optimizers.split(","):
      med = lambda v, k: statistics.median(r[k] for r in rows
                                           if (r["version"], r["size"], r["optimizer"]) == (v, size, opt))
      summary.append({"size": size, "optimizer": opt,
                      "this_s_per_eval": med("this", "s_per_eval"),
                      "other_s_per_eval": med("other", "s_per_eval"),
                      "time_ratio": round(med("this", "s_per_eval") / med("other", "s_per_eval"), 3),
                      "this_peak_rss_mb": med("this", "peak_rss_mb"),
                      "other_peak_rss_mb": med("other", "peak_rss_mb")})
  print(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "weights": weights, "reps": args.reps, "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
  main()
