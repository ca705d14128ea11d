"""The precision policy: fp32, tf32 (JAX's default) and bf16 convolutions; fp32 everywhere else.
The convolution algorithm: XLA's (direct) or Winograd F(4,3)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nstjax
from conftest import TINY_WIDTHS as TINY
from nstjax import NSTError, objective, optim, pipeline, vgg

BASE = nstjax.StyleConfig(size=None, iterations=8, style_weight=1e3)


def test_bf16_stays_close_to_fp32_and_keeps_the_state_in_fp32(tiny_net, content32, style32):
  out = {}
  for precision in ("fp32", "tf32", "bf16"):
    cfg = dataclasses.replace(BASE, precision=precision)
    r = nstjax.optimize(tiny_net, content32, style32, cfg)
    assert r.summary["precision"] == precision
    out[precision] = r
    leaves = jax.tree.leaves((r.state.image, r.state.opt_state))
    assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}
  fp32, bf16 = out["fp32"].summary, out["bf16"].summary
  # On a CPU JAX's default convolution precision is fp32.
  assert out["tf32"].summary["losses"]["total"] == pytest.approx(fp32["losses"]["total"], rel=1e-5)
  assert bf16["initial_losses"]["total"] == pytest.approx(fp32["initial_losses"]["total"], rel=2e-2)
  assert bf16["losses"]["total"] == pytest.approx(fp32["losses"]["total"], rel=5e-2)
  assert out["bf16"].image.dtype == np.float32


def test_bf16_convolutions_accumulate_in_fp32_and_features_are_fp32(tiny_net, content32):
  net = vgg.prepare(tiny_net, ("relu3_1",))
  x = jnp.asarray(content32)
  f32 = vgg.features(net, x, layers=("relu3_1",), precision="fp32")["relu3_1"]
  bf = vgg.features(net, x, layers=("relu3_1",), precision="bf16")["relu3_1"]
  assert bf.dtype == jnp.float32
  assert float(jnp.abs(bf - f32).max()) < 0.05 * float(jnp.abs(f32).max())
  hlo = jax.jit(lambda im: vgg.features(net, im, layers=("relu3_1",), precision="bf16")).lower(
      x).as_text()
  convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
  # bf16 operands, an f32 result: (tensor<...xbf16>, tensor<...xbf16>) -> tensor<...xf32>
  assert convs and all("xbf16>, tensor<" in c and c.rstrip().endswith("xf32>") for c in convs)
  with pytest.raises(NSTError, match="unknown precision"):
    vgg.features(net, x, layers=("relu3_1",), precision="fp8")


def test_bf16_gradient_flows(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, precision="bf16")
  prepared = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)
  state = pipeline.start_state(prepared)
  step = jax.jit(optim.make_step(cfg.static_key()))
  new, metrics = step(prepared.net, state.image, state.opt_state, state.evaluations,
                      prepared.targets, prepared.weights)
  assert np.isfinite(float(metrics["loss"])) and new.image.dtype == jnp.float32
  assert float(jnp.abs(new.image - state.image).max()) > 0


def test_conv_algorithm_auto_is_winograd_on_a_cpu_only_where_it_applies():
  wide = ("conv3_2", "conv3_3", "conv3_4", "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1")
  auto = nstjax.StyleConfig()   # layers to relu5_1
  rule = lambda cfg, platform, widths=None: objective.winograd_convs(cfg, "vgg19", widths, platform)
  assert rule(auto, "cpu") == wide                      # VGG19: 256 and 512 input channels
  assert rule(auto, "gpu") == rule(auto, "tpu") == ()
  assert rule(dataclasses.replace(auto, precision="bf16"), "cpu") == ()
  assert rule(dataclasses.replace(auto, shard="spatial"), "cpu") == ()
  assert rule(auto, "cpu", (64, 128, 128, 256, 256)) == ("conv4_2", "conv4_3", "conv4_4", "conv5_1")
  assert rule(auto, "cpu", TINY) == ()                  # narrow layers: the transforms cost more
  assert rule(dataclasses.replace(auto, conv_algorithm="winograd"), "gpu", TINY) == wide
  assert rule(dataclasses.replace(auto, conv_algorithm="direct"), "cpu") == ()
  with pytest.raises(NSTError, match="not bf16"):
    dataclasses.replace(auto, conv_algorithm="winograd", precision="bf16").validate()
  with pytest.raises(NSTError, match="not partitioned spatially"):
    dataclasses.replace(auto, conv_algorithm="winograd", shard="spatial").validate()
  with pytest.raises(NSTError, match="unknown conv algorithm"):
    dataclasses.replace(auto, conv_algorithm="fft").validate()


def test_winograd_and_direct_runs_agree_and_the_summary_says_which(tiny_net, content32, style32):
  out = {}
  for algorithm, uses in (("direct", set()), ("auto", set()),   # auto: the tiny net is narrow
                          ("winograd", {"conv3_2", "conv3_3", "conv3_4", "conv4_1", "conv4_2",
                                        "conv4_3", "conv4_4", "conv5_1"})):
    cfg = dataclasses.replace(BASE, conv_algorithm=algorithm)
    out[algorithm] = r = nstjax.optimize(tiny_net, content32, style32, cfg)
    assert r.summary["conv_algorithm"] == ("winograd" if uses else "direct")
    net = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False).net
    assert {name for name, c in net.convs.items() if "winograd" in c} == uses
  direct, winograd = out["direct"].summary, out["winograd"].summary
  assert winograd["initial_losses"]["total"] == pytest.approx(direct["initial_losses"]["total"],
                                                              rel=1e-5)
  assert winograd["losses"]["total"] == pytest.approx(direct["losses"]["total"], rel=1e-3)
  np.testing.assert_allclose(out["winograd"].image, out["direct"].image, atol=1e-3)


def test_conv_algorithm_from_the_cli_and_a_manifest(tmp_path, image_files, tiny_weights_file, capsys):
  import json
  from test_cli import nstjax_cli
  content, style = image_files
  common = ["--size", "32", "--iterations", "2", "--weights", tiny_weights_file, "-q"]
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "a.png", "--summary",
                             tmp_path / "a.json", "--conv-algorithm", "direct", *common], capsys)
  assert code == 0, err
  assert json.loads((tmp_path / "a.json").read_text())["conv_algorithm"] == "direct"
  manifest = tmp_path / "jobs.csv"
  manifest.write_text("content,style,conv_algorithm,name\n"
                      f"{content},{style},winograd,w\n{content},{style},direct,d\n")
  code, _, err = nstjax_cli(["batch", manifest, "-o", tmp_path / "out", *common], capsys)
  assert code == 0, err
  for name, algorithm in (("w", "winograd"), ("d", "direct")):
    assert json.loads((tmp_path / "out" / f"{name}.json").read_text())["conv_algorithm"] == algorithm
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "b.png", "--precision",
                             "bf16", "--conv-algorithm", "winograd", *common], capsys)
  assert code == 1 and "not bf16" in err and len(err.strip().splitlines()) == 1
