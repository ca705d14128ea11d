"""Winograd F(4,3) convolutions (``--conv-algorithm winograd``) against XLA's on this backend.

Two measurements, best of ``--reps``, printed as JSON:

* per layer: forward pass plus input gradient (what an evaluation needs) of
  one 3x3 convolution at VGG19's layer shapes, ``vgg.frozen_conv`` (XLA's
  convolution, the flipped kernel for the gradient) against
  ``vgg.winograd_conv``, and the relative error of the latter's forward pass
  and gradient;
* per evaluation: the loss and gradient of the real VGG19's default layers
  (relu1_1..relu5_1, relu4_2) run inside a ``fori_loop`` (as the solver's steps
  run), every conv direct against blocks 3-5 by Winograd (the ``auto`` rule).

    python bench/winograd.py --sizes 256,512 > bench/out/winograd.json
    python bench/winograd.py --sizes 96,128,160,192 --no-layers > bench/out/winograd_small.json

Each evaluation row also gives each program's compile time (a fresh run pays
it once, or reads it from the persistent cache).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import vgg

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2")
# (side, input channels, output channels): VGG19's conv shapes at 512 px (blocks 1-5,
# conv1_2 at 256 px), then those of blocks 3-5 at 256 px.
SHAPES = [(256, 64, 64), (256, 128, 128), (128, 256, 256), (64, 256, 512), (64, 512, 512),
          (32, 512, 512), (64, 256, 256), (32, 256, 512), (16, 512, 512)]


def best(fn, *args, n):
  jax.block_until_ready(fn(*args))
  out = float("inf")
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out = min(out, time.perf_counter() - t0)
  return out


def layers(reps):
  rng = np.random.default_rng(0)
  rows = []
  for h, c, o in SHAPES:
    x = jnp.asarray(rng.standard_normal((1, h, h, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c), jnp.float32)
    kf, u = vgg.flip_kernel(k), vgg.winograd_kernel(k)
    direct = lambda x: vgg.frozen_conv(x, k, kf)
    winograd = lambda x: vgg.winograd_conv(x, u)
    fg = lambda f: jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(f(x)))))
    y, yw = jax.jit(direct)(x), jax.jit(winograd)(x)
    g, gw = fg(direct)(x)[1], fg(winograd)(x)[1]
    row = {"h": h, "w": h, "cin": c, "cout": o,
           "direct_ms": round(1e3 * best(fg(direct), x, n=reps), 2),
           "winograd_ms": round(1e3 * best(fg(winograd), x, n=reps), 2),
           "forward_rel_error": float(jnp.abs(yw - y).max() / jnp.abs(y).max()),
           "gradient_rel_error": float(jnp.abs(gw - g).max() / jnp.abs(g).max())}
    row["ratio"] = round(row["winograd_ms"] / row["direct_ms"], 3)
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  return rows


def evaluations(sizes, reps, steps=3):
  import nstjax
  net = nstjax.load_weights()
  rows = []
  for size in sizes:
    image = jnp.asarray(np.random.default_rng(0).uniform(size=(size, size, 3)), jnp.float32)
    row = {"size": size}
    for name, fast in (("direct", ()), ("winograd", vgg.winograd_convs("vgg19", LAYERS))):
      p = vgg.prepare(net, LAYERS, winograd=fast)
      loss = lambda p, x: sum(jnp.sum(jnp.sin(v)) for v in
                              vgg.features(p, x, layers=LAYERS, pooling="max").values())
      grad = jax.value_and_grad(loss, argnums=1)
      looped = jax.jit(lambda p, x: jax.lax.fori_loop(
          0, steps, lambda i, x: x - 1e-9 * grad(p, x)[1], x))
      t0 = time.perf_counter()
      looped = looped.lower(p, image).compile()
      row[f"{name}_compile_s"] = round(time.perf_counter() - t0, 2)
      row[f"{name}_s_per_eval"] = round(best(looped, p, image, n=reps) / steps, 4)
    row["ratio"] = round(row["winograd_s_per_eval"] / row["direct_s_per_eval"], 3)
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="256,512", help="image sizes of the evaluation figure")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--no-layers", action="store_true", help="the evaluation figure only")
  args = ap.parse_args()
  print(json.dumps({"what": "3x3 conv forward + input gradient (ms) and VGG19 loss + gradient in "
                            "a fori_loop (s), best of reps; direct = XLA's convolution",
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "device": jax.devices()[0].device_kind,
                    "machine": platform.processor() or platform.machine(), "reps": args.reps,
                    "layers": [] if args.no_layers else layers(args.reps),
                    "evaluations": evaluations([int(s) for s in args.sizes.split(",")], args.reps)},
                   indent=1))


if __name__ == "__main__":
  main()
