"""The precision policy: fp32, tf32 (JAX's default) and bf16 convolutions; fp32 everywhere else."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nstjax
from nstjax import NSTError, optim, pipeline, vgg

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
