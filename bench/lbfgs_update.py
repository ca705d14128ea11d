"""The L-BFGS update alone (no network): optax's two-loop recursion against nstjax's
compact representation, at image sizes, in one invocation.

    python bench/lbfgs_update.py --sizes 256,512 --memory 100 > bench/out/lbfgs_update.json

For each size: milliseconds per update (median of ``--reps`` timed calls after
a warm-up), the compiled program's XLA memory analysis (temporaries), and the
number of HLO instructions, fusions and while loops: a proxy for the kernels
a GPU would launch per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from nstjax import lbfgs


def hlo_counts(compiled) -> dict:
  text = compiled.as_text()
  lines = [l.strip() for l in text.splitlines()]
  return {"instructions": sum(1 for l in lines if " = " in l and not l.startswith("//")),
          "fusions": sum(1 for l in lines if " fusion(" in l),
          "while_loops": text.count(" while(")}


def measure(tx, n, reps):
  x = jax.random.normal(jax.random.key(0), (n,), jnp.float32)
  # Distinct buffers (optax's initial state shares zeros), so the state can be donated.
  state = jax.tree.map(lambda a: jnp.array(a, copy=True), tx.init(x))

  def update(g, state, x):
    return tx.update(g, state, x)

  step = jax.jit(update, donate_argnums=(1,))
  compiled = step.lower(x, state, x).compile()
  # A few pairs first (the timed calls do the same work whatever the count).
  for i in range(3):
    g = jax.random.normal(jax.random.key(i + 1), (n,), jnp.float32)
    _, state = step(g, state, x + 0.01 * i)
  times = []
  for i in range(reps):
    g = jax.random.normal(jax.random.key(100 + i), (n,), jnp.float32)
    t0 = time.perf_counter()
    u, state = step(g, state, x + 0.001 * i)
    u.block_until_ready()
    times.append(time.perf_counter() - t0)
  a = compiled.memory_analysis()
  return {"ms_per_update": round(1e3 * statistics.median(times), 3),
          "temp_bytes": int(a.temp_size_in_bytes), **hlo_counts(compiled)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="256,512")
  ap.add_argument("--memory", type=int, default=100)
  ap.add_argument("--reps", type=int, default=10)
  args = ap.parse_args()
  rows = []
  for size in [int(s) for s in args.sizes.split(",")]:
    n = size * size * 3
    for name, tx in (("optax two-loop", optax.scale_by_lbfgs(args.memory)),
                     ("nstjax compact", lbfgs.scale_by_compact_lbfgs(args.memory))):
      rows.append({"size": size, "n": n, "memory": args.memory, "update": name,
                   **measure(tx, n, args.reps)})
  print(json.dumps({"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                    "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
