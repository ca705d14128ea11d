"""Loss primitives of Gatys et al. (the objective that adds them: :mod:`nstjax.objective`).

Feature maps are (h, w, C) arrays for one image. All reductions run in
float32 at the highest matmul precision (Gram matrices sum over up to 65k
positions; TPUs and Ampere+ GPUs would otherwise use bf16/TF32 passes).

References:
  Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
  Networks", CVPR 2016.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def _flat(f: Array) -> Array:
  return f.reshape(-1, f.shape[-1]).astype(jnp.float32)


def gram(f: Array) -> Array:
  """Gram matrix normalised by the number of positions.

  .. math:: G_{ij} = \\frac{1}{HW} \\sum_p F_{pi} F_{pj}

  Args:
    f: feature map (h, w, C).

  Returns:
    (C, C) float32. Dividing by HW (the paper's eq. 2 does not) lets the style
    image have another size than the generated one; :func:`style_loss`
    restores eq. 3's constant exactly when the sizes agree.
  """
  x = _flat(f)
  return jnp.matmul(x.T, x, precision=_HIGHEST) / x.shape[0]


def content_loss(f: Array, target: Array) -> Array:
  """Eq. 1: :math:`\\frac{1}{2 N H W} \\sum (F - P)^2`.

  Args:
    f: generated image's features (h, w, C).
    target: content image's features, same shape.
  """
  d = f.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.sum(d * d) / (2.0 * f.size)


def style_loss(g: Array, target: Array) -> Array:
  """Eq. 3 on HW-normalised Gram matrices.

  .. math:: \\frac{1}{4 N^2} \\sum_{ij} (G_{ij} - A_{ij})^2

  With ``g = gram(F)`` and ``target = gram(S)`` of equal-size maps this is
  exactly the paper's :math:`\\frac{1}{4 N^2 (HW)^2} \\sum (G - A)^2` on
  unnormalised Grams.

  Args:
    g: (C, C) Gram of the generated image (from :func:`gram`).
    target: (C, C) Gram of the style image.
  """
  d = g - target
  n = g.shape[-1]
  return jnp.sum(d * d) / (4.0 * n * n)


def tv_loss(image: Array) -> Array:
  """Squared total variation :math:`\\sum (x_{i+1,j} - x_{ij})^2 + (x_{i,j+1} - x_{ij})^2`.

  Args:
    image: (H, W, 3) in [0, 1] (the optimised image, before preprocessing).
  """
  x = image.astype(jnp.float32)
  dh = x[1:, :, :] - x[:-1, :, :]
  dw = x[:, 1:, :] - x[:, :-1, :]
  return jnp.sum(dh * dh) + jnp.sum(dw * dw)


# --- jcjohnson/neural-style's normalisations (neural_style.lua) ------------------
# His ContentLoss and StyleLoss are nn.MSECriterion (a mean) times the weight;
# his Gram is divided by C·H·W; his TVLoss defines only a gradient, that of
# 0.5·Σ over the first H-1 rows and W-1 columns of the squared differences with
# the right and lower neighbours, on the network's input (0..256 pixel values).


def jcjohnson_content_loss(f: Array, target: Array) -> Array:
  """``mean((F - P)²)``: his ContentLoss without its weight."""
  d = f.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(d * d)


def jcjohnson_style_loss(g: Array, target: Array) -> Array:
  """``mean((G - A)²)`` for his Grams (``FᵀF / (C H W)``): his StyleLoss without its weight."""
  d = g - target
  return jnp.mean(d * d)


def jcjohnson_tv_loss(image: Array, scale: float = 256.0) -> Array:
  r"""The function whose gradient his TVLoss returns, on ``image · scale``.

  .. math:: \frac{1}{2} \sum_{i<H-1, j<W-1} (x_{ij} - x_{i,j+1})^2 + (x_{ij} - x_{i+1,j})^2
  """
  x = image.astype(jnp.float32) * scale
  dx = x[:-1, :-1] - x[:-1, 1:]
  dy = x[:-1, :-1] - x[1:, :-1]
  return 0.5 * (jnp.sum(dx * dx) + jnp.sum(dy * dy))
