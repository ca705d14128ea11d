"""A group's evaluation per job: vmap (all jobs' convolutions together) vs lax.map (one
job after another) vs one job alone, by image size; one invocation, prints JSON.

Real VGG19, tubingen / starry_night at each size (long side), the default
objective, loss + gradient only (the step's cost; the L-BFGS update is 2-3% of
it); the same job stacked ``--jobs`` times. Best of ``--reps`` calls after one
warm-up call.

    python bench/batch_modes.py --sizes 128,192,256,512 --jobs 8 > bench/out/batch_modes.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp

import nstjax
from nstjax import objective, pipeline


def best(fn, *args, reps):
  jax.block_until_ready(fn(*args))
  out = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out = min(out, time.perf_counter() - t0)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="128,192,256,512")
  ap.add_argument("--jobs", type=int, default=8)
  ap.add_argument("--reps", type=int, default=2)
  args = ap.parse_args()
  net = nstjax.load_weights()
  rows = []
  for size in [int(s) for s in args.sizes.split(",")]:
    cfg = nstjax.StyleConfig(size=size)
    p = pipeline.prepare(net, "examples/tubingen.jpg", "examples/starry_night.jpg", cfg)
    image = pipeline.start_state(p).image
    terms_fn = objective.make_terms_fn(cfg.static_key())

    def value(x, net, targets, weights):
      return objective.total(terms_fn(x, net=net, targets=targets, weights=weights), weights)

    grad = jax.value_and_grad(value)
    vmapped = jax.jit(jax.vmap(grad, in_axes=(0, None, 0, 0)))
    mapped = jax.jit(lambda xs, net, ts, ws: jax.lax.map(lambda a: grad(a[0], net, a[1], a[2]),
                                                         (xs, ts, ws)))
    stack = lambda tree: jax.tree.map(lambda a: jnp.stack([a] * args.jobs), tree)
    group = (stack(image), p.net, stack(p.targets), stack(p.weights))
    row = {"size": size, "height": image.shape[0], "width": image.shape[1], "jobs": args.jobs,
           "single_s": best(jax.jit(grad), image, p.net, p.targets, p.weights, reps=args.reps + 1),
           "vmap_s_per_job": best(vmapped, *group, reps=args.reps) / args.jobs,
           "map_s_per_job": best(mapped, *group, reps=args.reps) / args.jobs}
    row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    rows.append(row)
    print(json.dumps(row), flush=True, file=__import__("sys").stderr)
  print(json.dumps({"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                    "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
                    "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
