"""Exact tiling against the untiled run: gradient equality, time per step, peak memory, projections.

    python bench/tiling.py --check 384 --measure 1024 --tiles none,512,256 \
        --project 2048,4096,8192 > bench/out/tiling.json

``--check``: in one process, the loss and gradient of the real VGG19 objective
(tubingen/starry_night, defaults) untiled and with tiles of a quarter of the
size: their largest relative difference and where it is; once per
``--check-algorithms`` value (``--conv-algorithm``), with the conv units of
blocks 3-5 whose ReLU is on in one algorithm and off in XLA's direct
convolution (values within rounding of zero: each moves the gradient in a
patch around it). ``--measure``: each tile setting in a
fresh process: the plan's estimated peak, then 2 steps of a real run (seconds
per evaluation, compile seconds, the first loss) and the process's peak RSS.
``--pairs``: the measured runs' L-BFGS history (default 100). ``--project``: the plan
(compiled, never run) untiled and with 512 px tiles, at
100 and 20 L-BFGS pairs, against 24, 80 and 141 GB devices.
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


def _tile(text):
  return None if text in (None, "none") else int(text)


def check(size: int, conv_algorithm: str = "auto"):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import nstjax
  from nstjax import objective, pipeline, vgg
  net = nstjax.load_weights()
  runs = {}

  def run(alg, tile):   # (prepared, loss, gradient at the content image); each once
    if (alg, tile) not in runs:
      cfg = nstjax.StyleConfig(size=size, tile=tile, conv_algorithm=alg)
      p = pipeline.prepare(net, CONTENT, STYLE, cfg)
      f = objective.make_objective(cfg.static_key())
      value, grad = jax.jit(jax.value_and_grad(
          lambda x: f(x, net=p.net, targets=p.targets, weights=p.weights)))(jnp.asarray(p.content))
      runs[alg, tile] = (p, float(value), np.asarray(grad))
    return runs[alg, tile]

  def largest(a, b):   # largest difference over the largest entry, and where (pixels)
    d = np.abs(np.asarray(a) - np.asarray(b))
    return (float(d.max() / np.abs(np.asarray(b)).max()),
            [int(i) for i in np.unravel_index(d.argmax(), d.shape)[:2]])

  (p0, v0, g0), (p1, v1, g1) = run(conv_algorithm, None), run(conv_algorithm, size // 4)
  out = {"size": size, "tile": size // 4, "conv_algorithm": vgg.conv_algorithm(p0.net),
         "loss_untiled": v0, "loss_tiled": v1, "loss_rel_diff": abs(v1 - v0) / abs(v0)}
  out["grad_max_rel_diff"], out["grad_max_diff_at_px"] = largest(g1, g0)
  out["targets_max_rel_diff"] = max(largest(a, b)[0] for a, b in
                                    zip(jax.tree.leaves(p1.targets), jax.tree.leaves(p0.targets)))
  # Against XLA's convolutions, untiled: the gradient, and the ReLUs switched
  pd, _, g_direct = run("direct", None)
  out["untiled_grad_vs_direct"] = largest(g0, g_direct)
  convs = tuple(n for n in p0.net.convs if n[4] in "345" and n != "conv3_1")
  features = jax.jit(lambda n, x: vgg.features(n, x, layers=convs, pooling=p0.config.pooling))
  acts = [features(p.net, p.content) for p in (pd, p0)]
  out["relu_switched_vs_direct"] = {
      name: [[int(y) * 2 ** (int(name[4]) - 1), int(x) * 2 ** (int(name[4]) - 1)]
             for y, x, _ in np.argwhere((np.asarray(acts[0][name]) > 0)
                                        != (np.asarray(acts[1][name]) > 0))]
      for name in convs}
  print(json.dumps(out))


def worker(size: int, tile, run: bool, pairs: int):
  import nstjax
  from nstjax import plan as nplan
  net = nstjax.load_weights()
  cfg = nstjax.StyleConfig(size=size, iterations=2, tile=tile, lbfgs_memory=pairs)
  p = nplan.make_plan(net, CONTENT, STYLE, cfg)
  out = {"size": size, "tile": tile, "lbfgs_memory": pairs,
         "estimated_peak_bytes": p["estimated_peak_bytes"], "plan": p["plan"]}
  if run:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = nstjax.stylize_result(CONTENT, STYLE, cfg, net=net)
    s = r.summary
    out.update(rss_before_run_bytes=before,
               peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               seconds_per_evaluation=s["seconds_per_evaluation"], evaluations=s["evaluations"],
               compile_seconds=s["compile_seconds"], initial_total=s["initial_losses"]["total"],
               final_total=s["losses"]["total"], tiling=s["tile"])
  print(json.dumps(out))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--check", type=int, default=384)
  ap.add_argument("--measure", type=int, default=1024)
  ap.add_argument("--tiles", default="none,512,256")
  ap.add_argument("--project", default="2048,4096,8192")
  ap.add_argument("--worker", type=int, default=None)
  ap.add_argument("--tile", default=None)
  ap.add_argument("--pairs", type=int, default=100)
  ap.add_argument("--run", action="store_true")
  ap.add_argument("--do-check", type=int, default=None)
  ap.add_argument("--check-algorithms", default="auto", help="--conv-algorithm values to check")
  args = ap.parse_args()
  if args.do_check is not None:
    return check(args.do_check, args.check_algorithms)
  if args.worker is not None:
    return worker(args.worker, _tile(args.tile), args.run, args.pairs)

  def child(*extra):
    cmd = [sys.executable, __file__, *map(str, extra)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in got.items() if k != "plan"}), file=sys.stderr, flush=True)
    return got

  result = {"check": [child("--do-check", args.check, "--check-algorithms", a)
                      for a in args.check_algorithms.split(",")] if args.check else []}
  result["measured"] = [child("--worker", args.measure, "--tile", t, "--run", "--pairs", args.pairs)
                        for t in args.tiles.split(",")] if args.measure else []
  projected = []
  for s in [int(x) for x in args.project.split(",") if x]:
    for tile in ("none", "512"):
      for pairs in (100, 20):
        p = child("--worker", s, "--tile", tile, "--pairs", pairs)
        peak = p["estimated_peak_bytes"]
        projected.append({"size": s, "tile": _tile(tile), "lbfgs_memory": pairs,
                          "estimated_peak_bytes": peak,
                          "temp_bytes": p["plan"][-1]["temp_bytes"],
                          "lbfgs_history_bytes": p["plan"][-1]["lbfgs_history_bytes"],
                          "fits": {f"{gb} GB": peak <= gb * 1024 ** 3 for gb in DEVICES_GB}})
  result["projected"] = projected
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
