"""L-BFGS step rules compared: loss after the same number of evaluations, time per
evaluation, and host round trips, on the real VGG19, in one invocation.

    python bench/solvers.py --size 256 --evaluations 100 > bench/out/solvers_256.json

Rules: optax's zoom line search (strong Wolfe; data-dependent loops), nstjax's
backtracking (one evaluation per step, Armijo, no control flow) and a fixed
step (``--line-search none --lr 1``: the classic tools' L-BFGS). For every
pair of shared example images and every rule: the total loss after 25%, 50%
and 100% of the evaluations, seconds per evaluation, and in the compiled step
the conditionals and while loops (each a device-to-host round trip on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("tubingen", "starry_night"), ("tubingen", "the_scream"))
RULES = {"zoom": {"line_search": "zoom"},
         "backtracking": {"line_search": "backtracking"},
         "fixed lr 1": {"line_search": "none", "lr": 1.0}}


def control_flow(prepared, cfg):
  import jax
  from nstjax import optim, pipeline
  state = pipeline.start_state(prepared)
  text = jax.jit(optim.make_step(cfg.static_key())).lower(
      prepared.net, state.image, state.opt_state, state.evaluations, prepared.targets,
      prepared.weights).compile().as_text()
  return {"conditionals": text.count(" conditional("), "while_loops": text.count(" while(")}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--evaluations", type=int, default=100)
  ap.add_argument("--weights", default=None)
  ap.add_argument("--pairs", type=int, default=len(PAIRS))
  args = ap.parse_args()
  import jax
  import nstjax
  from nstjax import pipeline
  net = nstjax.load_weights(args.weights)
  rows = []
  for content, style in PAIRS[:args.pairs]:
    for name, fields in RULES.items():
      cfg = nstjax.StyleConfig(size=args.size, iterations=args.evaluations, **fields)
      prepared = pipeline.prepare(net, ROOT / "examples" / f"{content}.jpg",
                                  ROOT / "examples" / f"{style}.jpg", cfg)
      t0 = time.perf_counter()
      r = pipeline.run(prepared, steps_per_call=1)
      wall = time.perf_counter() - t0
      trace = [t for t in r.trace if t["evaluations"] <= args.evaluations]

      def at(frac):
        want = frac * args.evaluations
        ok = [t for t in trace if t["evaluations"] <= want]
        return ok[-1]["losses"]["total"] if ok else None

      s = r.summary
      rows.append({"content": content, "style": style, "rule": name, **fields,
                   "loss_at_25pct": at(0.25), "loss_at_50pct": at(0.5), "loss_at_100pct": at(1.0),
                   "initial_loss": s["initial_losses"]["total"],
                   "steps": s["iterations"], "evaluations": s["evaluations"],
                   "seconds_per_evaluation": s["seconds_per_evaluation"],
                   "compile_seconds": s["compile_seconds"], "wall_seconds": round(wall, 2),
                   **control_flow(prepared, cfg)})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print(json.dumps({"size": args.size, "evaluations": args.evaluations,
                    "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "device": str(jax.devices()[0].device_kind),
                    "jax": jax.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
