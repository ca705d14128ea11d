"""Precision policies compared: final loss and seconds per evaluation, real VGG19, one invocation.

    python bench/precision.py --size 256 --iterations 40 > bench/out/precision_256.json

Each policy runs the same job (tubingen/starry_night, defaults otherwise); the
loss of each result is then evaluated once more in fp32, so every policy is
judged by the same yardstick.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--iterations", type=int, default=40)
  ap.add_argument("--precisions", default="fp32,tf32,bf16")
  args = ap.parse_args()
  import jax
  import nstjax
  from nstjax import pipeline
  net = nstjax.load_weights()
  c, s = ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"
  rows = []
  judge = pipeline.prepare(net, c, s, nstjax.StyleConfig(size=args.size, precision="fp32"))
  for precision in args.precisions.split(","):
    cfg = nstjax.StyleConfig(size=args.size, iterations=args.iterations, precision=precision)
    r = pipeline.run(pipeline.prepare(net, c, s, cfg))
    fp32_loss = pipeline.run(judge, iterations=0, start=r.image).summary["losses"]["total"]
    rows.append({"precision": precision, "loss": r.summary["losses"]["total"],
                 "loss_in_fp32": fp32_loss, "evaluations": r.summary["evaluations"],
                 "seconds_per_evaluation": r.summary["seconds_per_evaluation"],
                 "compile_seconds": r.summary["compile_seconds"]})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  base = next(r for r in rows if r["precision"] == "fp32")["loss_in_fp32"]
  for r in rows:
    r["loss_ratio_vs_fp32"] = round(r["loss_in_fp32"] / base, 4)
  print(json.dumps({"size": args.size, "iterations": args.iterations,
                    "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                    "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
