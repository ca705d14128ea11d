"""--shard spatial on forced CPU devices: time per evaluation and the step's communication.

    python bench/spatial.py --size 256 --devices 1,2,4 --project 4096 --project-devices 8 \
        > bench/out/spatial.json

Each device count in a fresh process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``):
real VGG19, tubingen/starry_night, defaults with ``shard="spatial"``, 3 steps:
seconds per evaluation and the first loss. On this 2-core host the forced
devices share the same two cores, so the times show the partitioning's
overhead, not a speed-up. ``--project``: the step compiled (never run) at that
size over ``--project-devices`` forced devices, and the bytes its collectives
move per step, read from the compiled program (collective-permute results:
the convolutions' halo rows; all-reduce operands: Grams and dot products).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENT, STYLE = ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"
BYTES = {"f32": 4, "bf16": 2, "s32": 4, "f16": 2, "pred": 1, "u32": 4}


def collective_bytes(text: str) -> dict:
  """``{op: {"count", "bytes"}}``: each collective's result shapes in the compiled HLO text."""
  out = {op: {"count": 0, "bytes": 0}
         for op in ("collective-permute", "all-reduce", "all-gather", "all-to-all")}
  for line in text.splitlines():
    m = re.search(r"= (.*?) (collective-permute|all-reduce|all-gather|all-to-all)(?:-start)?\(",
                  line)
    if not m:
      continue
    out[m.group(2)]["count"] += 1
    for dtype, dims in re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]", m.group(1)):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      out[m.group(2)]["bytes"] += n * BYTES.get(dtype, 4)
  return out


def worker(size: int, run: bool):
  import jax
  import nstjax
  from nstjax import pipeline
  net = nstjax.load_weights()
  cfg = nstjax.StyleConfig(size=size, iterations=3, shard="spatial")
  out = {"devices": jax.device_count(), "size": size}
  if run:
    r = nstjax.stylize_result(CONTENT, STYLE, cfg, net=net)
    out.update(seconds_per_evaluation=r.summary["seconds_per_evaluation"],
               initial_total=r.summary["initial_losses"]["total"],
               final_total=r.summary["losses"]["total"])
  else:   # compiled at abstract shapes: nothing is computed at this size
    import jax.numpy as jnp
    from nstjax import image as nimage
    from nstjax import objective, optim, spatial, vgg
    mesh = spatial.make_mesh()
    content = nimage.load_image(CONTENT)
    h, w = nimage.long_side_shape(*content.shape[:2], size)
    style_hw = nimage.long_side_shape(*nimage.load_image(STYLE).shape[:2], size)
    network = objective.network(net, cfg)
    sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    targets = jax.eval_shape(lambda c, st: objective.make_targets(network, c, [st], cfg),
                             sds((h, w, 3)), sds((*style_hw, 3)))
    weights = objective.make_weights(cfg, net.preprocessing, net.normalized)
    state = jax.eval_shape(lambda x: optim.init_state(cfg.static_key(), x, terms=weights),
                           sds((h, w, 3)))
    placed = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=spatial._sharding(x, mesh, (h, w, 3))), tree)
    state, targets = placed(state), placed(targets)
    text = jax.jit(pipeline.make_steps(cfg.static_key(), 1)).lower(
        network, state.image, state.opt_state, state.evaluations, targets,
        weights).compile().as_text()
    out["height"], out["width"] = h, w
    out["collectives_per_step"] = collective_bytes(text)
  print(json.dumps(out))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--devices", default="1,2,4")
  ap.add_argument("--project", type=int, default=4096)
  ap.add_argument("--project-devices", type=int, default=8)
  ap.add_argument("--worker", type=int, default=None)
  ap.add_argument("--run", action="store_true")
  args = ap.parse_args()
  if args.worker is not None:
    return worker(args.worker, args.run)

  def child(n, size, run):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, "--worker", str(size)] + (["--run"] if run else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    got = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(got), file=sys.stderr, flush=True)
    return got

  result = {"runs": [child(int(n), args.size, True) for n in args.devices.split(",")]}
  if args.project:
    result["projected"] = child(args.project_devices, args.project, False)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
