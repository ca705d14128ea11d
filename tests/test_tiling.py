"""Exact tiled optimisation: the tiled loss, gradient and targets are the untiled ones."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nstjax
from conftest import smooth_image
from nstjax import objective, tiling, vgg
from nstjax.config import StyleConfig
from test_cli import nstjax_cli

CONTENT = smooth_image(53, 70, 1)    # odd sizes: every pooling drops an edge somewhere
STYLE = smooth_image(41, 45, 2)
IMAGE = smooth_image(53, 70, 3) * 0.8 + 0.1
# Layers to relu3_1 (halo 12 px): quicker windows, for the tests of the terms' forms.
SHALLOW = dict(style_layers=("relu1_1", "relu2_1", "relu3_1"), content_layers=("relu3_1",))


def _loss_and_grad(net, config, image=IMAGE, style=STYLE):
  targets = objective.make_targets(net, CONTENT, style, config)
  weights = objective.make_weights(config, net.preprocessing)
  f = objective.make_objective(config)
  value, grad = jax.jit(jax.value_and_grad(
      lambda x: f(x, net=net, targets=targets, weights=weights)))(jnp.asarray(image))
  return float(value), np.asarray(grad), targets


def _assert_same(net, tile, rtol=2e-5, style=STYLE, targets=True, **kw):
  v0, g0, t0 = _loss_and_grad(net, StyleConfig(**kw), style=style)
  v1, g1, t1 = _loss_and_grad(net, StyleConfig(tile=tile, **kw), style=style)
  assert v1 == pytest.approx(v0, rel=rtol)
  assert np.max(np.abs(g1 - g0)) <= rtol * np.max(np.abs(g0)), np.max(np.abs(g1 - g0))
  for a, b in zip(jax.tree.leaves(t0), jax.tree.leaves(t1)) if targets else ():
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= rtol * np.max(np.abs(np.asarray(a)))


def test_receptive_field_of_vgg19_layers():
  assert tiling.receptive_field("vgg19", ("relu5_1",)) == (80, 16)   # 70 px, aligned to 16
  assert tiling.receptive_field("vgg19", ("conv4_2", "relu1_1")) == (40, 8)   # 38 -> 40
  assert tiling.receptive_field("vgg19", ("relu3_1",)) == (12, 4)   # 10 -> 12
  assert tiling.receptive_field("vgg19", ("pool2",)) == (8, 4)   # 6, then a pooling: align 4


def test_grid_rounds_the_tile_to_the_alignment_splits_evenly_and_covers_the_image():
  g = tiling.make_grid((53, 70, 3), 20, "vgg19", ("relu5_1",))
  assert (g.tile_h, g.tile_w, g.rows, g.cols, g.halo) == (32, 32, 2, 3, 80)
  g = tiling.make_grid((768, 1024, 3), 512, "vgg19", ("relu5_1",))
  assert (g.tile_h, g.tile_w, g.rows, g.cols) == (384, 512, 2, 2)   # split evenly
  g = tiling.make_grid((53, 70, 3), 1000, "vgg19", ("relu5_1",))
  assert (g.tile_h, g.tile_w, g.count) == (64, 80, 1)   # one tile: the image, aligned


@pytest.mark.parametrize("tile,pooling", [(16, "avg"), (48, "max")])
def test_tiled_gram_loss_gradient_and_targets_equal_untiled(tiny_net, tile, pooling):
  _assert_same(tiny_net, tile, pooling=pooling)


@pytest.mark.parametrize("style_loss", ["pca", "pca-paper", "svd", "weighted"])
def test_every_style_representation_tiles_exactly(tiny_net, style_loss):
  kw = {"pca": dict(pca_k="4"), "pca-paper": dict(pca_k="3"), "svd": dict(svd_threshold=0.5),
        "weighted": dict(channel_weights="energy")}[style_loss]
  # The representations' eigendecompositions amplify the Gram's float32 rounding, and
  # eigenvectors have arbitrary signs: the targets are compared through the loss.
  _assert_same(tiny_net, 16, rtol=2e-4, targets=False, style_loss=style_loss, **kw, **SHALLOW)


def test_attention_and_content_terms_tile_exactly(tiny_net):
  _assert_same(tiny_net, 16, attention_weight=2.0,
               style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1", "conv3_2"),
               attention_layers=("relu3_1",))


def test_blended_styles_and_jcjohnson_form_tile_exactly(tiny_net):
  _assert_same(tiny_net, 16, style=[STYLE, smooth_image(30, 36, 4)], **SHALLOW)
  _assert_same(tiny_net, 16, loss_form="jcjohnson", pooling="max", **SHALLOW)


def test_winograd_convolutions_tile_exactly(tiny_net):
  """Windows run blocks 3-5 by Winograd as the whole image does: the same loss and gradient."""
  net = objective.network(tiny_net, StyleConfig(conv_algorithm="winograd"))
  assert "winograd" in net.convs["conv4_2"]
  _assert_same(net, 16, conv_algorithm="winograd")


def test_a_halo_too_small_breaks_exactness(tiny_net, monkeypatch):
  """The halo is what makes it exact: half of it gives another gradient."""
  v0, g0, _ = _loss_and_grad(tiny_net, StyleConfig(**SHALLOW))
  real = tiling.receptive_field
  monkeypatch.setattr(tiling, "receptive_field",
                      lambda arch, layers: (real(arch, layers)[0] // 2, real(arch, layers)[1]))
  v1, g1, _ = _loss_and_grad(tiny_net, StyleConfig(tile=16, **SHALLOW))
  assert np.max(np.abs(g1 - g0)) > 1e-3 * np.max(np.abs(g0))


def test_tiled_run_follows_the_untiled_one(tiny_net):
  """A few steps of the whole solver: the same trajectory (to float32 rounding)."""
  runs = [nstjax.stylize_result(CONTENT, STYLE, net=tiny_net,
                                config=StyleConfig(iterations=2, init="content", tile=tile, size=70,
                                                   **SHALLOW))
          for tile in (None, 16)]
  assert runs[1].summary["losses"]["total"] == pytest.approx(runs[0].summary["losses"]["total"],
                                                            rel=1e-3)
  assert np.max(np.abs(runs[1].image - runs[0].image)) < 1e-3
  assert runs[1].summary["tile"]["grid"] == [4, 5] and runs[0].summary["tile"] is None


def test_tiled_step_holds_less_and_max_memory_chooses_the_tile():
  """XLA's own memory analysis of the compiled step: one window's activations, not the image's
  (a network wide enough for its activations to dominate; compiled only, never run). Under a
  budget the untiled step exceeds, --max-memory's plan tiles."""
  from nstjax import plan
  net = vgg.random_params(jax.random.key(0), "vgg19", widths=(16, 16, 32, 32, 32))
  big = smooth_image(256, 256, 5)
  config = StyleConfig(size=256, lbfgs_memory=5, **SHALLOW)
  untiled = plan.make_plan(net, big, STYLE, config)["plan"][0]
  budget = int(0.8 * untiled["estimated_peak_bytes"])
  fitted, fitted_plan, measures = plan.fit(net, big, STYLE, config, budget)
  tiled = fitted_plan["plan"][0]
  assert measures == ["tiling: tiles of 128 px (exact; more compute)"] and fitted.tile == 128
  assert tiled["estimated_peak_bytes"] <= budget
  assert tiled["temp_bytes"] < 0.7 * untiled["temp_bytes"]   # measured: 0.56 (jax 0.7: 0.59)
  assert tiled["tile"]["grid"] == [2, 2] and tiled["tile"]["halo"] == 12
  assert untiled["tile"] is None


def test_cli_and_batch_tile(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  out, summary = tmp_path / "o.png", tmp_path / "s.json"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--weights", tiny_weights_file,
                             "--size", "40", "--iterations", "2", "--tile", "16", "-q",
                             "--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1",
                             "--summary", summary], capsys)
  assert code == 0, err
  s = json.loads(summary.read_text())
  grid = tiling.make_grid((s["height"], s["width"]), 16, "vgg19", ("relu1_1", "relu2_1"))
  assert s["tile"]["grid"] == [grid.rows, grid.cols] and grid.count > 1 and s["tile"]["halo"] == 4
  manifest = tmp_path / "jobs.jsonl"
  manifest.write_text(json.dumps({"content": str(content), "style": str(style), "name": "t",
                                  "tile": 16, "style_layers": "relu1_1,relu2_1",
                                  "content_layers": "relu2_1"}) + "\n")
  code, _, err = nstjax_cli(["batch", manifest, "-o", tmp_path / "b", "--size", "40",
                             "--iterations", "2", "--weights", tiny_weights_file, "-q"], capsys)
  assert code == 0, err
  assert (tmp_path / "b" / "t.png").exists()
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--weights", tiny_weights_file,
                             "--tile", "8", "-q"], capsys)
  assert code == 1 and "tile must be between 16 and 16384" in err
