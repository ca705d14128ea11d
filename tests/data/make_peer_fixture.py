"""Regenerates tests/data/peer_losses.json: the peer's loss terms at fixed images.

Needs the peer's venv (torch): run from the repository root as
    /path/to/venv-peer/bin/python tests/data/make_peer_fixture.py ../shared/peer
The weights are the peer's own seeded random VGG19 (make_random_vgg.py, seed 0,
numpy only), so tests rebuild them without torch.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

peer = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(peer))
from make_random_vgg import random_params  # noqa: E402
from weights_h5 import conv_layers  # noqa: E402

import h5py  # noqa: E402

here = Path(__file__).parent
for name, src in (("content64.png", "examples/tubingen.jpg"), ("style64.png", "examples/starry_night.jpg")):
  Image.open(src).convert("RGB").resize((64, 64), Image.BICUBIC).save(here / name)

records = []
with tempfile.TemporaryDirectory() as tmp:
  for pre in ("caffe", "torch"):
    w = Path(tmp) / f"w_{pre}.h5"
    params = random_params("vgg19", 0)
    with h5py.File(w, "w") as f:   # nstjax's layout, written here without nstjax
      f.attrs["arch"], f.attrs["preprocessing"] = "vgg19", pre
      for n, _, _ in conv_layers("vgg19"):
        f[f"{n}/kernel"], f[f"{n}/bias"] = params[n]
    for pooling in ("max", "avg"):
      for init in ("content", "style"):
        cmd = [sys.executable, str(peer / "gatys.py"), "--weights", str(w), "--size", "64",
               "--content", str(here / "content64.png"), "--style", str(here / "style64.png"),
               "--steps", "0", "--warmup", "1", "--init", init, "--pooling", pooling,
               "--tv-weight", "1", "--threads", "2"]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        records.append({"preprocessing": pre, "pooling": pooling, "init": init, "losses": out["losses"]})
(here / "peer_losses.json").write_text(json.dumps(
    {"peer": "shared/peer/gatys.py", "weights": "make_random_vgg.random_params('vgg19', seed=0)",
     "size": 64, "records": records}, indent=1) + "\n")
print(json.dumps(records, indent=1))
