"""Filter-mean normalisation: means become 1, features scale per channel, bad input."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import smooth_image
from nstjax import NSTError, normalize, vgg
from nstjax.image import save_image
from nstjax.weights import format as wformat
from nstjax.weights.normalize_file import normalize_file

CALIBRATION = [smooth_image(40, 36, s) for s in range(3)]
RELUS = tuple(f"relu{n[4:]}" for n, _, _ in vgg.conv_layers("vgg19"))


@pytest.fixture(scope="module")
def normalized(tiny_net):
  means = normalize.filter_means(tiny_net, CALIBRATION, pooling="max")
  return normalize.normalize(tiny_net, means), normalize.compute_factors(means)


def test_every_live_filter_mean_is_one(normalized):
  net, factors = normalized
  again = normalize.filter_means(net, CALIBRATION, pooling="max")
  for name, m in again.items():
    live = factors[name] != 1.0
    np.testing.assert_allclose(m[live], 1.0, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_features_scale_per_channel_outside_calibration_set(tiny_net, normalized, pooling):
  net, factors = normalized
  image = smooth_image(33, 47, 99)            # not in the calibration set
  layers = ("conv1_1", "relu1_2", "pool1", "relu2_2", "conv3_3", "pool3", "relu4_4", "relu5_1", "pool5")
  plain = vgg.features(tiny_net, jnp.asarray(image), layers=layers, pooling=pooling)
  scaled = vgg.features(net, jnp.asarray(image), layers=layers, pooling=pooling)
  for layer in layers:
    block = layer.lstrip("convrelupool")
    conv = f"conv{block}" if "_" in block else f"conv{block}_{max(i for b, n, _ in vgg.BLOCKS['vgg19'] if str(b) == block for i in range(1, n + 1))}"
    want = np.asarray(plain[layer]) / factors[conv]
    got = np.asarray(scaled[layer])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5 * np.abs(want).max(), err_msg=layer)


def test_dead_filter_keeps_factor_one(tiny_net):
  convs = {k: dict(v) for k, v in tiny_net.convs.items()}
  convs["conv2_1"]["bias"] = convs["conv2_1"]["bias"].at[0].set(-1e6)   # never fires
  net = dataclasses.replace(tiny_net, convs=convs)
  means = normalize.filter_means(net, CALIBRATION)
  assert means["conv2_1"][0] == 0.0
  assert normalize.compute_factors(means)["conv2_1"][0] == 1.0
  assert normalize.summary(means)["conv2_1"]["dead"] == 1


def _folder(tmp_path, images):
  folder = tmp_path / "cal"
  folder.mkdir()
  for i, img in enumerate(images):
    save_image(img, folder / f"{i}.png")
  return folder


def test_normalize_file_records_and_refuses_twice(tmp_path, tiny_weights_file):
  folder = _folder(tmp_path, CALIBRATION)
  out = normalize_file(tiny_weights_file, tmp_path / "n.h5", folders=[folder], size=36,
                       include_default=False)
  params, info = wformat.read(out)
  assert params.normalized and info["normalized"]["calibration"]["images"] == 3
  assert set(info["normalized"]["layers"]["conv3_1"]) == {"min", "max", "dead"}
  with pytest.raises(NSTError, match="already normalised"):
    normalize_file(out, tmp_path / "n2.h5", folders=[folder], include_default=False)


def test_default_calibration_set_is_shipped(tmp_path, tiny_weights_file):
  out = normalize_file(tiny_weights_file, tmp_path / "n.h5", size=32)
  assert wformat.read_info(out)["normalized"]["calibration"]["images"] == 3


@pytest.mark.parametrize("case,match", [
    ("empty", "has no images"), ("missing", "does not exist"),
    ("unreadable", "not an image file"), ("small", "needs at least 16x16"),
])
def test_bad_calibration(tmp_path, tiny_weights_file, case, match):
  folder = tmp_path / "cal"
  if case != "missing":
    folder.mkdir()
  if case == "unreadable":
    (folder / "x.png").write_text("not a png")
  if case == "small":
    save_image(smooth_image(12, 12, 0), folder / "s.png")
  with pytest.raises(NSTError, match=match):
    normalize_file(tiny_weights_file, tmp_path / "n.h5", folders=[folder], size=12 if case == "small" else 32,
                   include_default=False)
  assert not (tmp_path / "n.h5").exists()


def test_cli_normalize_and_info(tmp_path, tiny_weights_file, capsys):
  from test_cli import nstjax_cli
  out = tmp_path / "n.h5"
  code, stdout, err = nstjax_cli(["weights", "normalize", tiny_weights_file, "-o", out, "--size", "32"], capsys)
  assert code == 0, err
  code, stdout, _ = nstjax_cli(["weights", "info", out], capsys)
  assert "normalized:" in stdout
  code, _, err = nstjax_cli(["weights", "normalize", out, "-o", tmp_path / "again.h5"], capsys)
  assert code == 1 and "already normalised" in err and len(err.strip().splitlines()) == 1
