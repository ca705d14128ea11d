"""Colour control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style
Transfer", §5): keep the content's colours while the style's texture transfers.

Images are (H, W, 3) RGB arrays in [0, 1] (numpy; these run once per run, on
the host). Luminance and chroma are BT.601 YUV computed on the sRGB-encoded
values, as jcjohnson/neural-style's ``-original_colors`` (``image.rgb2yuv``)
does: Y = 0.299 R + 0.587 G + 0.114 B.

* :func:`transfer_chroma`: the output's luminance with the content's chroma
  (``post``, jcjohnson's ``-original_colors 1``).
* :func:`match_colour`: the style recoloured so that its colours' mean and
  covariance equal the content's (``match``, the paper's colour histogram
  matching and pastiche's ``--preserve-color``).
* :func:`match_luminance`: the style's luminance shifted and scaled to the
  content's mean and standard deviation (``luminance``, luminance-only
  transfer: the optimisation itself sees only luminance).
"""

from __future__ import annotations

import numpy as np

MODES = ("none", "post", "match", "luminance")

# BT.601 RGB -> YUV (analogue form), as torch7's image.rgb2yuv.
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                       [-0.14713, -0.28886, 0.436],
                       [0.615, -0.51499, -0.10001]], np.float64)
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
  """(H, W, 3) RGB -> (H, W, 3) YUV (float64)."""
  return np.asarray(rgb, np.float64) @ RGB_TO_YUV.T


def yuv_to_rgb(yuv: np.ndarray) -> np.ndarray:
  """Inverse of :func:`rgb_to_yuv` (float64, not clipped)."""
  return np.asarray(yuv, np.float64) @ YUV_TO_RGB.T


def luminance(rgb: np.ndarray) -> np.ndarray:
  """(H, W) BT.601 luma Y."""
  return rgb_to_yuv(rgb)[..., 0]


def gray(y: np.ndarray) -> np.ndarray:
  """(H, W) luminance -> (H, W, 3) float32 RGB with R = G = B = Y (VGG sees three channels)."""
  return np.repeat(np.clip(y, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)


def transfer_chroma(luma_from: np.ndarray, chroma_from: np.ndarray) -> np.ndarray:
  """RGB with ``luma_from``'s Y and ``chroma_from``'s U, V (same shape), clipped to [0, 1].

  >>> import numpy as np
  >>> a, b = np.full((2, 2, 3), 0.4), np.tile([0.5, 0.45, 0.4], (2, 2, 1))
  >>> yuv = rgb_to_yuv(transfer_chroma(a, b))
  >>> bool(np.allclose(yuv[..., 0], 0.4, atol=1e-6))
  True
  >>> bool(np.allclose(yuv[..., 1:], rgb_to_yuv(b)[..., 1:], atol=1e-6))
  True
  """
  yuv = rgb_to_yuv(chroma_from)
  yuv[..., 0] = luminance(luma_from)
  return np.clip(yuv_to_rgb(yuv), 0.0, 1.0).astype(np.float32)


def _sym_power(c: np.ndarray, p: float, eps: float) -> np.ndarray:
  """C^p of a symmetric positive semi-definite 3x3 matrix, through its eigendecomposition."""
  w, v = np.linalg.eigh(c)
  return (v * np.maximum(w, eps) ** p) @ v.T


def match_colour(style: np.ndarray, content: np.ndarray, eps: float = 1e-5) -> np.ndarray:
  """``style`` recoloured to ``content``'s colour mean and covariance (a linear map).

  .. math:: x' = \\Sigma_c^{1/2} \\Sigma_s^{-1/2} (x - \\mu_s) + \\mu_c

  Both square roots are the symmetric ones (from the eigendecomposition), not
  Cholesky factors. The result's covariance is exactly Σ_c either way; the
  symmetric roots do not depend on the order of the colour channels (a
  Cholesky factor does, so R-G-B and B-G-R images would be recoloured
  differently) and introduce no rotation of their own. Clipped to [0, 1].
  """
  s = np.asarray(style, np.float64).reshape(-1, 3)
  c = np.asarray(content, np.float64).reshape(-1, 3)
  mu_s, mu_c = s.mean(0), c.mean(0)
  cov_s = np.cov(s, rowvar=False, bias=True)
  cov_c = np.cov(c, rowvar=False, bias=True)
  a = _sym_power(cov_c, 0.5, eps) @ _sym_power(cov_s, -0.5, eps)
  out = (s - mu_s) @ a.T + mu_c
  return np.clip(out.reshape(np.shape(style)), 0.0, 1.0).astype(np.float32)


def match_luminance(style_y: np.ndarray, content_y: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """The style's luminance with the content's mean and standard deviation (the paper's eq. 11)."""
  s = np.asarray(style_y, np.float64)
  c = np.asarray(content_y, np.float64)
  return (s - s.mean()) * (c.std() / max(s.std(), eps)) + c.mean()
