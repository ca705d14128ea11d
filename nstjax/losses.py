"""Loss primitives of Gatys et al. and the objective that adds them.

Feature maps are (h, w, C) arrays for one image. All reductions run in
float32 at the highest matmul precision (Gram matrices sum over up to 65k
positions; TPUs and Ampere+ GPUs would otherwise use bf16/TF32 passes).

References:
  Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
  Networks", CVPR 2016. ``../shared/papers/attention-style-loss.md`` eqs. 1-3, 8.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

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


class Targets(NamedTuple):
  """What the generated image is compared with; arguments of the compiled step.

  Attributes:
    content: ``{layer: (h, w, C)}`` content-image features.
    style: ``{layer: target}``: style Gram matrices (:func:`gram`), or the
      chosen style representation's targets (:mod:`nstjax.style`).
  """
  content: Mapping[str, Array]
  style: Mapping[str, Array]
  attention: Mapping[str, Array] = {}   # {layer: SA (C, C)} when γ > 0 (nstjax.attention)


class Weights(NamedTuple):
  """Loss weights; traced values, so changing them does not recompile.

  Attributes:
    content: α of eq. 8.
    style: β of eq. 8.
    tv: total-variation weight.
    content_layers: ``{layer: w}`` per-layer content weights.
    style_layers: ``{layer: w}`` per-layer style weights (1/L by default).
    attention: γ of eq. 8.
    attention_layers: ``{layer: w}`` per-layer attention weights.
  """
  content: Array
  style: Array
  tv: Array
  content_layers: Mapping[str, Array]
  style_layers: Mapping[str, Array]
  attention: Array | float = 0.0
  attention_layers: Mapping[str, Array] = {}


def loss_terms(feats: Mapping[str, Array], image: Array, targets: Targets,
               weights: Weights, style_fn=None, attention_fn=None) -> dict[str, Array]:
  """The unweighted-by-α/β terms: per-layer-weighted content, style and TV.

  ``style_fn(features, target)`` is the per-layer style loss (default: eq. 3
  on Grams; see :mod:`nstjax.style` for the variants).
  """
  if style_fn is None:
    style_fn = lambda f, t: style_loss(gram(f), t)
  content = sum(weights.content_layers[k] * content_loss(feats[k], t)
                for k, t in targets.content.items())
  style = sum(weights.style_layers[k] * style_fn(feats[k], t)
              for k, t in targets.style.items())
  out = {"content": jnp.asarray(content, jnp.float32),
         "style": jnp.asarray(style, jnp.float32),
         "tv": tv_loss(image)}
  if targets.attention:   # eq. 7 terms, present only when γ > 0
    out["attention"] = jnp.asarray(
        sum(weights.attention_layers[k] * attention_fn(feats[k], t)
            for k, t in targets.attention.items()), jnp.float32)
  return out


def total(terms: Mapping[str, Array], weights: Weights) -> Array:
  """Eq. 8: α·content + β·style + γ·attention + tv_weight·TV (γ term only if present)."""
  out = (weights.content * terms["content"] + weights.style * terms["style"]
         + weights.tv * terms["tv"])
  if "attention" in terms:
    out = out + weights.attention * terms["attention"]
  return out
