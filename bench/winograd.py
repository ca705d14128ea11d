"""Winograd convolution in plain JAX against XLA's convolution on this backend.

Tried as a way to cut an evaluation's convolution FLOPs on a CPU (F(2,3):
2.25x fewer multiplications in the products, F(4,3): 4x; Lavin & Gray 2016):
the tile transforms are written as small matrix products (einsum), the
products as one batched matmul per tile position. Times a forward pass plus
the input gradient (what an evaluation needs) for VGG19's layer shapes at a
128 x 96 image and two larger ones, best of 10; prints JSON.

    python bench/winograd.py > bench/out/winograd.json
"""

from __future__ import annotations

import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

F23 = dict(m=2,
           BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
           G=[[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
           AT=[[1, 1, 1, 0], [0, 1, -1, -1]])
F43 = dict(m=4,
           BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
           G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
           AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


def transformed_kernel(k, f):
  """HWIO 3x3 kernel -> (a, a, I, O), computed once (the weights are frozen)."""
  g = jnp.asarray(f["G"], jnp.float32)
  return jnp.einsum("ai,ijco,bj->abco", g, k, g, precision="highest")


def winograd_conv(x, u, f):
  """'SAME' 3x3 stride-1 convolution of NHWC ``x`` with a transformed kernel ``u``."""
  m = f["m"]
  a = m + 2
  bt, at = np.asarray(f["BT"], np.float32), np.asarray(f["AT"], np.float32)
  n, h, w, c = x.shape
  th, tw = -(-h // m), -(-w // m)
  xp = jnp.pad(x, ((0, 0), (1, th * m - h + 1), (1, tw * m - w + 1), (0, 0)))
  rows = jnp.stack([xp[:, i:i + th * m:m] for i in range(a)], axis=2)         # N th a W' C
  rows = jnp.einsum("xi,ntiwc->ntxwc", bt, rows)
  tiles = jnp.stack([rows[:, :, :, j:j + tw * m:m] for j in range(a)], axis=4)  # N th a tw a C
  v = jnp.einsum("yj,ntxujc->xyntuc", bt, tiles).reshape(a * a, n * th * tw, c)
  prod = jnp.einsum("pnc,pco->pno", v, u.reshape(a * a, c, -1)).reshape(a, a, n, th, tw, -1)
  y = jnp.einsum("ix,jy,xyntuo->ntiujo", at, at, prod).reshape(n, th * m, tw * m, -1)
  return y[:, :h, :w]


def conv(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def best(fn, *args, n=10):
  jax.block_until_ready(fn(*args))
  out = float("inf")
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out = min(out, time.perf_counter() - t0)
  return out


def main():
  rng = np.random.default_rng(0)
  shapes = [(96, 128, 64, 64), (48, 64, 128, 128), (24, 32, 256, 256), (12, 16, 512, 512),
            (256, 256, 64, 64), (64, 64, 256, 256), (32, 32, 512, 512)]
  rows = []
  for h, w, c, o in shapes:
    x = jnp.asarray(rng.standard_normal((1, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c), jnp.float32)
    ref = conv(x, k)
    row = {"h": h, "w": w, "cin": c, "cout": o,
           "xla_ms": round(1e3 * best(jax.jit(jax.value_and_grad(
               lambda x, k: jnp.sum(jnp.sin(conv(x, k))))), x, k), 2)}
    for name, f in (("f23", F23), ("f43", F43)):
      u = transformed_kernel(k, f)
      y = jax.jit(lambda x, u, f=f: winograd_conv(x, u, f))(x, u)
      row[f"{name}_max_rel_error"] = float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref)))
      row[f"{name}_ms"] = round(1e3 * best(jax.jit(jax.value_and_grad(
          lambda x, u, f=f: jnp.sum(jnp.sin(winograd_conv(x, u, f))))), x, u), 2)
    rows.append(row)
    print(json.dumps(row), flush=True, file=__import__("sys").stderr)
  print(json.dumps({"what": "forward + input gradient of one 3x3 conv, best of 10, ms",
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
