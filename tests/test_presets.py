"""The jcjohnson preset against his formulas (neural_style.lua), computed in numpy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_WIDTHS, smooth_image, tiny_convs
from nstjax import NSTError, StyleConfig, objective, pipeline, vgg
from nstjax.config import PRESETS, preset_settings
from nstjax.weights import format as wformat


@pytest.fixture(scope="module")
def caffe_net(tmp_path_factory):
  path = tmp_path_factory.mktemp("w") / "tiny_caffe.h5"
  wformat.write(path, "vgg19", tiny_convs(seed=3), preprocessing="caffe", source="test:tiny-caffe",
                source_sha256="0" * 64, widths=TINY_WIDTHS)
  return wformat.read(path)[0]


def _his_terms(feats_x, feats_c, feats_s, config):
  """neural_style.lua's losses in numpy float64, from the features (h, w, C):
  ContentLoss: strength · MSE(F, P); StyleLoss: strength · MSE(G, A) with
  G = FᵀF / (C·H·W) (GramMatrix, then :div(input:nElement())); the style
  target a weighted sum of the style images' Grams."""
  f64 = lambda a: np.asarray(a, np.float64)

  def gram(f):
    f = f64(f).reshape(-1, f.shape[-1])
    return f.T @ f / f.size

  content = sum(config.content_weight * np.mean((f64(feats_x[k]) - f64(feats_c[k])) ** 2)
                for k in config.content_layers)
  style = 0.0
  for k in config.style_layers:
    a = sum(w * gram(fs[k]) for w, fs in feats_s)
    style += config.style_weight * np.mean((gram(feats_x[k]) - a) ** 2)
  return content, style


def _his_tv_gradient(image, strength):
  """TVLoss:updateGradInput on his input (C, H, W: BGR x 256 - mean), as the gradient with
  respect to our RGB [0, 1] image (the chain rule's factor 256 and the channel flip)."""
  x = np.asarray(image, np.float64)[..., ::-1].transpose(2, 0, 1) * 256.0 - \
      np.asarray(vgg.CAFFE_BGR_MEAN)[:, None, None]
  grad = np.zeros_like(x)
  x_diff = x[:, :-1, :-1] - x[:, :-1, 1:]
  y_diff = x[:, :-1, :-1] - x[:, 1:, :-1]
  grad[:, :-1, :-1] += x_diff + y_diff
  grad[:, :-1, 1:] -= x_diff
  grad[:, 1:, :-1] -= y_diff
  grad *= strength
  return (grad * 256.0).transpose(1, 2, 0)[..., ::-1]


@pytest.mark.parametrize("blend", [None, (0.7, 0.3)])
def test_jcjohnson_objective_equals_his_formulas(caffe_net, blend):
  config = PRESETS["jcjohnson"]("caffe", style_blend_weights=blend, size=None)
  content, x = smooth_image(40, 48, 1), smooth_image(40, 48, 7)
  styles = [smooth_image(44, 36, 2)] + ([smooth_image(36, 40, 3)] if blend else [])
  prepared = pipeline.prepare(caffe_net, content, styles if blend else styles[0], config,
                              resize=False)
  terms = objective.make_terms_fn(config)(jnp.asarray(x), net=prepared.net,
                                          targets=prepared.targets, weights=prepared.weights)
  w = prepared.loss_weights
  assert w == {"content": 5.0, "style": 100.0, "tv": 1e-3}

  layers = config.content_layers + config.style_layers
  feats = lambda img: vgg.features(caffe_net, jnp.asarray(img), layers=layers, pooling="max",
                                   input_scale=256.0)
  # His input is the image x 256 (BGR, minus the mean): the network sees exactly that.
  np.testing.assert_allclose(
      np.asarray(vgg.preprocess(jnp.asarray(x), "caffe", 256.0)),
      np.asarray(x, np.float64)[..., ::-1] * 256 - np.asarray(vgg.CAFFE_BGR_MEAN), atol=1e-4)
  blend = blend or (1.0,)
  content_his, style_his = _his_terms(feats(x), feats(content),
                                      [(b, feats(s)) for b, s in zip(blend, styles)], config)
  assert float(w["content"] * terms["content"]) == pytest.approx(content_his, rel=1e-5)
  assert float(w["style"] * terms["style"]) == pytest.approx(style_his, rel=1e-5)

  tv_grad = jax.grad(lambda img: w["tv"] * objective.make_terms_fn(config)(
      img, net=prepared.net, targets=prepared.targets, weights=prepared.weights)["tv"])(
          jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(tv_grad), _his_tv_gradient(x, 1e-3),
                             rtol=1e-4, atol=1e-4 * np.abs(_his_tv_gradient(x, 1e-3)).max())


def test_jcjohnson_random_init_is_the_mean_pixel_plus_faint_noise(caffe_net):
  config = PRESETS["jcjohnson"]("caffe", size=None)
  prepared = pipeline.prepare(caffe_net, smooth_image(40, 48, 1), smooth_image(40, 48, 2), config,
                              resize=False)
  image = np.asarray(pipeline.initial_image(prepared))
  mean_rgb = np.asarray(vgg.CAFFE_BGR_MEAN[::-1]) / 256.0
  assert np.abs(image - mean_rgb).max() < 1e-4            # randn·0.001 / 256
  assert image.std(axis=(0, 1)).min() > 1e-7               # but not constant


def test_jcjohnson_preset_settings_and_refusals():
  s = preset_settings("jcjohnson")
  assert s["loss_form"] == "jcjohnson" and s["pooling"] == "max" and s["iterations"] == 1000
  assert (s["line_search"], s["lr"], s["pixel_scale"], s["input_scale"]) == ("none", 1.0, 256.0, 256.0)
  with pytest.raises(NSTError, match="Caffe"):
    PRESETS["jcjohnson"]("torch")
  with pytest.raises(NSTError, match="gram"):
    PRESETS["jcjohnson"]("caffe", style_loss="pca").validate()


def test_loss_form_jcjohnson_refused_for_torch_weights(tiny_net, content32, style32):
  cfg = StyleConfig(size=None, loss_form="jcjohnson")
  with pytest.raises(NSTError, match="Caffe"):
    pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)


def test_jcjohnson_preset_runs_and_reduces_the_loss(caffe_net):
  config = dataclasses.replace(PRESETS["jcjohnson"]("caffe", size=None), iterations=30)
  prepared = pipeline.prepare(caffe_net, smooth_image(40, 48, 1), smooth_image(40, 48, 2), config,
                              resize=False)
  r = pipeline.run(prepared)
  assert r.summary["evaluations"] == 30
  # His first step is tiny (L1 norm 1 in 0..256 units), then the steps grow.
  totals = [t["losses"]["total"] for t in r.trace]
  assert all(b < a for a, b in zip(totals, totals[1:]))
  assert r.summary["losses"]["total"] < 0.9 * r.summary["initial_losses"]["total"]
