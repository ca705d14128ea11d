"""Style representations: exactness at the limits, numpy references, gradients, bad input."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nstjax
from nstjax import NSTError, losses, style
from nstjax.style import StyleSpec

RNG = np.random.default_rng(0)
F = np.maximum(RNG.standard_normal((9, 7, 6)), 0).astype(np.float32)     # ReLU-like, C = 6
S = np.maximum(RNG.standard_normal((8, 8, 6)) + 0.3, 0).astype(np.float32)


def loss_of(kind, f=F, s=S, **kw):
  spec = StyleSpec(kind=kind, **kw).validate()
  rep = style.REPRESENTATIONS[kind]
  return float(jax.jit(rep.loss)(f, rep.target(jnp.asarray(s), spec, "relu1_1")))


def test_limits_reproduce_the_gram_loss():
  full = loss_of("gram")
  assert loss_of("pca", pca_k="6") == pytest.approx(full, rel=1e-4)
  assert loss_of("pca", pca_k="1.0") == pytest.approx(full, rel=1e-4)
  assert loss_of("svd", svd_threshold=0.0) == pytest.approx(full, rel=1e-6)
  assert loss_of("weighted", channel_weights="uniform") == pytest.approx(full, rel=1e-6)


def test_pca_matches_numpy_projection():
  a = losses.gram(S)
  w, v = np.linalg.eigh(np.asarray(a, np.float64))
  u = v[:, ::-1][:, :3]
  g = np.asarray(losses.gram(F), np.float64)
  ref = np.sum((u.T @ g @ u - u.T @ np.asarray(a, np.float64) @ u) ** 2) / (4 * 36)
  assert loss_of("pca", pca_k="3") == pytest.approx(ref, rel=1e-4)


def test_svd_target_is_gram_of_truncated_features():
  x = S.reshape(-1, 6).astype(np.float64)
  u, sig, vt = np.linalg.svd(x, full_matrices=False)
  sig_t = np.where(sig >= sig.mean(), sig, 0.0)
  xt = (u * sig_t) @ vt
  ref = xt.T @ xt / x.shape[0]
  got = style.svd_target(jnp.asarray(S), StyleSpec(kind="svd"), "l")
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
  energy = style.svd_target(jnp.asarray(S), StyleSpec(kind="svd", svd_energy=1.0), "l")
  np.testing.assert_allclose(energy, x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5)


def test_weighted_energy_weights_and_formula():
  t = style.weighted_target(jnp.asarray(S), StyleSpec(kind="weighted"), "l")
  assert float(jnp.mean(t["w"])) == pytest.approx(1.0, rel=1e-6)
  w = np.asarray(t["w"], np.float64)
  d = np.asarray(losses.gram(F), np.float64) - np.asarray(t["gram"], np.float64)
  ref = np.sum((w[:, None] * d) ** 2) / (4 * 36)
  assert loss_of("weighted") == pytest.approx(ref, rel=1e-5)


def test_weighted_from_file(tmp_path):
  path = tmp_path / "w.json"
  path.write_text(json.dumps({"relu1_1": [1, 2, 0, 1, 1, 1]}))
  assert loss_of("weighted", channel_weights=str(path)) > 0
  path.write_text(json.dumps({"relu1_1": [1, 2]}))
  with pytest.raises(NSTError, match="expected 6 values, found 2"):
    loss_of("weighted", channel_weights=str(path))


def test_choose_k():
  eig = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 0.0])
  assert style.choose_k("3", eig, "l") == 3
  assert style.choose_k("0.5", eig, "l") == 3
  assert style.choose_k("var=0.75", eig, "l") == 2     # 12/16
  assert style.choose_k("var=1.0", eig, "l") == 5
  with pytest.raises(NSTError, match="only 6 channels"):
    style.choose_k("7", eig, "relu1_1")


@pytest.mark.parametrize("kind,kw", [("gram", {}), ("pca", {"pca_k": "3"}), ("svd", {}),
                                     ("weighted", {}), ("pca-paper", {"pca_k": "3"})])
def test_gradients_match_finite_differences(kind, kw):
  spec = StyleSpec(kind=kind, **kw)
  rep = style.REPRESENTATIONS[kind]
  target = rep.target(jnp.asarray(S), spec, "l")
  f64 = F.astype(np.float64)
  if kind == "pca-paper":
    # The paper holds each step's singular vectors constant: differentiate that function.
    u = np.linalg.svd(np.asarray(style._centre(losses.gram(F)), np.float64).T)[0][:, :3]
    fn = lambda f: jnp.sum((style._centre(losses.gram(f)) @ u - target) ** 2) / (4 * 36)
  else:
    fn = lambda f: rep.loss(f, target)
  grad = np.asarray(jax.grad(lambda f: rep.loss(f, target))(jnp.asarray(F)), np.float64)
  assert np.all(np.isfinite(grad))
  eps = 1e-2
  for idx in [(0, 0, 0), (3, 4, 2), (8, 6, 5), (5, 1, 3)]:
    up, down = f64.copy(), f64.copy()
    up[idx] += eps
    down[idx] -= eps
    fd = (float(fn(jnp.asarray(up, jnp.float32))) - float(fn(jnp.asarray(down, jnp.float32)))) / (2 * eps)
    assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=1e-4 * (np.abs(grad).max() + 1e-12)), idx


@pytest.mark.parametrize("kw,match", [
    (dict(style_loss="pca", pca_k="0"), "invalid PCA k"),
    (dict(style_loss="pca", pca_k="-3"), "invalid PCA k"),
    (dict(style_loss="pca", pca_k="1.5"), "invalid PCA k"),
    (dict(style_loss="svd", svd_threshold=-1.0), "svd threshold"),
    (dict(style_loss="svd", svd_energy=1.5), "energy fraction"),
    (dict(style_loss="weighted", channel_weights="/no/such.json"), "does not exist"),
    (dict(style_loss="fancy"), "unknown style loss"),
])
def test_invalid_parameters(kw, match):
  with pytest.raises(NSTError, match=match):
    nstjax.StyleConfig(**kw).validate()


def test_k_larger_than_channels_in_a_run(tiny_net, content32, style32):
  cfg = nstjax.StyleConfig(size=None, iterations=1, style_loss="pca", pca_k="7")   # relu1_1 has 4
  with pytest.raises(NSTError, match="invalid PCA k 7 for relu1_1: it has only 4 channels"):
    nstjax.optimize(tiny_net, content32, style32, cfg)


@pytest.mark.parametrize("kind", ["pca", "pca-paper", "svd", "weighted"])
def test_each_variant_optimises(tiny_net, content32, style32, kind):
  cfg = nstjax.StyleConfig(size=None, iterations=10, style_loss=kind, style_weight=1e3, tv_weight=0.0)
  r = nstjax.optimize(tiny_net, content32, style32, cfg)
  assert r.summary["style_representation"]["style_loss"] == kind
  assert r.summary["losses"]["total"] < r.summary["initial_losses"]["total"]


def test_cli_style_loss_flags(tmp_path, image_files, tiny_weights_file, capsys):
  from test_cli import nstjax_cli
  content, style_img = image_files
  out, summary = tmp_path / "o.png", tmp_path / "s.json"
  code, _, err = nstjax_cli(["stylize", content, style_img, "-o", out, "--weights", tiny_weights_file,
                             "--style-loss", "pca", "--pca-k", "0.25", "--size", "32", "--iterations", "2",
                             "--summary", summary, "-q"], capsys)
  assert code == 0, err
  assert json.loads(summary.read_text())["style_representation"] == {"style_loss": "pca", "pca_k": "0.25"}
  code, _, err = nstjax_cli(["stylize", content, style_img, "-o", out, "--weights", tiny_weights_file,
                             "--style-loss", "pca", "--pca-k", "0", "--size", "32", "-q"], capsys)
  assert code == 1 and "invalid PCA k" in err and len(err.strip().splitlines()) == 1
