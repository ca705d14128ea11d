"""The one configuration object and the single source of its defaults."""

from __future__ import annotations

import dataclasses
import math

from nstjax import vgg
from nstjax.errors import NSTError

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)   # the papers' "conv4_2": Caffe's blob after its in-place ReLU
OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "style")

# Default α (content), β (style) and TV weights per preprocessing, for eqs. 1, 3
# and 8 as written (Gram normalisation 1/(4 N² (HW)²), style layers weighted
# 1/L). Caffe-preprocessed inputs are 0..255, torch-preprocessed ones roughly
# unit-scale, so features (and eq. 3, which is quartic in them) differ by
# orders of magnitude between the two. Chosen by running the default job on
# examples/ (tubingen + starry_night, 512 px) and looking; see README,
# "Choosing the loss weights".
DEFAULT_LOSS_WEIGHTS = {   # (preprocessing, filter-mean normalised) -> α, β, TV
    ("caffe", False): {"content": 1.0, "style": 1e-3, "tv": 1e-1},
    ("torch", False): {"content": 1.0, "style": 1e7, "tv": 1e-1},
    ("caffe", True): {"content": 1.0, "style": 1e3, "tv": 1e-1},
    ("torch", True): {"content": 1.0, "style": 1e3, "tv": 1e-1},
}
ADAM_LR = 0.02   # in [0, 1] image units; crowsonkb/style-transfer-pytorch's default


@dataclasses.dataclass(frozen=True, kw_only=True)
class StyleConfig:
  """Everything that defines one stylisation run.

  Attributes:
    size: long side of the output in pixels (content resized, aspect kept);
      ``None`` keeps the content image's size.
    style_scale: style image's long side as a multiple of ``size`` (1.0: the
      same size, as the paper does).
    iterations: optimiser steps. An L-BFGS step may evaluate the loss several
      times (line search); the number of evaluations is reported separately.
    optimizer: ``"lbfgs"`` (optax L-BFGS with zoom line search) or ``"adam"``.
    lr: Adam's learning rate (default ``ADAM_LR``). For L-BFGS, ``None`` keeps
      the line search; a number gives a fixed step of that size, no line search.
    lbfgs_memory: L-BFGS history size (curvature pairs kept).
    content_weight, style_weight, tv_weight: α, β and the TV weight;
      ``None`` takes ``DEFAULT_LOSS_WEIGHTS`` for the weights' preprocessing.
    content_layers, style_layers: layer names (``vgg.layer_names``).
    content_layer_weights, style_layer_weights: per-layer weights; ``None``
      gives 1/L each (the average, as Gatys et al.).
    pooling: ``"avg"`` (Gatys et al.) or ``"max"``.
    init: starting image: ``"content"``, ``"noise"`` (uniform, seeded) or ``"style"``.
    seed: random seed for ``init="noise"``.
  """
  size: int | None = 512
  style_scale: float = 1.0
  iterations: int = 500
  optimizer: str = "lbfgs"
  lr: float | None = None
  lbfgs_memory: int = 100
  content_weight: float | None = None
  style_weight: float | None = None
  tv_weight: float | None = None
  content_layers: tuple[str, ...] = CONTENT_LAYERS
  style_layers: tuple[str, ...] = STYLE_LAYERS
  content_layer_weights: tuple[float, ...] | None = None
  style_layer_weights: tuple[float, ...] | None = None
  pooling: str = "avg"
  init: str = "content"
  seed: int = 0

  def loss_weights(self, preprocessing: str, normalized: bool = False) -> dict[str, float]:
    """α, β, TV weight with ``None`` filled from ``DEFAULT_LOSS_WEIGHTS``."""
    base = DEFAULT_LOSS_WEIGHTS[(preprocessing, bool(normalized))]
    return {"content": base["content"] if self.content_weight is None else self.content_weight,
            "style": base["style"] if self.style_weight is None else self.style_weight,
            "tv": base["tv"] if self.tv_weight is None else self.tv_weight}

  def layer_weights(self):
    """({content layer: w}, {style layer: w}) with 1/L defaults."""
    def table(layers, given, what):
      if given is None:
        return {k: 1.0 / len(layers) for k in layers}
      if len(given) != len(layers):
        raise NSTError(f"{len(given)} {what} layer weights for {len(layers)} {what} layers")
      return dict(zip(layers, (float(w) for w in given)))
    return (table(self.content_layers, self.content_layer_weights, "content"),
            table(self.style_layers, self.style_layer_weights, "style"))

  def validate(self, arch: str = "vgg19") -> "StyleConfig":
    """Raises NSTError naming the first nonsensical value; returns self."""
    def finite_nonneg(name, v):
      if v is not None and (not math.isfinite(v) or v < 0):
        raise NSTError(f"{name} must be a finite number >= 0, got {v}")
    if self.size is not None and not (16 <= self.size <= 16384):
      raise NSTError(f"size must be between 16 and 16384 pixels, got {self.size}")
    if not (math.isfinite(self.style_scale) and 0 < self.style_scale <= 8):
      raise NSTError(f"style_scale must be in (0, 8], got {self.style_scale}")
    if self.iterations < 0:
      raise NSTError(f"iterations must be >= 0, got {self.iterations}")
    if self.optimizer not in OPTIMIZERS:
      raise NSTError(f"unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}")
    if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
      raise NSTError(f"lr must be a finite number > 0, got {self.lr}")
    if self.lbfgs_memory < 1:
      raise NSTError(f"lbfgs_memory must be >= 1, got {self.lbfgs_memory}")
    for name in ("content_weight", "style_weight", "tv_weight"):
      finite_nonneg(name.replace("_", "-"), getattr(self, name))
    for w in (self.content_layer_weights or ()) + (self.style_layer_weights or ()):
      finite_nonneg("layer weight", w)
    if self.pooling not in vgg.POOLINGS:
      raise NSTError(f"unknown pooling {self.pooling!r}; expected one of {vgg.POOLINGS}")
    if self.init not in INITS:
      raise NSTError(f"unknown init {self.init!r}; expected one of {INITS}")
    vgg.validate_layers(arch, self.content_layers)
    vgg.validate_layers(arch, self.style_layers)
    self.layer_weights()
    return self


def paper_preset(**overrides) -> StyleConfig:
  """Gatys et al. as the attention paper runs it: α = 1, β = 1e7, L-BFGS, 500 steps, avg pooling."""
  return StyleConfig(**{"content_weight": 1.0, "style_weight": 1e7, "iterations": 500,
                        "optimizer": "lbfgs", "pooling": "avg", **overrides})
