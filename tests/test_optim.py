"""The optimisation loop on a tiny random VGG."""

import dataclasses
import logging

import jax
import numpy as np
import pytest

import nstjax
from nstjax import NonFiniteLoss, NSTError, StyleConfig, optim

BASE = StyleConfig(size=None, iterations=15, style_weight=1e3, tv_weight=0.0, pooling="avg")


@pytest.mark.parametrize("optimizer,lr,iterations", [("lbfgs", None, 15), ("adam", 0.05, 40),
                                                      ("lbfgs", 0.5, 15)])
def test_optimizers_reduce_style_loss(tiny_net, content32, style32, optimizer, lr, iterations):
  cfg = dataclasses.replace(BASE, optimizer=optimizer, lr=lr, iterations=iterations)
  r = nstjax.optimize(tiny_net, content32, style32, cfg)
  s = r.summary
  assert s["iterations"] == iterations and s["status"] == "done"
  assert s["losses"]["total"] < 0.5 * s["initial_losses"]["total"]
  assert s["evaluations"] >= iterations
  assert r.image.shape == content32.shape and r.image.min() >= 0 and r.image.max() <= 1


@pytest.mark.parametrize("line_search", ["zoom", "backtracking", "none"])
def test_initial_state_is_strongly_typed(tiny_net, content32, line_search):
  cfg = dataclasses.replace(BASE, line_search=line_search)
  state = optim.init_state(cfg, content32, terms={"content": 0, "style": 0})
  weak = [x for x in jax.tree.leaves(state) if getattr(x, "weak_type", False)]
  assert weak == []


def test_new_style_image_or_weights_do_not_recompile(tiny_net, content32, style32, caplog):
  cfg = dataclasses.replace(BASE, iterations=2)
  nstjax.optimize(tiny_net, content32, style32, cfg)
  other_style = np.ascontiguousarray(style32[::-1, ::-1])
  other_content = np.ascontiguousarray(content32[::-1])
  cfg2 = dataclasses.replace(cfg, style_weight=5e3, content_weight=2.0, tv_weight=0.1, iterations=3)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    r = nstjax.optimize(tiny_net, other_content, other_style, cfg2)
  compiles = [m for m in caplog.messages if "Compiling" in m]
  assert compiles == []
  assert r.summary["compile_seconds"] == 0.0


def test_other_image_size_compiles_once(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, iterations=1)
  small = content32[:24, :24]
  first = nstjax.optimize(tiny_net, small, style32, cfg).summary["compile_seconds"]
  again = nstjax.optimize(tiny_net, small, style32, cfg).summary["compile_seconds"]
  assert first > 0 and again == 0


def test_non_finite_loss_keeps_last_finite_image(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, optimizer="adam", lr=1e30, iterations=10)
  with pytest.raises(NonFiniteLoss, match="finite") as info:
    nstjax.optimize(tiny_net, content32, style32, cfg)
  e = info.value
  assert e.image is not None and np.all(np.isfinite(e.image))
  assert e.iteration >= 0


def test_callback_progress_and_interrupt(tiny_net, content32, style32):
  seen = []

  def callback(p):
    seen.append(p)
    if p.iteration == 3:
      raise KeyboardInterrupt

  cfg = dataclasses.replace(BASE, iterations=10)
  r = nstjax.optimize(tiny_net, content32, style32, cfg, callback=callback, terms_every=2)
  assert r.status == "interrupted" and r.summary["iterations"] == 3
  assert [p.iteration for p in seen] == [1, 2, 3]
  # The default L-BFGS reports every term at every step, from its own evaluation.
  assert all(set(p.terms) == {"content", "style", "tv", "total"} for p in seen)
  assert seen[-1].evaluations >= 3
  # optax's zoom does not: the terms come every terms_every steps (one forward pass each).
  seen.clear()
  cfg = dataclasses.replace(cfg, line_search="zoom")
  nstjax.optimize(tiny_net, content32, style32, cfg, callback=callback, terms_every=2)
  assert seen[1].terms is not None and seen[0].terms is None
  assert set(seen[1].terms) == {"content", "style", "tv", "total"}


@pytest.mark.parametrize("init", ["content", "noise", "style"])
def test_init_modes(tiny_net, content32, style32, init):
  cfg = dataclasses.replace(BASE, init=init, iterations=0)
  r = nstjax.optimize(tiny_net, content32, style32, cfg)
  if init == "content":
    np.testing.assert_allclose(r.image, content32)
  assert r.image.shape == content32.shape
  if init == "noise":
    again = nstjax.optimize(tiny_net, content32, style32, cfg).image
    other = nstjax.optimize(tiny_net, content32, style32, dataclasses.replace(cfg, seed=1)).image
    np.testing.assert_array_equal(r.image, again)
    assert not np.allclose(r.image, other)


def test_image_too_small_for_layer(tiny_net, style32):
  tiny = np.zeros((12, 40, 3), np.float32)
  with pytest.raises(NSTError, match=r"content image is 40x12 but relu5_1 needs at least 16x16"):
    nstjax.optimize(tiny_net, tiny, style32, BASE)


@pytest.mark.parametrize("bad,match", [
    (dict(iterations=-1), "iterations must be >= 0"),
    (dict(style_weight=-1.0), "style-weight must be"),
    (dict(content_weight=float("nan")), "content-weight must be"),
    (dict(optimizer="sgd"), "unknown optimizer"),
    (dict(pooling="min"), "unknown pooling"),
    (dict(style_layers=("relu6_1",)), "unknown layer"),
    (dict(style_layer_weights=(1.0, 2.0)), "2 style layer weights for 5 style layers"),
    (dict(lbfgs_memory=0), "lbfgs_memory"),
    (dict(size=4), "size must be"),
])
def test_config_validation(bad, match):
  with pytest.raises(NSTError, match=match):
    dataclasses.replace(BASE, **bad).validate("vgg19")


def test_stylize_api_resizes_and_returns_array(tiny_net, image_files):
  content, style = image_files
  cfg = dataclasses.replace(BASE, size=24, iterations=2)
  out = nstjax.stylize(content, style, cfg, net=tiny_net)
  assert out.shape == (19, 24, 3) and out.dtype == np.float32


def test_paper_preset():
  cfg = nstjax.paper_preset(size=128)
  assert (cfg.content_weight, cfg.style_weight, cfg.iterations, cfg.pooling) == (1.0, 1e7, 500, "avg")
  assert cfg.size == 128
