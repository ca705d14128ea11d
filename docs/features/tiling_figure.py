"""The README's tiling figure: the same run untiled and tiled, and their difference.

    python docs/features/tiling_figure.py [--size 384 --iterations 40 --tile 128]

Runs ``nstjax stylize`` twice (tubingen/starry_night, defaults), writes
``docs/features/tiling.png`` (untiled | tiled | |difference| x 10) and
``docs/features/tiling.json`` (both runs' summaries' key figures).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from montage import montage  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=384)
  ap.add_argument("--iterations", type=int, default=40)
  ap.add_argument("--tile", type=int, default=128)
  args = ap.parse_args()
  tmp = Path(tempfile.mkdtemp())
  record = {}
  for name, extra in (("untiled", []), ("tiled", ["--tile", str(args.tile)])):
    subprocess.run([sys.executable, "-m", "nstjax.cli.entry", "stylize",
                    str(ROOT / "examples" / "tubingen.jpg"), str(ROOT / "examples" / "starry_night.jpg"),
                    "-o", str(tmp / f"{name}.png"), "--size", str(args.size), "--iterations",
                    str(args.iterations), "--summary", str(tmp / f"{name}.json"), "-q", *extra],
                   check=True)
    s = json.loads((tmp / f"{name}.json").read_text())
    record[name] = {k: s[k] for k in ("seconds", "seconds_per_evaluation", "evaluations", "tile")}
    record[name]["loss"] = s["losses"]["total"]
  a, b = (np.asarray(Image.open(tmp / f"{n}.png"), np.float32) for n in ("untiled", "tiled"))
  diff = np.abs(a - b)
  record["max_abs_difference_8bit"] = float(diff.max())
  record["mean_abs_difference_8bit"] = float(diff.mean())
  Image.fromarray(np.clip(diff * 10, 0, 255).astype(np.uint8)).save(tmp / "diff.png")
  t = record["tiled"]["tile"]
  montage(HERE / "tiling.png", [("untiled", tmp / "untiled.png"),
                                (f"--tile {args.tile}: {t['grid'][0]}x{t['grid'][1]} tiles, halo "
                                 f"{t['halo']} px", tmp / "tiled.png"),
                                ("|difference| x 10", tmp / "diff.png")], height=288)
  (HERE / "tiling.json").write_text(json.dumps({"command": vars(args), **record}, indent=1) + "\n")
  print(json.dumps(record))


if __name__ == "__main__":
  main()
