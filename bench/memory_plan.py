"""The memory plan's estimate against measured peaks, and projections for large images.

    python bench/memory_plan.py --measure 256,512,768 --project 2048,4096,8192 \
        > bench/out/memory_plan.json

``--measure``: each size in a fresh process: the plan's estimated peak, then a
real run of 2 steps (real VGG19, tubingen/starry_night, defaults) and the
process's peak RSS. On a CPU host the RSS also holds the Python/JAX runtime
and the host copy of the weights, which do not depend on the size, so the
estimate is checked against the RSS *growth* between sizes (the estimate's
growth over the same sizes). ``--project``: the plan at larger sizes (compiled,
never run), against 24, 80 and 141 GB devices.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENT, STYLE = ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"
DEVICES_GB = (24, 80, 141)


def worker(size: int, run: bool, scales: str | None):
  import nstjax
  from nstjax import plan as nplan
  net = nstjax.load_weights()
  cfg = nstjax.StyleConfig(size=size, iterations=2, scales=scales)
  p = nplan.make_plan(net, CONTENT, STYLE, cfg)
  out = {"size": size, "scales": scales, "estimated_peak_bytes": p["estimated_peak_bytes"],
         "plan": p["plan"]}
  if run:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nstjax.stylize_result(CONTENT, STYLE, cfg, net=net)
    out["rss_before_run_bytes"] = before
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps(out))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--measure", default="256,512,768")
  ap.add_argument("--project", default="2048,4096,8192")
  ap.add_argument("--worker", type=int, default=None)
  ap.add_argument("--run", action="store_true")
  ap.add_argument("--scales", default=None)
  args = ap.parse_args()
  if args.worker is not None:
    return worker(args.worker, args.run, args.scales)

  def child(size, run, scales=None):
    cmd = [sys.executable, __file__, "--worker", str(size)] + (["--run"] if run else []) + (
        ["--scales", scales] if scales else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])

  measured = [child(int(s), True) for s in args.measure.split(",") if s]
  checks = []
  for a, b in zip(measured, measured[1:]):
    est = b["estimated_peak_bytes"] - a["estimated_peak_bytes"]
    rss = b["peak_rss_bytes"] - a["peak_rss_bytes"]
    checks.append({"from": a["size"], "to": b["size"], "estimated_growth_bytes": est,
                   "rss_growth_bytes": rss, "error": round(est / rss - 1, 3) if rss else None})
  projected = []
  for s in [int(x) for x in args.project.split(",") if x]:
    p = child(s, False)
    peak = p["estimated_peak_bytes"]
    projected.append({"size": s, "estimated_peak_bytes": peak,
                      "parts": {k: v for k, v in p["plan"][-1].items() if k.endswith("_bytes")},
                      "fits": {f"{gb} GB": peak <= gb * 1024 ** 3 for gb in DEVICES_GB}})
    print(json.dumps(projected[-1]), file=sys.stderr, flush=True)
  print(json.dumps({"measured": measured, "growth_checks": checks, "projected": projected},
                   indent=1))


if __name__ == "__main__":
  main()
