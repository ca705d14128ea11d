"""Odd but valid images are read as a viewer shows them; bad files give NSTError."""

import numpy as np
import pytest
from PIL import Image

from nstjax import NSTError
from nstjax.image import check_writable, load_image, resize_long_side, save_image


def test_grayscale_is_replicated(tmp_path):
  Image.fromarray(np.full((5, 7), 128, np.uint8), "L").save(tmp_path / "g.png")
  img = load_image(tmp_path / "g.png")
  assert img.shape == (5, 7, 3)
  np.testing.assert_allclose(img, 128 / 255, atol=1e-6)


def test_sixteen_bit_uses_full_range(tmp_path):
  a = np.full((4, 4), 65535, np.uint16)
  a[0, 0] = 0
  Image.fromarray(a).save(tmp_path / "d.png")
  img = load_image(tmp_path / "d.png")
  assert img[1, 1, 0] == pytest.approx(1.0) and img[0, 0, 0] == 0.0


def test_alpha_is_composited_over_white(tmp_path):
  a = np.zeros((3, 3, 4), np.uint8)
  a[..., 0] = 255
  a[0, 0, 3] = 255            # one opaque red pixel, the rest transparent
  Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
  img = load_image(tmp_path / "a.png")
  np.testing.assert_allclose(img[0, 0], [1, 0, 0])
  np.testing.assert_allclose(img[1, 1], [1, 1, 1])


def test_palette_and_cmyk(tmp_path):
  rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8))
  rgb.convert("P").save(tmp_path / "p.png")
  rgb.convert("CMYK").save(tmp_path / "c.jpg")
  assert load_image(tmp_path / "p.png").shape == (6, 6, 3)
  assert load_image(tmp_path / "c.jpg").shape == (6, 6, 3)


def test_exif_rotation_is_applied(tmp_path):
  a = np.zeros((4, 8, 3), np.uint8)
  a[:, :4] = 255               # left half white
  im = Image.fromarray(a)
  exif = im.getexif()
  exif[0x0112] = 6             # "rotate 90 CW to display"
  im.save(tmp_path / "r.jpg", exif=exif, quality=100)
  img = load_image(tmp_path / "r.jpg")
  assert img.shape == (8, 4, 3)
  assert img[:4].mean() > 0.9 and img[4:].mean() < 0.1   # white ends up on top


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_text("not an image"), "not an image file"),
])
def test_bad_files(tmp_path, make, match):
  path = tmp_path / "x.png"
  make(path)
  with pytest.raises(NSTError, match=match):
    load_image(path)


def test_truncated_file(tmp_path):
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
  data = (tmp_path / "t.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(NSTError, match="cannot read image"):
    load_image(tmp_path / "cut.png")


def test_resize_keeps_aspect():
  img = np.random.default_rng(0).random((30, 60, 3)).astype(np.float32)
  out = resize_long_side(img, 20)
  assert out.shape == (10, 20, 3) and out.min() >= 0 and out.max() <= 1


def test_save_is_atomic_and_keeps_metadata(tmp_path):
  img = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
  path = save_image(img, tmp_path / "o.png", metadata={"seed": 3})
  assert '"seed": 3' in Image.open(path).text["nstjax"]
  assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_output_mode_follows_umask(tmp_path):
  import os
  old = os.umask(0o022)
  try:
    path = save_image(np.zeros((2, 2, 3), np.float32), tmp_path / "m.png")
  finally:
    os.umask(old)
  assert (path.stat().st_mode & 0o777) == 0o644


def test_check_writable(tmp_path):
  with pytest.raises(NSTError, match="does not exist"):
    check_writable(tmp_path / "missing" / "o.png")
  with pytest.raises(NSTError, match="unsupported extension"):
    check_writable(tmp_path / "o.gifx")
  with pytest.raises(NSTError, match="is a directory"):
    (tmp_path / "d.png").mkdir()
    check_writable(tmp_path / "d.png")
