"""The objective: a registry of named loss terms, and their weighted sum.

.. math:: L(x) = \\sum_t w_t \\, L_t(x)

Each :class:`Term` says which layers of the generated image it reads, how its
target is computed once per run from the content and style images, how its
per-layer weights and its overall weight come from the config, and its loss.
Targets and weights are dicts keyed by term name, so they travel through the
compiled step as ordinary pytrees (traced arguments): a new style image or new
weights never recompile. The four terms of Gatys et al. and the attention
paper (``content``, ``style``, ``tv``, ``attention``) are registered here.

Adding a term: write its loss (a function of the features and the image) and
target, register a :class:`Term` with :func:`register`, declare its weight
field in :class:`nstjax.config.StyleConfig`, and test both (for ``--tile``:
its ``tiled`` form as sums over feature positions, tested against the
untiled loss in ``tests/test_tiling.py``). Nothing else needs to know about it: targets, weights, the compiled step, image-size checks, the
summary, batch manifests and the command line all follow the registry and the
config's declarations.

This module does not import :mod:`nstjax.config`; it reads a config's
attributes by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from nstjax import attention as nattention
from nstjax import losses, tiling, vgg
from nstjax import style as nstyle
from nstjax.errors import NSTError

Array = jax.Array

# Default α (content), β (style) and TV weights per kind of weights; the
# derivation is in nstjax.config's comment and the README ("Choosing the loss weights").
DEFAULT_LOSS_WEIGHTS = {   # (preprocessing, filter-mean normalised) -> {term: weight}
    ("caffe", False): {"content": 1.0, "style": 1e-3, "tv": 1e-1},
    ("caffe", True): {"content": 1.0, "style": 100.0, "tv": 2e-6},
    ("torch", False): {"content": 1.0, "style": 40.0, "tv": 6e-7},
    ("torch", True): {"content": 1.0, "style": 50.0, "tv": 1e-6},
}

# jcjohnson/neural-style's defaults (-content_weight 5 -style_weight 1e2
# -tv_weight 1e-3), meaningful with loss_form="jcjohnson" (his normalisations).
JCJOHNSON_LOSS_WEIGHTS = {"content": 5.0, "style": 100.0, "tv": 1e-3}


class TargetInputs:
  """What a term's target function may read: the images and their features.

  Attributes:
    content: (H, W, 3) content image.
    styles: the style images (one or more), each (H', W', 3).
    style_weights: their blend weights (positive, summing to 1).
    style: the first style image.

  Features are computed once per image for the union of layers every active
  term asks for (:func:`make_targets`), not once per term.
  """

  def __init__(self, net: vgg.VGGParams, content: Array, styles, pooling: str,
               layers: Mapping[str, tuple[str, ...]], style_weights=None,
               input_scale: float | None = None, precision: str = "tf32",
               tile: int | None = None):
    self.net, self.content, self.pooling, self.input_scale = net, content, pooling, input_scale
    self.precision, self.tile = precision, tile
    self.styles = tuple(styles)
    self.style = self.styles[0]
    self.style_weights = tuple(style_weights or (1.0 / len(self.styles),) * len(self.styles))
    self._features = {}
    self._grams = {}
    self._layers = layers

  def _image(self, which, index):
    return self.content if which == "content" else self.styles[index]

  def _kw(self, which, image):
    kw = dict(layers=self._layers[which], pooling=self.pooling, input_scale=self.input_scale,
              precision=self.precision)
    if self.tile is not None:
      kw["grid"] = tiling.make_grid(image.shape, self.tile, self.net.arch, self._layers[which])
    return kw

  def features(self, which: str, index: int = 0) -> dict[str, Array]:
    """``{layer: (h, w, C)}`` of the ``"content"`` image or of style image ``index``
    (with ``tile``: computed one window at a time, whole maps out)."""
    key = (which, index)
    if key not in self._features:
      image = self._image(which, index)
      kw = self._kw(which, image)
      fn = _features if self.tile is None else _assembled_features
      self._features[key] = fn(self.net, image, **kw)
    return self._features[key]

  def gram(self, which: str, index: int, layer: str) -> Array:
    """``losses.gram`` of ``layer``'s features (with ``tile``: summed window by window, no
    whole map formed)."""
    if self.tile is None:
      return losses.gram(self.features(which, index)[layer])
    key = (which, index)
    if key not in self._grams:
      image = self._image(which, index)
      self._grams[key] = _gram_sums(self.net, image, **self._kw(which, image))
    h, w = vgg.feature_shape(layer, *self._image(which, index).shape[:2])
    return self._grams[key][layer] / (h * w)

  def style_features(self) -> list[dict[str, Array]]:
    """Every style image's features."""
    return [self.features("style", i) for i in range(len(self.styles))]


_features = jax.jit(vgg.features, static_argnames=("layers", "pooling", "input_scale", "precision"))
_TILED_STATIC = ("grid", "layers", "pooling", "input_scale", "precision")
_assembled_features = jax.jit(tiling.assembled_features, static_argnames=_TILED_STATIC)
_gram_sums = jax.jit(tiling.gram_sums, static_argnames=_TILED_STATIC)

LossFn = Callable[[Mapping[str, Array], Array, Any, Mapping[str, Array]], Array]


@dataclasses.dataclass(frozen=True)
class Term:
  """One named loss term.

  Attributes:
    name: its key in targets, weights and reported losses.
    weight_field: the config field holding its weight (``None`` there takes
      ``DEFAULT_LOSS_WEIGHTS`` for the weights' kind).
    enabled: ``enabled(config)``; a disabled term is not built at all.
    layers: ``layers(config)``: layers of the generated image its loss reads.
    target_layers: ``target_layers(config)``: ``{"content": ..., "style": ...}``
      layers of the two images its target reads.
    layer_weights: ``layer_weights(config)``: ``{layer: w}`` (traced).
    target: ``target(inputs, config)``: any pytree, computed once per run.
    loss: ``loss(config)`` returns ``fn(features, image, target, layer_weights)``;
      ``config``'s static fields choose the function (compiled once per choice).
    tiled: for terms that read the network: ``tiled(config)`` returns
      ``(stats, finish)``, the same loss as sums over feature positions:
      ``stats(view, target)`` a tile's sums (:class:`nstjax.tiling.TileView`),
      ``finish(sums, target, layer_weights, grid)`` the term from the whole
      image's (``grid.layer_size(layer)``: the whole image's map sizes).
      ``None``: the term cannot run tiled (``--tile`` refuses it).
  """
  name: str
  weight_field: str
  enabled: Callable[[Any], bool]
  layers: Callable[[Any], tuple[str, ...]]
  target_layers: Callable[[Any], dict[str, tuple[str, ...]]]
  layer_weights: Callable[[Any], dict[str, float]]
  target: Callable[[TargetInputs, Any], Any]
  loss: Callable[[Any], LossFn]
  tiled: Callable[[Any], tuple[Callable, Callable]] | None = None


TERMS: dict[str, Term] = {}


def register(term: Term) -> Term:
  """Adds ``term`` to the objective (a name may be registered once)."""
  if term.name in TERMS:
    raise ValueError(f"loss term {term.name!r} is already registered")
  TERMS[term.name] = term
  return term


def layer_table(layers: tuple[str, ...], given, what: str, default: float | None = None
                ) -> dict[str, float]:
  """``{layer: w}``: ``given`` per layer, or ``default`` each (None: 1/L, the average, as
  Gatys et al.)."""
  if given is None:
    return {k: 1.0 / len(layers) if default is None else default for k in layers}
  if len(given) != len(layers):
    raise NSTError(f"{len(given)} {what} layer weights for {len(layers)} {what} layers")
  return dict(zip(layers, (float(w) for w in given)))


def _per_layer(fn):
  """``fn(features, target)`` per layer -> Σ_l w_l fn(F_l, T_l)."""
  def loss(feats, image, target, layer_weights):
    del image
    return sum(layer_weights[k] * fn(feats[k], t) for k, t in target.items())
  return loss


# --- the four terms -----------------------------------------------------------

def _layer_default(c):
  """Per-layer weights when none are given: 1/L (Gatys et al.), or 1 each (jcjohnson: each
  layer's loss module carries the full weight)."""
  return 1.0 if c.loss_form == "jcjohnson" else None


def _jcjohnson_gram_loss(f, target):
  """jcjohnson's style loss from features and our target Gram (÷HW): his Grams are ÷CHW."""
  c = f.shape[-1]
  return losses.jcjohnson_style_loss(losses.gram(f) / c, target / c)


register(Term(
    name="content", weight_field="content_weight",
    enabled=lambda c: True,
    layers=lambda c: c.content_layers,
    target_layers=lambda c: {"content": c.content_layers},
    layer_weights=lambda c: layer_table(c.content_layers, c.content_layer_weights, "content",
                                        _layer_default(c)),
    target=lambda inputs, c: {k: inputs.features("content")[k] for k in c.content_layers},
    loss=lambda c: _per_layer(losses.content_loss if c.loss_form == "gatys"
                              else losses.jcjohnson_content_loss),   # eq. 1
    tiled=lambda c: (_content_sums, _finish_content(c))))


def _content_sums(view, target):
  """Σ over the tile's core of (F - P)², per layer."""
  out = {}
  for k, p in target.items():
    d = view.feats[k].astype(jnp.float32) - view.crop(p, k)
    out[k] = jnp.sum(d * d * view.mask(k))
  return out


def _finish_content(c):
  """Eq. 1 (or jcjohnson's mean) from the whole image's Σ (F - P)²."""
  half = 2.0 if c.loss_form == "gatys" else 1.0

  def finish(sums, target, layer_weights, grid):
    del grid
    return sum(layer_weights[k] * s / (half * target[k].size) for k, s in sums.items())

  return finish


def _gram_of_sums(sums, k, grid):
  h, w = grid.layer_size(k)
  return sums[k] / (h * w)


def _finish_style(c):
  """Each representation's loss from the whole image's Gram (Σ f fᵀ / hw)."""
  if c.loss_form == "gatys":
    of_gram = nstyle.REPRESENTATIONS[c.style_loss].loss_of_gram
  else:
    def of_gram(g, t):
      n = g.shape[-1]
      return losses.jcjohnson_style_loss(g / n, t / n)

  def finish(sums, target, layer_weights, grid):
    return sum(layer_weights[k] * of_gram(_gram_of_sums(sums, k, grid), target[k])
               for k in sums)

  return finish


def _style_target(inputs, c):
  """Each representation's target from the style Gram; several styles blend their Grams.

  A = Σ_i w_i gram(F_i) (size-normalised Grams, jcjohnson's rule), and every
  representation is a function of A: ``pca`` and ``pca-paper`` take the
  blended Gram's principal subspace, ``svd`` truncates the blended Gram's
  spectrum, ``weighted`` takes its channel energies. One style: A = gram(F).
  """
  spec = c.style_spec()
  rep = nstyle.REPRESENTATIONS[spec.kind]
  out = {}
  n = len(inputs.styles)
  for k in c.style_layers:
    if n == 1:
      a = inputs.gram("style", 0, k)
    else:
      a = sum(w * inputs.gram("style", i, k) for i, w in enumerate(inputs.style_weights))
    out[k] = rep.from_gram(a, spec, k)
  return out


register(Term(
    name="style", weight_field="style_weight",
    enabled=lambda c: True,
    layers=lambda c: c.style_layers,
    target_layers=lambda c: {"style": c.style_layers},
    layer_weights=lambda c: layer_table(c.style_layers, c.style_layer_weights, "style",
                                        _layer_default(c)),
    target=_style_target,
    loss=lambda c: _per_layer(nstyle.REPRESENTATIONS[c.style_loss].loss if c.loss_form == "gatys"
                              else _jcjohnson_gram_loss),   # eq. 3 or a variant
    tiled=lambda c: (lambda view, target: {k: view.gram_sum(k) for k in target},
                     _finish_style(c))))


register(Term(
    name="tv", weight_field="tv_weight",
    enabled=lambda c: True,
    layers=lambda c: (),
    target_layers=lambda c: {},
    layer_weights=lambda c: {},
    target=lambda inputs, c: None,
    loss=lambda c: (lambda feats, image, target, layer_weights: losses.tv_loss(image))
    if c.loss_form == "gatys" else
    (lambda feats, image, target, layer_weights: losses.jcjohnson_tv_loss(
        image, 255.0 if c.input_scale is None else c.input_scale))))


def _attention_target(inputs, c):
  fc, styles = inputs.features("content"), inputs.style_features()
  out = {}
  for layer in c.attention_layers:
    nc = fc[layer].shape[0] * fc[layer].shape[1]
    ns = sum(fs[layer].shape[0] * fs[layer].shape[1] for fs in styles)
    if nc == 0 or ns == 0:
      raise NSTError(f"{layer}'s feature map is empty at this size; use a larger --size")
    channels = fc[layer].shape[-1]
    if c.attention_chunks is not None:
      q_chunk, k_chunk = c.attention_chunks
    else:
      q_chunk, k_chunk = nattention.choose_chunks(
          nc, ns, channels, channels, nattention.parse_bytes(c.attention_memory))
    fs = [f[layer] for f in styles]
    out[layer] = nattention.attention_target(fc[layer], fs[0] if len(fs) == 1 else fs,
                                             temperature=c.attention_temperature,
                                             q_chunk=q_chunk, k_chunk=k_chunk,
                                             style_weights=inputs.style_weights)
  return out


register(Term(
    name="attention", weight_field="attention_weight",
    enabled=lambda c: bool(c.attention_weight),   # γ = 0: not built, exactly Gatys
    layers=lambda c: c.attention_layers,
    target_layers=lambda c: {"content": c.attention_layers, "style": c.attention_layers},
    layer_weights=lambda c: layer_table(c.attention_layers, c.attention_layer_weights, "attention"),
    target=_attention_target,
    loss=lambda c: _per_layer(nattention.ATTENTION_LOSSES[c.attention_gram]),   # eq. 7
    tiled=lambda c: (lambda view, target: {k: (view.gram_sum(k), view.sum(k)) for k in target},
                     _finish_attention(c))))


def _finish_attention(c):
  """Eq. 7 from the whole image's Σ f fᵀ and Σ f: gram(F - F̄) = Σ f fᵀ/n - F̄ F̄ᵀ."""
  def finish(sums, target, layer_weights, grid):
    out = 0.0
    for k, (gram_sum, total) in sums.items():
      h, w = grid.layer_size(k)
      g = gram_sum / (h * w)
      if c.attention_gram == "centered":
        mean = total / (h * w)
        g = g - jnp.outer(mean, mean)
      out = out + layer_weights[k] * losses.style_loss(g, target[k])
    return out

  return finish


# --- the objective --------------------------------------------------------------

def precision(config) -> str:
  """The convolutions' precision policy ``config`` asks for (``auto``: ``tf32``, JAX's default)."""
  return "tf32" if config.precision == "auto" else config.precision


# Input channels from which Winograd F(4,3) beat XLA's convolution on a CPU (BENCHMARKS).
WINOGRAD_MIN_CHANNELS = 256


def winograd_convs(config, arch: str, widths=None, platform: str | None = None) -> tuple[str, ...]:
  """The convs ``config`` runs by Winograd F(4,3) on ``platform`` (default: JAX's default
  backend) for a network of ``widths`` (default: VGG's own).

  ``winograd``: blocks 3-5 after conv3_1. ``direct``: none. ``auto``: on a CPU
  (not with bf16 or spatial sharding), those of them with at least
  :data:`WINOGRAD_MIN_CHANNELS` input channels (an evaluation of the real VGG19
  takes ~0.7x the time, BENCHMARKS); none on GPUs and TPUs (their convolution
  libraries choose their own algorithms).
  """
  layers = network_layers(config)
  if config.conv_algorithm == "winograd":
    return vgg.winograd_convs(arch, layers, widths)
  platform = platform or jax.default_backend()
  if (config.conv_algorithm == "direct" or platform != "cpu" or precision(config) == "bf16"
      or config.shard == "spatial"):
    return ()
  return vgg.winograd_convs(arch, layers, widths, WINOGRAD_MIN_CHANNELS)


def network(net, config, platform: str | None = None):
  """``net`` prepared for ``config`` (:func:`nstjax.vgg.prepare`): only the convs the
  run touches, each with what its algorithm needs (:func:`winograd_convs`)."""
  return vgg.prepare(net, network_layers(config),
                     winograd=winograd_convs(config, net.arch, net.widths, platform))


def program_key(config) -> tuple:
  """What selects a compiled program: the config's static key and the registered terms."""
  return config.static_key(), tuple((name, id(t)) for name, t in TERMS.items())


def active_terms(config) -> tuple[Term, ...]:
  """The registered terms ``config`` enables, in registration order."""
  return tuple(t for t in TERMS.values() if t.enabled(config))


def feature_layers(config) -> tuple[str, ...]:
  """Every layer of the generated image the active terms read (network order irrelevant)."""
  return tuple(dict.fromkeys(k for t in active_terms(config) for k in t.layers(config)))


def target_layers(config) -> dict[str, tuple[str, ...]]:
  """``{"content": layers, "style": layers}`` the active terms' targets read."""
  out = {"content": [], "style": []}
  for t in active_terms(config):
    for which, layers in t.target_layers(config).items():
      out[which] += layers
  return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def network_layers(config) -> tuple[str, ...]:
  """Every layer the run touches (generated image and targets): what to keep of the net."""
  t = target_layers(config)
  return tuple(dict.fromkeys(feature_layers(config) + t["content"] + t["style"]))


def validate(config, arch: str) -> None:
  """Layer names and per-layer weights of every active term; NSTError naming the first bad one."""
  for t in active_terms(config):
    layers = t.layers(config)
    if layers:
      vgg.validate_layers(arch, layers)
    for which in t.target_layers(config).values():
      if which:
        vgg.validate_layers(arch, which)
    t.layer_weights(config)


def check_image_sizes(config, content, style) -> None:
  """Raises NSTError if an image is too small for a layer it must pass through.

  ``style``: one style image or a list of them.
  """
  needs = target_layers(config)
  styles = style if isinstance(style, (list, tuple)) else [style]
  names = ["style"] if len(styles) == 1 else [f"style {i + 1}" for i in range(len(styles))]
  for what, img, layers in [("content", content, feature_layers(config) + needs["content"])] + [
      (name, s, needs["style"]) for name, s in zip(names, styles)]:
    if not layers:
      continue
    need = vgg.min_image_size(layers)
    if min(img.shape[:2]) < need:
      deepest = max(layers, key=lambda name: vgg.min_image_size((name,)))
      raise NSTError(f"{what} image is {img.shape[1]}x{img.shape[0]} but {deepest} "
                     f"needs at least {need}x{need}; use a larger --size or shallower layers")


def loss_weights(config, preprocessing: str, normalized: bool = False) -> dict[str, float]:
  """``{term: weight}`` for the active terms, ``None`` filled from ``DEFAULT_LOSS_WEIGHTS``."""
  defaults = (JCJOHNSON_LOSS_WEIGHTS if config.loss_form == "jcjohnson"
              else DEFAULT_LOSS_WEIGHTS[(preprocessing, bool(normalized))])
  out = {}
  for t in active_terms(config):
    value = getattr(config, t.weight_field)
    out[t.name] = float(defaults[t.name] if value is None else value)
  return out


def make_weights(config, preprocessing: str, normalized: bool = False) -> dict[str, dict]:
  """``{term: {"weight": w, "layers": {layer: w}}}`` as float32 arrays (traced arguments)."""
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return {t.name: {"weight": f32(w), "layers": {k: f32(v) for k, v in t.layer_weights(config).items()}}
          for t, w in zip(active_terms(config),
                          loss_weights(config, preprocessing, normalized).values())}


def make_targets(net: vgg.VGGParams, content: Array, style, config,
                 style_weights=None) -> dict[str, Any]:
  """``{term: target}`` for the active terms: one forward pass per image, once per run.

  ``style`` is one style image or a list of them, blended with
  ``style_weights`` (positive, summing to 1; default equal).
  """
  styles = style if isinstance(style, (list, tuple)) else [style]
  inputs = TargetInputs(net, jnp.asarray(content, jnp.float32),
                        [jnp.asarray(s, jnp.float32) for s in styles], config.pooling,
                        target_layers(config), style_weights, config.input_scale,
                        precision(config), getattr(config, "tile", None))
  return {t.name: t.target(inputs, config) for t in active_terms(config)}


def make_terms_fn(config):
  """``terms(image, *, net, targets, weights) -> {term: value}``: each term, per-layer weighted.

  Depends only on ``config``'s static fields (build it from
  ``config.static_key()`` to share it between runs).
  """
  layers = feature_layers(config)
  pooling = config.pooling
  conv_precision = precision(config)
  if getattr(config, "tile", None) is not None:
    return _tiled_terms_fn(config, layers, pooling, conv_precision)
  fns = {t.name: t.loss(config) for t in active_terms(config)}

  def terms(image, *, net, targets, weights):
    feats = (vgg.features(net, image, layers=layers, pooling=pooling,
                          input_scale=config.input_scale, precision=conv_precision)
             if layers else {})
    return {name: jnp.asarray(fn(feats, image, targets[name], weights[name]["layers"]), jnp.float32)
            for name, fn in fns.items()}

  return terms


def _tiled_terms_fn(config, layers, pooling, conv_precision):
  """:func:`make_terms_fn` with ``config.tile``: the network terms tile by tile
  (:func:`nstjax.tiling.tiled_network_terms`, the untiled value and gradient), the
  others (TV) on the whole image."""
  network = [t for t in active_terms(config) if t.layers(config)]
  for t in network:
    if t.tiled is None:
      raise NSTError(f"the {t.name} term cannot run tiled; leave out --tile")
  forms = {t.name: t.tiled(config) for t in network}
  whole = {t.name: t.loss(config) for t in active_terms(config) if not t.layers(config)}

  def terms(image, *, net, targets, weights):
    grid = tiling.make_grid(image.shape, config.tile, net.arch, layers)
    fn = tiling.tiled_network_terms(
        grid, layers, {n: f[0] for n, f in forms.items()}, {n: f[1] for n, f in forms.items()},
        pooling=pooling, input_scale=config.input_scale, precision=conv_precision)
    out = fn(image, net, {n: targets[n] for n in forms},
             {n: weights[n]["layers"] for n in forms})
    for name, f in whole.items():
      out[name] = jnp.asarray(f({}, image, targets[name], weights[name]["layers"]), jnp.float32)
    return {t.name: out[t.name] for t in active_terms(config)}

  return terms


def total(terms: Mapping[str, Array], weights: Mapping[str, Mapping]) -> Array:
  """Eq. 8 generalised: Σ_t weight_t · term_t."""
  return sum(weights[name]["weight"] * value for name, value in terms.items())


def make_objective(config):
  """``objective(image, *, net, targets, weights) -> scalar`` (the total of :func:`make_terms_fn`)."""
  terms = make_terms_fn(config)

  def objective(image, *, net, targets, weights):
    return total(terms(image, net=net, targets=targets, weights=weights), weights)

  return objective
