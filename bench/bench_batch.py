"""Batch throughput (issue 4): images per minute, batched vs one process per job.

Every figure is wall time of whole commands, so process start, weights loading
and compilation are included (what users pay), with each command's peak RSS.
Jobs: the same content/style pair with different style weights (one shape, so
one group), real VGG19.

    python bench/bench_batch.py --sizes 128,256 --batches 1,4,8 --iterations 30

``--conv-algorithms auto,direct`` times every command once per convolution
algorithm (``--conv-algorithm``), in one invocation. ``--other DIR`` also runs
every batch command with another version of nstjax (a folder holding an
``nstjax`` package laid out as installed), right after this version's, so both
share the machine's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENT, STYLE = ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"
NSTJAX = [sys.executable, "-m", "nstjax.cli.main"]


def weights_for(n):
  return [f"{1e-3 * (1 + 0.25 * i):.6g}" for i in range(n)]


def timed(cmd, env=None):
  """(wall seconds, peak RSS in MB) of one command."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
  err = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {err.decode()[-2000:]}")
  return time.perf_counter() - t0, round(usage.ru_maxrss / 1024, 1)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="128,256")
  ap.add_argument("--batches", default="1,4,8")
  ap.add_argument("--iterations", type=int, default=30)
  ap.add_argument("--separate", type=int, default=8, help="jobs run as separate processes")
  ap.add_argument("--sharded-size", type=int, default=128)
  ap.add_argument("--modes", default="auto", help="batch modes to time (auto,vmap,map)")
  ap.add_argument("--skip-sharded", action="store_true")
  ap.add_argument("--conv-algorithms", default="auto", help="--conv-algorithm values to time")
  ap.add_argument("--other", help="folder with another version's nstjax package, run side by side")
  args = ap.parse_args()
  rows = []
  common = ["--iterations", str(args.iterations), "-q"]
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(NSTJAX + ["weights", "fetch"], check=True, capture_output=True)
    cells = [(int(s), a) for s in args.sizes.split(",") for a in args.conv_algorithms.split(",")]
    for size, alg in cells:
      algo = ["--conv-algorithm", alg]
      total, rss = 0.0, 0.0
      for i, w in enumerate(weights_for(args.separate) if args.separate else []):
        secs, peak = timed(NSTJAX + ["stylize", str(CONTENT), str(STYLE), "-o",
                                     f"{tmp}/sep_{size}_{alg}_{i}.png", "--size", str(size),
                                     "--style-weight", w] + common + algo)
        total, rss = total + secs, max(rss, peak)
      if args.separate:
        rows.append({"size": size, "conv_algorithm": alg, "mode": "separate processes",
                     "jobs": args.separate,
                     "seconds": round(total, 2), "peak_rss_mb": rss,
                     "images_per_minute": round(60 * args.separate / total, 2)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
      versions = [("this", None)] + ([("other", args.other)] if args.other else [])
      for b in [int(x) for x in args.batches.split(",")]:
        for mode in args.modes.split(","):
          for version, path in versions:
            env = dict(os.environ, PYTHONPATH=path) if path else None
            secs, peak = timed(NSTJAX + ["batch", "--content", str(CONTENT), "--style", str(STYLE),
                                         "--sweep", "style-weight=" + ",".join(weights_for(b)), "-o",
                                         f"{tmp}/batch_{size}_{alg}_{b}_{mode}_{version}", "--size",
                                         str(size), "--batch-mode", mode] + common + algo, env=env)
            rows.append({"size": size, "conv_algorithm": alg, "mode": f"nstjax batch ({mode})",
                         "version": version,
                         "jobs": b, "seconds": round(secs, 2), "peak_rss_mb": peak,
                         "images_per_minute": round(60 * b / secs, 2)})
            if args.separate:
              rows[-1]["throughput_vs_separate"] = round(total / args.separate * b / secs, 3)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    size, b = args.sharded_size, max(int(x) for x in args.batches.split(","))
    for devices in (() if args.skip_sharded else (1, 2)):
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
      secs, peak = timed(NSTJAX + ["batch", "--content", str(CONTENT), "--style", str(STYLE), "--sweep",
                             "style-weight=" + ",".join(weights_for(b)), "-o", f"{tmp}/shard_{devices}",
                             "--size", str(size)] + common, env=env)
      rows.append({"size": size, "mode": f"nstjax batch, {devices} host device(s)", "jobs": b,
                   "seconds": round(secs, 2), "peak_rss_mb": peak, "images_per_minute": round(60 * b / secs, 2)})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print(json.dumps({"iterations": args.iterations, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
