"""The attention paper's Fig. 4: where one content position looks in the style image."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from nstjax import attention, vgg
from nstjax.errors import NSTError
from nstjax.image import resize_long_side


def attention_weights_map(net: vgg.VGGParams, content: np.ndarray, style: np.ndarray, *,
                          point: tuple[int, int], layer: str, temperature: float = 1.0,
                          pooling: str = "avg") -> np.ndarray:
  """Softmax weights of the content position under ``point`` over the style's positions.

  Args:
    content, style: (H, W, 3) RGB in [0, 1], at the working size.
    point: (x, y) pixel of ``content``.

  Returns:
    (h', w') weights at ``layer``'s resolution of the style image, summing to 1.
  """
  vgg.validate_layers(net.arch, (layer,))
  x, y = point
  h, w = content.shape[:2]
  if not (0 <= x < w and 0 <= y < h):
    raise NSTError(f"point {x},{y} is outside the {w}x{h} content image")
  need = vgg.min_image_size((layer,))
  for what, img in (("content", content), ("style", style)):
    if min(img.shape[:2]) < need:
      raise NSTError(f"{what} image is {img.shape[1]}x{img.shape[0]} but {layer} needs at least {need}x{need}")
  fc = vgg.features(net, jnp.asarray(content), layers=(layer,), pooling=pooling)[layer]
  fs = vgg.features(net, jnp.asarray(style), layers=(layer,), pooling=pooling)[layer]
  fy, fx = min(fc.shape[0] - 1, y * fc.shape[0] // h), min(fc.shape[1] - 1, x * fc.shape[1] // w)
  row = attention.attention_weights_row(fc, fs, fy * fc.shape[1] + fx, temperature=temperature)
  return np.asarray(row).reshape(fs.shape[0], fs.shape[1])


def _mark(img: Image.Image, xy, colour, radius=6):
  d = ImageDraw.Draw(img)
  x, y = xy
  d.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=2)
  d.line([x - radius - 3, y, x + radius + 3, y], fill=colour, width=1)
  d.line([x, y - radius - 3, x, y + radius + 3], fill=colour, width=1)


def attention_map_image(net, content, style, *, point, layers, size=512, temperature=1.0,
                        pooling="avg") -> np.ndarray:
  """Panels side by side: the content with ``point`` marked, then per layer the
  attention weights drawn over the style image with the highest-weight position marked.
  """
  content = resize_long_side(content, size)
  style = resize_long_side(style, size)
  panels = []
  c_img = Image.fromarray((content * 255).astype(np.uint8))
  _mark(c_img, point, (0, 255, 0))
  panels.append(c_img)
  sh, sw = style.shape[:2]
  for layer in layers:
    weights = attention_weights_map(net, content, style, point=point, layer=layer,
                                    temperature=temperature, pooling=pooling)
    heat = weights / max(float(weights.max()), 1e-30)
    heat_img = Image.fromarray((heat * 255).astype(np.uint8), mode="L").resize((sw, sh), Image.NEAREST)
    h = np.asarray(heat_img, np.float32)[..., None] / 255.0
    overlay = style * (0.35 + 0.15 * h) + h * np.array([1.0, 0.25, 0.0]) * 0.6
    panel = Image.fromarray((np.clip(overlay, 0, 1) * 255).astype(np.uint8))
    iy, ix = np.unravel_index(int(np.argmax(weights)), weights.shape)
    _mark(panel, ((ix + 0.5) * sw / weights.shape[1], (iy + 0.5) * sh / weights.shape[0]), (0, 255, 0))
    ImageDraw.Draw(panel).text((6, 6), f"{layer} max {weights.max():.3f}", fill=(255, 255, 255))
    panels.append(panel)
  height = max(p.height for p in panels)
  canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), (255, 255, 255))
  x = 0
  for p in panels:
    canvas.paste(p, (x, 0))
    x += p.width + 8
  return np.asarray(canvas, np.float32) / 255.0
