"""Reading, resizing and writing images.

Images are float32 numpy arrays (H, W, 3), RGB in [0, 1]. Readers accept what
a viewer would show: grayscale, palette, CMYK, 16-bit and alpha images are
converted to RGB (alpha composited over white), EXIF orientation is applied.
Writers are atomic: the output appears complete or not at all.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from nstjax.errors import NSTError
from nstjax.files import atomic_write, check_writable_file

# The largest image decoded: 8192 x 8192 (67 MP; a 64 MP phone photo fits). Decoding
# costs about 4 bytes a pixel and the float copy 12 more, so this bounds reading at
# about 1 GB whatever --size asks for; a 13000 x 13000 PNG of 164 KB would cost 5 GB.
MAX_PIXELS = 8192 * 8192
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_images(folder, what: str = "folder") -> list[Path]:
  """The image files in ``folder`` (by suffix), sorted; NSTError if none or not a folder."""
  folder = Path(folder)
  if not folder.exists():
    raise NSTError(f"{what} {folder} does not exist")
  if not folder.is_dir():
    raise NSTError(f"{what} {folder} is not a folder")
  files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise NSTError(f"{what} {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
  return files


def _to_rgb(im: Image.Image) -> np.ndarray:
  if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    a = np.asarray(im, dtype=np.float64)
    hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
    a = np.clip(a / hi, 0.0, 1.0)
    return np.repeat(a[..., None], 3, axis=-1).astype(np.float32)
  if im.mode == "F":
    a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    return np.repeat(a[..., None], 3, axis=-1)
  if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    im = Image.alpha_composite(background, rgba)
  if im.mode in ("RGB;16", "RGBA;16"):   # pragma: no cover - rare decoders
    im = im.convert("RGB")
  im = im.convert("RGB")
  return np.asarray(im, dtype=np.float32) / 255.0


def load_image(path) -> np.ndarray:
  """Reads an image file as (H, W, 3) float32 RGB in [0, 1], as a viewer shows it."""
  path = Path(path)
  if not path.exists():
    raise NSTError(f"image {path} does not exist")
  if path.is_dir():
    raise NSTError(f"image path {path} is a directory, not a file")
  if path.stat().st_size == 0:
    raise NSTError(f"image {path} is empty")
  try:
    with warnings.catch_warnings():
      # nstjax applies its own limit (MAX_PIXELS) before decoding.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      im = Image.open(path)
    with im:
      if im.width * im.height > MAX_PIXELS:
        raise NSTError(f"image {path} is {im.width}x{im.height} = {im.width * im.height} pixels, "
                       f"more than nstjax reads ({MAX_PIXELS}, 8192x8192); downscale it first")
      im.load()
      im = ImageOps.exif_transpose(im)
      rgb = _to_rgb(im)
  except UnidentifiedImageError:
    raise NSTError(f"{path} is not an image file PIL can read") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise NSTError(f"cannot read image {path}: {e}") from None
  if rgb.shape[0] == 0 or rgb.shape[1] == 0:
    raise NSTError(f"image {path} has no pixels")
  return rgb


def as_rgb(x, what: str = "image") -> np.ndarray:
  """Any accepted image as (H, W, 3) float32 RGB in [0, 1].

  Accepted: a file path (:func:`load_image`); a PIL image (converted as a
  viewer shows it); an (H, W, 3) ``uint8`` array (divided by 255) or
  ``uint16`` array (by 65535); an (H, W, 3) float array with values in
  [0, 1]. A float array outside [0, 1] (such as 0-255 floats) is refused:
  guessing its scale would give a silently wrong result.
  """
  if isinstance(x, (str, Path)):
    return load_image(x)
  if isinstance(x, Image.Image):
    return _to_rgb(ImageOps.exif_transpose(x))
  a = np.asarray(x)
  if a.ndim != 3 or a.shape[-1] != 3:
    raise NSTError(f"{what}: images must be (H, W, 3) RGB arrays, got shape {a.shape}")
  if a.shape[0] == 0 or a.shape[1] == 0:
    raise NSTError(f"{what} has no pixels")
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  if a.dtype == np.uint16:
    return a.astype(np.float32) / 65535.0
  if not np.issubdtype(a.dtype, np.floating):
    raise NSTError(f"{what}: expected uint8, uint16 or float values, got dtype {a.dtype}")
  a = a.astype(np.float32)
  if not np.all(np.isfinite(a)):
    raise NSTError(f"{what} has non-finite values")
  lo, hi = float(a.min()), float(a.max())
  if lo < 0.0 or hi > 1.0:
    raise NSTError(f"{what}: float images must hold values in [0, 1], found [{lo:g}, {hi:g}] "
                   f"(for 0-255 data pass a uint8 array or divide by 255)")
  return a


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes to exactly ``height`` x ``width`` (Lanczos, per channel in float)."""
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image.astype(np.float32)
  channels = [Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
      (width, height), Image.LANCZOS) for c in range(image.shape[-1])]
  return np.clip(np.stack([np.asarray(c) for c in channels], -1), 0.0, 1.0).astype(np.float32)


def long_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """``(h, w)`` with the longer side ``size`` pixels, the aspect ratio kept."""
  scale = size / max(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes so the longer side is ``size`` pixels, keeping the aspect ratio (Lanczos)."""
  return resize_to(image, *long_side_shape(*image.shape[:2], size))


def to_uint8(image) -> np.ndarray:
  return (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint16(image) -> np.ndarray:
  return (np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


BIT_DEPTHS = (8, 16)
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")


def check_bit_depth(path, bit_depth: int) -> None:
  """NSTError unless ``bit_depth`` is 8 or 16 and ``path``'s format can hold it."""
  path = Path(path)
  if bit_depth not in BIT_DEPTHS:
    raise NSTError(f"bit depth must be 8 or 16, got {bit_depth}")
  if bit_depth == 16 and path.suffix.lower() not in SIXTEEN_BIT_SUFFIXES:
    raise NSTError(f"output {path}: 16-bit images are written as .png or .tif, not {path.suffix}")


def check_writable(path, bit_depth: int = 8) -> Path:
  """Raises NSTError unless an image can be written at ``path`` (checked before any compute)."""
  path = Path(path)
  if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"):
    raise NSTError(f"output {path}: unsupported extension {path.suffix!r} "
                   f"(use .png, .jpg, .webp, .tif or .bmp)")
  check_bit_depth(path, bit_depth)
  return check_writable_file(path, "output")


@functools.lru_cache(maxsize=1)
def srgb_profile() -> bytes:
  """An sRGB ICC profile (Pillow's littleCMS), embedded so viewers need not guess."""
  from PIL import ImageCms
  return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png16(image16: np.ndarray, tmp: Path, text: str | None):
  """16-bit RGB PNG with pypng (Pillow writes no 16-bit RGB), plus iCCP and tEXt chunks."""
  import io
  import zlib

  import png
  h, w, _ = image16.shape
  buf = io.BytesIO()
  png.Writer(w, h, greyscale=False, bitdepth=16).write(buf, image16.reshape(h, w * 3))
  chunks = list(png.Reader(bytes=buf.getvalue()).chunks())
  extra = [(b"iCCP", b"sRGB\x00\x00" + zlib.compress(srgb_profile()))]
  if text is not None:
    extra += [(b"tEXt", b"Software\x00nstjax"),
              (b"tEXt", b"nstjax\x00" + text.encode("latin-1", "replace"))]
  chunks = chunks[:1] + extra + chunks[1:]   # after IHDR, before IDAT
  with open(tmp, "wb") as f:
    png.write_chunks(f, chunks)


def save_image(image, path, *, metadata: dict | None = None, bit_depth: int = 8) -> Path:
  """Writes ``image`` (H, W, 3) in [0, 1] atomically, with an sRGB profile.

  ``metadata`` goes into every format that can carry it: a PNG text chunk
  (``nstjax``), the TIFF image description, the JPEG comment. ``bit_depth=16``
  keeps the float image's precision (PNG through pypng, TIFF through tifffile:
  Pillow writes no 16-bit RGB).
  """
  path = Path(path)
  check_bit_depth(path, bit_depth)
  fmt = Image.registered_extensions().get(path.suffix.lower())
  text = json.dumps(metadata, sort_keys=True, default=str) if metadata else None
  icc = srgb_profile()
  try:
    def write(tmp):
      if bit_depth == 16 and fmt == "PNG":
        _png16(to_uint16(image), tmp, text)
      elif bit_depth == 16:
        import tifffile
        # InterColorProfile (34675) as an extra tag: older tifffiles have no iccprofile=.
        tifffile.imwrite(tmp, to_uint16(image), photometric="rgb", description=text,
                         software="nstjax", extratags=[(34675, 7, len(icc), icc, True)])
      else:
        pil = Image.fromarray(to_uint8(image), mode="RGB")
        kwargs = {"icc_profile": icc}
        if fmt == "PNG" and text:
          info = PngImagePlugin.PngInfo()
          info.add_text("Software", "nstjax")
          info.add_text("nstjax", text)
          kwargs["pnginfo"] = info
        elif fmt == "JPEG":
          kwargs.update(quality=95, subsampling=0)
          if text:
            kwargs["comment"] = text
        elif fmt == "TIFF" and text:
          kwargs["tiffinfo"] = {270: text, 305: "nstjax"}   # ImageDescription, Software
        pil.save(tmp, format=fmt, **kwargs)

    atomic_write(path, write, suffix=path.suffix)
  except OSError as e:
    raise NSTError(f"cannot write {path}: {e}") from None
  return path
