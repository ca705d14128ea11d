"""The classic tools' features on the one pipeline: start image from a file, colour control."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

import nstjax
from conftest import smooth_image
from nstjax import NSTError, colour, pipeline
from test_cli import nstjax_cli, recording_run

BASE = nstjax.StyleConfig(size=None, iterations=4, style_weight=1e3, tv_weight=0.0)


def _content_style():
  # A reddish content and a blue style, so colours are easy to tell apart.
  content = smooth_image(32, 40, 1) * np.array([1.0, 0.6, 0.4], np.float32)
  style = smooth_image(36, 32, 2) * np.array([0.3, 0.5, 1.0], np.float32)
  return content.astype(np.float32), style.astype(np.float32)


# --- start image ---------------------------------------------------------------------------

def test_init_from_the_content_file_starts_exactly_where_init_content_starts(tiny_net, image_files):
  content, style = image_files
  cfg = nstjax.StyleConfig(size=24, iterations=0)
  a = nstjax.stylize(content, style, cfg, net=tiny_net)
  b = nstjax.stylize(content, style, dataclasses.replace(cfg, init=str(content)), net=tiny_net)
  np.testing.assert_array_equal(a, b)
  c = nstjax.stylize(content, style, dataclasses.replace(cfg, init=str(style)), net=tiny_net)
  assert c.shape == a.shape and not np.array_equal(a, c)


def test_unknown_init_is_one_line(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "o.png", "--init", "nothing.png",
                             "--weights", tiny_weights_file, "--size", "32", "-q"], capsys)
  assert code == 1 and "init must be content, noise, style, mean or an image file" in err


def test_init_in_a_manifest_is_relative_to_it(tmp_path, image_files):
  from nstjax import jobs
  content, style = image_files
  (tmp_path / "j.jsonl").write_text(json.dumps({"content": str(content), "style": str(style),
                                                "init": "start.png"}) + "\n")
  assert jobs.read_manifest(tmp_path / "j.jsonl")[0]["overrides"]["init"] == str(tmp_path / "start.png")


# --- colour -----------------------------------------------------------------------------

def test_colour_transforms_against_their_definitions():
  rng = np.random.default_rng(0)
  x = rng.random((6, 5, 3))
  np.testing.assert_allclose(colour.yuv_to_rgb(colour.rgb_to_yuv(x)), x, atol=1e-12)
  np.testing.assert_allclose(colour.luminance(x), x @ np.array([0.299, 0.587, 0.114]), atol=1e-12)
  content, style = _content_style()
  matched = colour.match_colour(style, content)
  flat = matched.reshape(-1, 3).astype(np.float64)
  # Where nothing was clipped the map is exact: the content's mean and covariance.
  if 0 < matched.min() and matched.max() < 1:
    np.testing.assert_allclose(flat.mean(0), content.reshape(-1, 3).mean(0), atol=1e-5)
    np.testing.assert_allclose(np.cov(flat, rowvar=False, bias=True),
                               np.cov(content.reshape(-1, 3).astype(np.float64), rowvar=False, bias=True),
                               atol=1e-5)
  y = colour.match_luminance(colour.luminance(style), colour.luminance(content))
  assert y.mean() == pytest.approx(colour.luminance(content).mean(), abs=1e-9)
  assert y.std() == pytest.approx(colour.luminance(content).std(), rel=1e-9)


def _chroma(rgb):
  return colour.rgb_to_yuv(rgb)[..., 1:]


@pytest.mark.parametrize("mode", ["post", "luminance"])
def test_post_and_luminance_keep_the_contents_chroma(tiny_net, mode):
  content, style = _content_style()
  r = nstjax.optimize(tiny_net, content, style, dataclasses.replace(BASE, preserve_colors=mode))
  inside = np.all((r.image > 1e-3) & (r.image < 1 - 1e-3), axis=-1)   # clipping aside
  assert inside.mean() > 0.5
  np.testing.assert_allclose(_chroma(r.image)[inside], _chroma(content)[inside], atol=2e-6)
  plain = nstjax.optimize(tiny_net, content, style, BASE).image
  assert not np.allclose(_chroma(plain), _chroma(content), atol=1e-3)


def test_luminance_mode_optimises_luminance_only(tiny_net):
  content, style = _content_style()
  p = pipeline.prepare(tiny_net, content, style, dataclasses.replace(BASE, preserve_colors="luminance"),
                       resize=False)
  for image in (p.content, p.style):
    a = np.asarray(image)
    np.testing.assert_array_equal(a[..., 0], a[..., 1])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
  y_c = colour.luminance(content)
  assert float(np.asarray(p.style)[..., 0].mean()) == pytest.approx(y_c.mean(), abs=2e-3)


def test_match_moves_the_style_colour_towards_the_contents(tiny_net):
  content, style = _content_style()
  p = pipeline.prepare(tiny_net, content, style, dataclasses.replace(BASE, preserve_colors="match"),
                       resize=False)
  before = np.linalg.norm(style.reshape(-1, 3).mean(0) - content.reshape(-1, 3).mean(0))
  after = np.linalg.norm(np.asarray(p.style).reshape(-1, 3).mean(0) - content.reshape(-1, 3).mean(0))
  assert after < 0.1 * before
  r = nstjax.optimize(tiny_net, content, style, dataclasses.replace(BASE, preserve_colors="match"))
  plain = nstjax.optimize(tiny_net, content, style, BASE)
  mean = lambda im: im.reshape(-1, 3).mean(0)
  assert np.linalg.norm(mean(r.image) - mean(content)) < np.linalg.norm(mean(plain.image) - mean(content))


def test_cli_alias_and_batch_field(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  out = tmp_path / "o.png"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--original-colors", "--summary",
                             tmp_path / "s.json", "--weights", tiny_weights_file, "--size", "32",
                             "--iterations", "2", "-q"], capsys)
  assert code == 0, err
  assert json.loads((tmp_path / "s.json").read_text())["config"]["preserve_colors"] == "post"
  manifest = tmp_path / "jobs.csv"
  manifest.write_text(f"content,style,preserve_colors,name\n{content},{style},luminance,lum\n")
  code, _, err = nstjax_cli(["batch", manifest, "-o", tmp_path / "out", "--size", "32", "--iterations",
                             "2", "--weights", tiny_weights_file, "-q"], capsys)
  assert code == 0, err
  assert json.loads((tmp_path / "out" / "lum.json").read_text())["config"]["preserve_colors"] == "luminance"
  with pytest.raises(NSTError, match="unknown preserve colors"):
    nstjax.StyleConfig(preserve_colors="sepia").validate()


# --- several styles, blended ---------------------------------------------------------------

REPRESENTATIONS = [dict(style_loss="gram"), dict(style_loss="pca", pca_k="0.5"),
                   dict(style_loss="pca-paper", pca_k="2"), dict(style_loss="svd"),
                   dict(style_loss="weighted"),
                   dict(attention_weight=50.0, attention_layers=("relu3_1",), attention_chunks=(16, 8))]


@pytest.mark.parametrize("kw", REPRESENTATIONS, ids=lambda kw: kw.get("style_loss", "attention"))
def test_blend_weights_one_zero_equal_the_single_style_run_exactly(tiny_net, kw):
  content, style = _content_style()
  other = smooth_image(40, 36, 9)
  cfg = dataclasses.replace(BASE, iterations=3, **kw)
  alone = nstjax.optimize(tiny_net, content, style, cfg)
  for weights in ((1.0, 0.0), (2.0, 0.0)):
    blended = nstjax.optimize(tiny_net, content, [style, other],
                              dataclasses.replace(cfg, style_blend_weights=weights))
    np.testing.assert_array_equal(blended.image, alone.image)
    assert blended.summary["losses"] == alone.summary["losses"]
  both = nstjax.optimize(tiny_net, content, [style, other],
                         dataclasses.replace(cfg, style_blend_weights=(0.5, 0.5)))
  assert not np.array_equal(both.image, alone.image)


def test_gram_blend_is_the_weighted_sum_of_the_styles_grams(tiny_net):
  from nstjax import losses, vgg
  content, style = _content_style()
  other = smooth_image(40, 36, 9)
  cfg = dataclasses.replace(BASE, style_blend_weights=(0.7, 0.3))
  p = pipeline.prepare(tiny_net, content, [style, other], cfg, resize=False)
  assert p.style_weights == pytest.approx((0.7, 0.3))
  for layer in cfg.style_layers:
    fs = [np.asarray(vgg.features(p.net, s, layers=(layer,), pooling=cfg.pooling)[layer], np.float64)
          for s in (style, other)]
    want = sum(w * np.asarray(losses.gram(f)) for w, f in zip((0.7, 0.3), fs))
    np.testing.assert_allclose(p.targets["style"][layer], want, rtol=1e-5, atol=1e-7)


def test_attention_blend_is_a_prior_over_the_union_of_positions():
  from nstjax import attention
  rng = np.random.default_rng(0)
  fc, f1, f2 = (rng.standard_normal(s).astype(np.float32) for s in ((6, 5, 4), (5, 4, 4), (3, 6, 4)))
  one = attention.attention_target(fc, f1, q_chunk=8, k_chunk=8)
  # A weight of 0 removes a style (the pipeline drops it before, so that (1, 0) is exact).
  np.testing.assert_allclose(attention.attention_target(fc, [f1, f2], style_weights=(1.0, 0.0),
                                                        q_chunk=8, k_chunk=8), one, rtol=1e-5, atol=1e-6)
  # The definition, in numpy: softmax over both styles' positions with log-weight priors.
  def mvn(x):
    x = x.reshape(-1, 4).astype(np.float64)
    return (x - x.mean(0)) / np.sqrt(x.var(0) + attention.MVN_EPS)
  keys = np.concatenate([mvn(f1), mvn(f2)])
  values = np.concatenate([f1.reshape(-1, 4), f2.reshape(-1, 4)]).astype(np.float64)
  logits = mvn(fc) @ keys.T + np.log(np.r_[np.full(20, 0.25), np.full(18, 0.75)])
  p = np.exp(logits - logits.max(1, keepdims=True))
  fa = (p / p.sum(1, keepdims=True)) @ values
  fa -= fa.mean(0)
  want = fa.T @ fa / fa.shape[0]
  got = attention.attention_target(fc, [f1, f2], style_weights=(0.25, 0.75), q_chunk=8, k_chunk=8)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_several_styles_from_the_cli_a_folder_and_a_manifest(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  other = nstjax.image.save_image(smooth_image(30, 30, 5), tmp_path / "other.png")
  summary = tmp_path / "s.json"
  code, _, err = nstjax_cli(["stylize", content, style, other, "-o", tmp_path / "o.png", "--summary", summary,
                             "--style-blend-weights", "0.7,0.3", "--style-scale", "1,0.5",
                             "--weights", tiny_weights_file, "--size", "32", "--iterations", "2", "-q"], capsys)
  assert code == 0, err
  s = json.loads(summary.read_text())
  assert s["style_weights"] == pytest.approx([0.7, 0.3]) and len(s["style"]) == 2
  folder = tmp_path / "styles"
  folder.mkdir()
  for p in (style, other):
    (folder / p.name).write_bytes(p.read_bytes())
  code, _, err = nstjax_cli(["stylize", content, folder, "-o", tmp_path / "f.png", "--summary", summary,
                             "--weights", tiny_weights_file, "--size", "32", "--iterations", "2", "-q"], capsys)
  assert code == 0, err
  assert json.loads(summary.read_text())["style_weights"] == pytest.approx([0.5, 0.5])
  code, _, err = nstjax_cli(["stylize", content, style, other, "-o", tmp_path / "x.png",
                             "--style-blend-weights", "1,2,3", "--weights", tiny_weights_file,
                             "--size", "32", "-q"], capsys)
  assert code == 1 and "3 style blend weights for 2 style images" in err
  manifest = tmp_path / "jobs.jsonl"
  manifest.write_text(json.dumps({"content": str(content), "style": [str(style), str(other)],
                                  "style_blend_weights": [1, 3], "name": "two"}) + "\n")
  code, _, err = nstjax_cli(["batch", manifest, "-o", tmp_path / "out", "--size", "32", "--iterations", "2",
                             "--weights", tiny_weights_file, "-q"], capsys)
  assert code == 0, err
  assert json.loads((tmp_path / "out" / "two.json").read_text())["style_weights"] == pytest.approx([0.25, 0.75])


# --- 16-bit output and metadata --------------------------------------------------------------

def test_sixteen_bit_png_and_tiff_hold_sixteen_bits_and_the_record(tmp_path):
  import png
  import tifffile
  image = np.linspace(0, 1, 7 * 9 * 3, dtype=np.float32).reshape(7, 9, 3) ** 1.7
  want = np.round(np.clip(image.astype(np.float64), 0, 1) * 65535).astype(np.uint16)
  meta = {"config": {"size": 9}}
  p = nstjax.image.save_image(image, tmp_path / "a.png", metadata=meta, bit_depth=16)
  w, h, rows, info = png.Reader(filename=str(p)).read()
  got = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, 3)
  assert info["bitdepth"] == 16
  np.testing.assert_array_equal(got, want)
  assert np.any(got % 257 != 0)                      # not 8-bit values scaled up
  pil = Image.open(p)
  assert json.loads(pil.text["nstjax"]) == meta and pil.info.get("icc_profile")
  t = nstjax.image.save_image(image, tmp_path / "a.tif", metadata=meta, bit_depth=16)
  with tifffile.TiffFile(t) as f:
    np.testing.assert_array_equal(f.asarray(), want)
    page = f.pages[0]
    assert json.loads(page.description) == meta and page.tags.get("InterColorProfile") is not None
  with pytest.raises(NSTError, match="16-bit images are written as .png or .tif"):
    nstjax.image.save_image(image, tmp_path / "a.jpg", bit_depth=16)
  j = nstjax.image.save_image(image, tmp_path / "a.jpg", metadata=meta)
  jpg = Image.open(j)
  assert json.loads(jpg.info["comment"]) == meta and jpg.info.get("icc_profile")


def test_bit_depth_from_the_cli_and_batch(tmp_path, image_files, tiny_weights_file, capsys):
  import png
  content, style = image_files
  out = tmp_path / "o.png"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--bit-depth", "16",
                             "--weights", tiny_weights_file, "--size", "32", "--iterations", "2", "-q"], capsys)
  assert code == 0, err
  assert png.Reader(filename=str(out)).read()[3]["bitdepth"] == 16
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "o.jpg", "--bit-depth", "16",
                             "--weights", tiny_weights_file, "--size", "32", "-q"], capsys)
  assert code == 1 and "16-bit images are written as .png or .tif" in err
  code, _, err = nstjax_cli(["batch", "--content", content, "--style", style, "-o", tmp_path / "b",
                             "--bit-depth", "16", "--weights", tiny_weights_file, "--size", "32",
                             "--iterations", "2", "-q"], capsys)
  assert code == 0, err
  (png_out,) = (tmp_path / "b").glob("*.png")
  assert png.Reader(filename=str(png_out)).read()[3]["bitdepth"] == 16


# --- presets ---------------------------------------------------------------------------------

def test_presets_are_listed_and_applied_under_explicit_flags(tmp_path, image_files, tiny_weights_file,
                                                             capsys, monkeypatch):
  code, out, _ = nstjax_cli(["presets"], capsys)
  assert code == 0 and "gatys:" in out and "attention-paper:" in out and "--attention-weight 0.0006" in out
  seen = {}
  monkeypatch.setattr(nstjax.pipeline, "run", recording_run(seen))
  content, style = image_files
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "o.png", "--preset", "attention-paper",
                             "--iterations", "7", "--weights", tiny_weights_file, "--size", "32", "-q"], capsys)
  assert code == 0, err
  c = seen["config"]
  assert c.iterations == 7 and c.attention_weight == pytest.approx(0.6 * c.style_weight)
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "o.png", "--preset", "nope",
                             "--weights", tiny_weights_file, "--size", "32", "-q"], capsys)
  assert code == 1 and "unknown preset 'nope'" in err


# --- loss trace ------------------------------------------------------------------------------

def test_trace_and_plot_from_the_cli_and_batch(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  out, trace, plot = tmp_path / "o.png", tmp_path / "trace.json", tmp_path / "loss.png"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--trace", trace, "--plot", plot,
                             "--line-search", "backtracking", "--weights", tiny_weights_file,
                             "--size", "32", "--iterations", "5", "-q"], capsys)
  assert code == 0, err
  doc = json.loads(trace.read_text())
  records = doc["records"]
  assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]
  assert set(records[0]["losses"]) == {"content", "style", "tv", "total"}
  assert records[-1]["evaluations"] == 5 and records[-1]["seconds"] > 0
  assert set(doc["loss_weights"]) == {"content", "style", "tv"}
  picture = np.asarray(Image.open(plot))
  assert picture.ndim == 3 and picture.shape[1] > 400 and (picture < 200).any()
  manifest = tmp_path / "jobs.csv"
  manifest.write_text(f"content,style,name\n{content},{style},a\n")
  code, _, err = nstjax_cli(["batch", manifest, "-o", tmp_path / "out", "--size", "32", "--iterations",
                             "3", "--line-search", "none", "--traces", "--weights", tiny_weights_file,
                             "-q"], capsys)
  assert code == 0, err
  records = json.loads((tmp_path / "out" / "a.trace.json").read_text())["records"]
  assert [r["iteration"] for r in records] == [1, 2, 3] and "style" in records[0]["losses"]


def test_trace_of_the_zoom_line_search_has_the_total_every_step(tiny_net):
  content, style = _content_style()
  r = nstjax.optimize(tiny_net, content, style, dataclasses.replace(BASE, line_search="zoom"))
  assert [t["iteration"] for t in r.trace] == [1, 2, 3, 4]
  assert all(set(t["losses"]) == {"total"} for t in r.trace)   # optax's zoom reports no terms
  assert r.trace[0]["losses"]["total"] == pytest.approx(r.summary["initial_losses"]["total"], rel=1e-5)


def test_plot_draws_every_weighted_term(tiny_net):
  from nstjax.plot import plot_trace, series
  trace = [{"iteration": i, "losses": {"content": 1.0 / i, "style": 10.0 / i, "total": 11.0 / i}}
           for i in range(1, 6)]
  s = series(trace, {"content": 2.0, "style": 0.5})
  assert s["content"][0] == 2.0 and s["style"][0] == 5.0 and s["total"][0] == 11.0
  image = plot_trace(trace, {"content": 2.0, "style": 0.5})
  assert image.shape == (520, 900, 3) and image.min() < 0.5


# --- coarse-to-fine ---------------------------------------------------------------------------

def test_scale_schedule():
  from nstjax.pipeline import scale_schedule
  cfg = nstjax.StyleConfig(size=256, iterations=30, scales="auto")
  assert scale_schedule(cfg) == [(128, 60), (256, 30)]
  assert scale_schedule(dataclasses.replace(cfg, size=1024)) == [(128, 240), (256, 120), (512, 60),
                                                                  (1024, 30)]
  assert scale_schedule(dataclasses.replace(cfg, size=200)) == [(200, 30)]
  cfg = nstjax.StyleConfig(scales="64,96", scale_iterations="5,3")
  assert scale_schedule(cfg) == [(64, 5), (96, 3)]
  for bad, match in [(dict(scales="96,64"), "increasing"), (dict(scale_iterations="3"), "need --scales"),
                     (dict(scales="64,96", scale_iterations="1,2,3"), "3 scale iterations for 2")]:
    with pytest.raises(NSTError, match=match):
      nstjax.StyleConfig(**bad).validate()


def test_coarse_to_fine_starts_each_scale_from_the_last(tiny_net):
  content, style = (smooth_image(48, 64, 1), smooth_image(48, 48, 2))
  cfg = dataclasses.replace(BASE, size=None, scales="32,64", scale_iterations="6,3",
                            line_search="backtracking")
  seen = []
  r = pipeline.run_scales(tiny_net, content, style, cfg, callback=lambda p: seen.append(
      (p.iteration, p.iterations)))
  s = r.summary
  assert [(x["width"], x["height"], x["iterations"]) for x in s["scales"]] == [(32, 24, 6), (64, 48, 3)]
  assert s["iterations"] == 9 and s["evaluations"] == 9 and r.image.shape == (48, 64, 3)
  assert seen == [(i, 9) for i in range(1, 10)]
  assert [t["scale"] for t in r.trace] == [0] * 6 + [1] * 3
  # The second scale starts from the first's result, upsampled: its initial loss is far
  # below the content start's.
  fresh = pipeline.run(pipeline.prepare(tiny_net, content, style, dataclasses.replace(
      cfg, scales=None, scale_iterations=None, size=64, iterations=0)))
  assert s["scales"][1]["initial_losses"]["total"] < 0.7 * fresh.summary["initial_losses"]["total"]


def test_scales_from_the_cli_and_batch(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  out, summary = tmp_path / "o.png", tmp_path / "s.json"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--scales", "24,32",
                             "--scale-iterations", "3,2", "--summary", summary, "--weights",
                             tiny_weights_file, "-q"], capsys)
  assert code == 0, err
  s = json.loads(summary.read_text())
  assert [x["size"] for x in s["scales"]] == [24, 32] and s["iterations"] == 5
  assert max(Image.open(out).size) == 32
  manifest = tmp_path / "jobs.csv"
  manifest.write_text(f"content,style,name,scales,scale_iterations\n{content},{style},m,\"24,32\",\"2,1\"\n"
                      f"{content},{style},plain,,\n")
  code, _, err = nstjax_cli(["batch", manifest, "-o", tmp_path / "out", "--size", "32", "--iterations",
                             "2", "--weights", tiny_weights_file, "-q"], capsys)
  assert code == 0, err
  m = json.loads((tmp_path / "out" / "m.json").read_text())
  assert [x["iterations"] for x in m["scales"]] == [2, 1]
  assert (tmp_path / "out" / "plain.png").exists()
