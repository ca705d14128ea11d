"""Each loss against a numpy reference computed here, through jax.jit."""

import jax
import numpy as np
import pytest

from nstjax import StyleConfig, losses, objective


def np_gram(f):
  x = f.reshape(-1, f.shape[-1]).astype(np.float64)
  return x.T @ x


@pytest.fixture
def feats():
  rng = np.random.default_rng(0)
  return (rng.random((6, 7, 5)).astype(np.float32) * 3,
          rng.random((6, 7, 5)).astype(np.float32) * 3)


def test_gram_is_normalised_by_positions(feats):
  f, _ = feats
  got = jax.jit(losses.gram)(f)
  np.testing.assert_allclose(got, np_gram(f) / 42, rtol=1e-6)


def test_content_loss_matches_eq1(feats):
  f, p = feats
  n, h, w = 5, 6, 7
  ref = np.sum((f.astype(np.float64) - p) ** 2) / (2 * n * h * w)
  np.testing.assert_allclose(jax.jit(losses.content_loss)(f, p), ref, rtol=1e-6)


def test_style_loss_matches_eq3_on_unnormalised_grams(feats):
  f, s = feats
  n, hw = 5, 42
  ref = np.sum((np_gram(f) - np_gram(s)) ** 2) / (4 * n**2 * hw**2)
  got = jax.jit(lambda a, b: losses.style_loss(losses.gram(a), losses.gram(b)))(f, s)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_style_loss_allows_other_style_size():
  rng = np.random.default_rng(1)
  f = rng.random((4, 4, 3)).astype(np.float32)
  tiled = np.tile(f, (2, 3, 1))    # same statistics, 6x the positions
  got = losses.style_loss(losses.gram(f), losses.gram(tiled))
  assert float(got) == pytest.approx(0.0, abs=1e-10)


def test_tv_loss_matches_squared_differences():
  x = np.random.default_rng(2).random((5, 6, 3)).astype(np.float32)
  ref = np.sum(np.diff(x.astype(np.float64), axis=0) ** 2) + np.sum(np.diff(x.astype(np.float64), axis=1) ** 2)
  np.testing.assert_allclose(jax.jit(losses.tv_loss)(x), ref, rtol=1e-6)


def test_objective_adds_weighted_terms(feats):
  f, p = feats
  cfg = StyleConfig(content_layers=("relu1_1",), style_layers=("relu1_1", "relu2_1"),
                    content_weight=2.0, style_weight=3.0, tv_weight=0.5,
                    content_layer_weights=(0.25,), style_layer_weights=(0.5, 0.5))
  weights = objective.make_weights(cfg, "torch")
  targets = {"content": {"relu1_1": p}, "style": {"relu1_1": losses.gram(p), "relu2_1": losses.gram(p[:3])},
             "tv": None}
  image = np.random.default_rng(3).random((8, 8, 3)).astype(np.float32)
  fns = {t.name: t.loss(cfg) for t in objective.active_terms(cfg)}
  feats_ = {"relu1_1": f, "relu2_1": f}
  terms = {k: jax.jit(fn)(feats_, image, targets[k], weights[k]["layers"]) for k, fn in fns.items()}
  c = 0.25 * losses.content_loss(f, p)
  s = 0.5 * losses.style_loss(losses.gram(f), losses.gram(p)) + 0.5 * losses.style_loss(losses.gram(f), losses.gram(p[:3]))
  np.testing.assert_allclose(terms["content"], c, rtol=1e-6)
  np.testing.assert_allclose(terms["style"], s, rtol=1e-6)
  np.testing.assert_allclose(objective.total(terms, weights), 2 * c + 3 * s + 0.5 * losses.tv_loss(image), rtol=1e-6)
