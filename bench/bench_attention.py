"""Attention target (issue 6): seconds, peak memory and throughput, chunked vs unchunked.

Real VGG19 features of examples/tubingen.jpg (content) and starry_night.jpg
(style), both resized to size x size (so conv2_1 at 512 px is 65536 x 65536).
Each measurement runs in a fresh process that loads precomputed features, so
peak RSS is the attention computation's own (plus JAX's ~185 MB baseline).
Throughput counts the two matmuls, 2·Nc·Ns·(C + C) FLOP, against this machine's
float32 matmul rate measured in the same invocation.

    python bench/bench_attention.py --cases 512:relu1_1,512:relu2_1,...
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = ("512:relu1_1,512:relu2_1,512:relu3_1,512:relu4_1,512:relu5_1,"
                 "1024:relu3_1,1024:relu4_1")
REFERENCE_MAX_ENTRIES = 16384 * 16384   # unchunked logits+probabilities: 2 GiB


def rss_mb():
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def matmul_rate(n=2048, reps=7):
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times) / 1e9


def make_features(size, layers, out_dir):
  import numpy as np
  from PIL import Image
  import jax.numpy as jnp
  import nstjax
  net = nstjax.load_weights()
  for name, path in (("content", "tubingen.jpg"), ("style", "starry_night.jpg")):
    img = np.asarray(Image.open(ROOT / "examples" / path).convert("RGB").resize((size, size), Image.BICUBIC),
                     np.float32) / 255.0
    feats = nstjax.vgg.features(net, jnp.asarray(img), layers=tuple(layers), pooling="avg")
    for layer in layers:
      np.save(Path(out_dir) / f"{name}_{size}_{layer}.npy", np.asarray(feats[layer]))


def worker(args):
  import numpy as np
  import jax
  import jax.numpy as jnp
  from nstjax import attention
  fc = jnp.asarray(np.load(Path(args.dir) / f"content_{args.size}_{args.layer}.npy"))
  fs = jnp.asarray(np.load(Path(args.dir) / f"style_{args.size}_{args.layer}.npy"))
  c = fc.shape[-1]
  nc, ns = fc.shape[0] * fc.shape[1], fs.shape[0] * fs.shape[1]
  if args.reference:
    fn = jax.jit(lambda a, b: attention.attention_reference(
        attention.mvn(a.reshape(-1, c)), attention.mvn(b.reshape(-1, c)), b.reshape(-1, c)))
    tq = tk = None
  else:
    tq, tk = attention.choose_chunks(nc, ns, c, c, attention.parse_bytes(args.memory))
    fn = jax.jit(lambda a, b: attention.chunked_attention(
        attention.mvn(a.reshape(-1, c)), attention.mvn(b.reshape(-1, c)), b.reshape(-1, c),
        q_chunk=tq, k_chunk=tk))
  t0 = time.perf_counter()
  compiled = fn.lower(fc, fs).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = compiled(fc, fs).block_until_ready()
  seconds = time.perf_counter() - t0
  flop = 2.0 * nc * ns * (c + c)
  print(json.dumps({"size": args.size, "layer": args.layer, "method": "reference" if args.reference else "chunked",
                    "Nc": nc, "Ns": ns, "C": c, "chunks": [tq, tk], "seconds": round(seconds, 3),
                    "compile_s": round(compile_s, 3), "gflop_s": round(flop / seconds / 1e9, 1),
                    "peak_rss_mb": rss_mb(), "finite": bool(jnp.all(jnp.isfinite(out)))}))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--features", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--dir", help=argparse.SUPPRESS)
  ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
  ap.add_argument("--layer", help=argparse.SUPPRESS)
  ap.add_argument("--layers", help=argparse.SUPPRESS)
  ap.add_argument("--cases", default=DEFAULT_CASES)
  ap.add_argument("--memory", default="1GB", help="chunk budget (as --attention-memory)")
  args = ap.parse_args()
  if args.features:
    return make_features(args.size, args.layers.split(","), args.dir)
  if args.worker:
    return worker(args)
  cases = [(int(s), l) for s, l in (c.split(":") for c in args.cases.split(","))]
  rate = matmul_rate()
  print(json.dumps({"matmul_gflop_s": round(rate, 1)}), file=sys.stderr, flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for size in sorted({s for s, _ in cases}):
      layers = [l for s, l in cases if s == size]
      subprocess.run([sys.executable, __file__, "--features", "--size", str(size), "--layers",
                      ",".join(layers), "--dir", tmp], check=True)
    for size, layer in cases:
      base = [sys.executable, __file__, "--worker", "--size", str(size), "--layer", layer, "--dir", tmp,
              "--memory", args.memory]
      row = json.loads(subprocess.run(base, check=True, capture_output=True, text=True).stdout)
      row["fraction_of_matmul_rate"] = round(row["gflop_s"] / rate, 3)
      rows.append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)
      if row["Nc"] * row["Ns"] <= REFERENCE_MAX_ENTRIES:
        ref = json.loads(subprocess.run(base + ["--reference"], check=True, capture_output=True,
                                        text=True).stdout)
        ref["fraction_of_matmul_rate"] = round(ref["gflop_s"] / rate, 3)
        rows.append(ref)
        print(json.dumps(ref), file=sys.stderr, flush=True)
  print(json.dumps({"matmul_gflop_s": round(rate, 1), "memory_budget": args.memory, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
