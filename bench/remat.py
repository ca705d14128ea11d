"""Rematerialisation: does jax.checkpoint lower the compiled step's peak? (issue 12)

    python bench/remat.py --size 512 > bench/out/remat.json

Compiles (never runs) the default step at ``--size`` with the real VGG19's
shapes three ways and reads XLA's memory analysis: no rematerialisation; per
block (the network's features under ``jax.checkpoint`` with a policy that
saves only the pooling outputs, tagged ``poolB`` by ``vgg.features``, so each
block's inside is recomputed in the backward pass); and full (nothing saved,
the whole forward recomputed). Then, for the variant with the lowest
estimate, a real 2-step run's peak RSS in a fresh process against the
untiled default's.
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
POLICIES = ("none", "per-block", "full")


def patch(policy: str):
  """Wraps vgg.features (as the objective calls it) in jax.checkpoint with ``policy``."""
  import jax
  from nstjax import objective, vgg
  if policy == "none":
    return
  real = vgg.features
  names = tuple(f"pool{b}" for b in range(1, 6))
  pol = (jax.checkpoint_policies.save_only_these_names(*names) if policy == "per-block"
         else jax.checkpoint_policies.nothing_saveable)

  def features(params, image, **kw):
    return jax.checkpoint(lambda p, x: real(p, x, **kw), policy=pol)(params, image)

  objective.vgg.features = features   # the loss terms' module reference
  del vgg


def worker(size: int, policy: str, run: bool):
  import nstjax
  from nstjax import plan as nplan
  patch(policy)
  net = nstjax.load_weights()
  cfg = nstjax.StyleConfig(size=size, iterations=2)
  p = nplan.make_plan(net, CONTENT, STYLE, cfg)["plan"][0]
  out = {"policy": policy, "size": size, "temp_bytes": p["temp_bytes"],
         "estimated_peak_bytes": p["estimated_peak_bytes"]}
  if run:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = nstjax.stylize_result(CONTENT, STYLE, cfg, net=net)
    out.update(rss_growth_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before,
               seconds_per_evaluation=r.summary["seconds_per_evaluation"])
  print(json.dumps(out))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=512)
  ap.add_argument("--worker", default=None)
  ap.add_argument("--run", action="store_true")
  args = ap.parse_args()
  if args.worker is not None:
    return worker(args.size, args.worker, args.run)

  def child(policy, run):
    cmd = [sys.executable, __file__, "--size", str(args.size), "--worker", policy] + (
        ["--run"] if run else [])
    got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                     .stdout.strip().splitlines()[-1])
    print(json.dumps(got), file=sys.stderr, flush=True)
    return got

  compiled = [child(p, False) for p in POLICIES]
  best = min(compiled[1:], key=lambda e: e["estimated_peak_bytes"])["policy"]
  runs = [child("none", True), child(best, True)]
  print(json.dumps({"compiled": compiled, "runs": runs}, indent=1))


if __name__ == "__main__":
  main()
