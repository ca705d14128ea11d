"""Gatys' normalised VGG: rescale weights so every filter's mean activation is 1.

Gatys et al. (2015, 2016) rescale VGG "such that the mean activation of each
convolutional filter over images and positions is equal to one". VGG has only
ReLUs (positively homogeneous) and pooling (which commutes with positive
per-channel scaling) between convolutions, so dividing layer l's kernel and bias
by its filters' mean activations :math:`m_l` and multiplying layer l+1's
input-channel slices by the same :math:`m_l` leaves layer l+1's pre-activation
unchanged. Hence, with :math:`m_0 = 1` for the image channels,

.. math::
   W'_l[h, w, i, o] = W_l[h, w, i, o] \\, m_{l-1}[i] / m_l[o], \\qquad
   b'_l[o] = b_l[o] / m_l[o]

and every normalised layer's output equals the original output divided per
channel by :math:`m_l`, which is measured in one forward pass of the original
network. Filters that never fire on the calibration set keep factor 1.

References:
  Gatys, Ecker & Bethge, "Texture Synthesis Using Convolutional Neural
  Networks", NeurIPS 2015, and "Image Style Transfer Using Convolutional Neural
  Networks", CVPR 2016.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import vgg
from nstjax.errors import NSTError

DEAD = 1e-12   # a filter whose mean activation is at most this never fires


def filter_means(params: vgg.VGGParams, images: Sequence[np.ndarray], *,
                 pooling: str = "max") -> dict[str, np.ndarray]:
  """Mean post-ReLU activation of every filter over all positions of all images.

  Args:
    params: the (unnormalised) network.
    images: (H, W, 3) RGB arrays in [0, 1]; each must be large enough for the
      deepest conv (16 px for VGG's block 5).
    pooling: pooling used between blocks while measuring.

  Returns:
    ``{"conv1_1": (C,), ...}`` float64 means, weighted by positions.
  """
  if not images:
    raise NSTError("no calibration images")
  names = [n for n, _, _ in vgg.conv_layers(params.arch, params.widths)]
  relus = tuple("relu" + n[4:] for n in names)
  need = vgg.min_image_size(relus)
  fn = jax.jit(lambda p, x: {k: (v.sum(axis=(0, 1)), v.shape[0] * v.shape[1])
                             for k, v in vgg.features(p, x, layers=relus, pooling=pooling).items()})
  sums = {n: 0.0 for n in names}
  counts = {n: 0 for n in names}
  for i, image in enumerate(images):
    if min(image.shape[:2]) < need:
      raise NSTError(f"calibration image {i} is {image.shape[1]}x{image.shape[0]}; "
                     f"conv5_1 needs at least {need}x{need}")
    out = fn(params, jnp.asarray(image, jnp.float32))
    for n, relu in zip(names, relus):
      total, count = out[relu]
      sums[n] = sums[n] + np.asarray(total, np.float64)
      counts[n] += int(count)
  return {n: sums[n] / counts[n] for n in names}


def normalize(params: vgg.VGGParams, means: dict[str, np.ndarray]) -> vgg.VGGParams:
  """Rescales ``params`` by per-filter ``means`` (:func:`filter_means`); pure.

  Returns a network whose every layer's activations equal the original ones
  divided per channel by ``factors(means)[layer]``.
  """
  if params.normalized:
    raise NSTError("these weights are already normalised; normalising again would compound")
  factors = compute_factors(means)
  convs, previous = {}, None
  for name, _, _ in vgg.conv_layers(params.arch, params.widths):
    k, b = params.convs[name]["kernel"], params.convs[name]["bias"]
    f = jnp.asarray(factors[name], jnp.float32)
    if previous is not None:
      k = k * previous.reshape(1, 1, -1, 1)
    convs[name] = {"kernel": k / f.reshape(1, 1, 1, -1), "bias": b / f}
    previous = f
  return dataclasses.replace(params, convs=convs, normalized=True)


def compute_factors(means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-filter factors: the mean activation, or 1 for filters that never fire."""
  return {n: np.where(m > DEAD, m, 1.0).astype(np.float32) for n, m in means.items()}


def summary(means: dict[str, np.ndarray]) -> dict:
  """JSON-ready per-layer factor ranges and dead-filter counts."""
  out = {}
  for n, m in means.items():
    live = m[m > DEAD]
    out[n] = {"min": float(live.min()) if live.size else None,
              "max": float(live.max()) if live.size else None,
              "dead": int((m <= DEAD).sum())}
  return out
