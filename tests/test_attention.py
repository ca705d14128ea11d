"""Chunked attention against an unchunked reference; the attention loss; γ = 0 is Gatys."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import nstjax
from nstjax import NSTError, attention, objective


def rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("nc,ns,c,tq,tk", [(1000, 777, 16, 128, 96), (1000, 777, 16, 1000, 777),
                                           (37, 300, 8, 8, 64), (5, 3, 4, 16, 16)])
def test_chunked_equals_reference_on_odd_sizes(nc, ns, c, tq, tk):
  q, k, v = attention.mvn(rand((nc, c), 0)), attention.mvn(rand((ns, c), 1)), rand((ns, c), 2)
  got = attention.chunked_attention(q, k, v, q_chunk=tq, k_chunk=tk)
  ref = attention.attention_reference(q, k, v)
  assert got.shape == (nc, c)
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("c", [64, 128, 256, 512])
def test_real_channel_counts_with_large_logits(c):
  # ReLU-like features, MVN-normalised: logits reach hundreds at C = 512 (no 1/sqrt(C)).
  fc = jnp.maximum(rand((300, c), 3), 0)
  fs = jnp.maximum(rand((211, c), 4) + 0.2, 0)
  q, k = attention.mvn(fc), attention.mvn(fs)
  got = attention.chunked_attention(q, k, fs, q_chunk=64, k_chunk=48)
  ref = attention.attention_reference(q, k, fs)
  assert float(jnp.max(jnp.abs(q @ k.T))) > 20   # far from unit-scale softmax inputs
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_vmap_and_temperature():
  q, k, v = rand((3, 50, 8), 5), rand((3, 41, 8), 6), rand((3, 41, 6), 7)
  got = jax.vmap(lambda a, b, c: attention.chunked_attention(a, b, c, scale=0.5, q_chunk=16, k_chunk=16))(q, k, v)
  ref = jax.vmap(lambda a, b, c: attention.attention_reference(a, b, c, scale=0.5))(q, k, v)
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


def test_target_matches_numpy():
  fc, fs = jnp.maximum(rand((6, 7, 5), 8), 0), jnp.maximum(rand((5, 4, 5), 9), 0)
  got = attention.attention_target(fc, fs, q_chunk=8, k_chunk=8)

  def mvn(x):
    return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
  c, s = np.asarray(fc, np.float64).reshape(-1, 5), np.asarray(fs, np.float64).reshape(-1, 5)
  logits = mvn(c) @ mvn(s).T
  w = np.exp(logits - logits.max(1, keepdims=True))
  fa = (w / w.sum(1, keepdims=True)) @ s
  fa = fa - fa.mean(0)
  np.testing.assert_allclose(got, fa.T @ fa / fa.shape[0], rtol=1e-4, atol=1e-6)


def test_centered_reaches_zero_raw_has_a_floor():
  f = jnp.maximum(rand((6, 6, 4), 10), 0) + 1.0     # non-zero channel means
  centred = f.reshape(-1, 4) - f.reshape(-1, 4).mean(0, keepdims=True)
  sa = centred.T @ centred / 36
  assert float(attention.attention_loss_centered(f, sa)) == pytest.approx(0.0, abs=1e-10)
  assert float(attention.attention_loss_raw(f, sa)) > 1e-3


def test_choose_chunks_and_budget():
  tq, tk = attention.choose_chunks(65536, 65536, 128, 128, attention.parse_bytes("256MB"))
  assert attention.working_bytes(tq, tk, 128, 128) <= 256 * 2**20
  assert tq * tk >= 2**20
  assert attention.choose_chunks(10, 7, 4, 4, 10**9) == (16, 8)
  with pytest.raises(NSTError, match="too small for one 8x8 chunk"):
    attention.choose_chunks(100, 100, 512, 512, 1000)
  assert attention.parse_bytes("1GB") == 2**30 and attention.parse_bytes("512MiB") == 2**29
  with pytest.raises(NSTError):
    attention.parse_bytes("lots")


BASE = nstjax.StyleConfig(size=None, iterations=3, style_weight=1e3, tv_weight=0.0)


def test_gamma_zero_is_exactly_gatys(tiny_net, content32, style32):
  plain = nstjax.optimize(tiny_net, content32, style32, BASE).summary
  zero = nstjax.optimize(tiny_net, content32, style32,
                         dataclasses.replace(BASE, attention_weight=0.0, attention_layers=("relu3_1",))).summary
  assert plain["losses"] == zero["losses"] and plain["initial_losses"] == zero["initial_losses"]
  assert "attention" not in plain["losses"]


def test_gamma_adds_the_attention_term(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, attention_weight=50.0, attention_layers=("relu3_1", "relu4_1"),
                            attention_chunks=(16, 8))
  net = nstjax.vgg.prepare(tiny_net, objective.network_layers(cfg))
  r = nstjax.optimize(tiny_net, content32, style32, dataclasses.replace(cfg, iterations=8)).summary
  i = r["initial_losses"]
  assert i["total"] == pytest.approx(1.0 * i["content"] + 1e3 * i["style"] + 50 * i["attention"], rel=1e-5)
  assert r["losses"]["total"] < i["total"]
  # chunks do not change the target
  t1 = objective.make_targets(net, content32, style32, cfg)["attention"]
  t2 = objective.make_targets(net, content32, style32,
                              dataclasses.replace(cfg, attention_chunks=None))["attention"]
  for k in t1:
    np.testing.assert_allclose(t1[k], t2[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kw,match", [
    (dict(attention_weight=-1.0), "attention-weight must be"),
    (dict(attention_weight=1.0, attention_layers=("relu7_1",)), "unknown layer"),
    (dict(attention_gram="fancy"), "unknown attention gram"),
    (dict(attention_temperature=0.0), "temperature must be > 0"),
    (dict(attention_memory="-1GB"), "memory size"),
])
def test_bad_attention_config(kw, match):
  with pytest.raises(NSTError, match=match):
    dataclasses.replace(BASE, **kw).validate("vgg19")


def test_budget_too_small_in_a_run(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, attention_weight=1.0, attention_memory="100B")
  with pytest.raises(NSTError, match="too small for one 8x8 chunk"):
    nstjax.optimize(tiny_net, content32, style32, cfg)


def test_attention_preset_keeps_paper_balance():
  cfg = nstjax.config.attention_preset("caffe")
  assert cfg.attention_weight == pytest.approx(0.6 * cfg.style_weight)
  assert cfg.attention_layers == ("relu4_1",) and cfg.iterations == 500


def test_cli_attention_and_map(tmp_path, image_files, tiny_weights_file, capsys):
  from test_cli import nstjax_cli
  content, style_img = image_files
  out, summary = tmp_path / "o.png", tmp_path / "s.json"
  code, _, err = nstjax_cli(["stylize", content, style_img, "-o", out, "--weights", tiny_weights_file,
                             "--attention-weight", "10", "--attention-layers", "relu3_1",
                             "--size", "32", "--iterations", "2", "--summary", summary, "-q"], capsys)
  assert code == 0, err
  assert "attention" in json.loads(summary.read_text())["losses"]
  amap = tmp_path / "map.png"
  code, _, err = nstjax_cli(["attention-map", content, style_img, "--point", "10,12", "--layer",
                             "relu2_1,relu3_1", "-o", amap, "--size", "32", "--weights", tiny_weights_file], capsys)
  assert code == 0, err
  assert Image.open(amap).size[0] > 3 * 26
  code, _, err = nstjax_cli(["attention-map", content, style_img, "--point", "100,12", "-o", amap,
                             "--size", "32", "--weights", tiny_weights_file], capsys)
  assert code == 1 and "outside" in err
  code, _, err = nstjax_cli(["stylize", content, style_img, "-o", out, "--weights", tiny_weights_file,
                             "--attention-weight", "-2", "--size", "32", "-q"], capsys)
  assert code == 1 and "attention-weight must be" in err
