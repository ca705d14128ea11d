"""Style representations: the Gram matrix and the cheaper variants of
Guo & Yuan, "Optimizing the Style Loss of Art Style Transfer".

Each representation is a pair of functions: a *target* computed once from the
style image's features (outside the optimisation loop), and a *loss* between
the generated image's features and that target, computed every step. All use
HW-normalised Grams (:func:`nstjax.losses.gram`) and eq. 3's 1/(4 C²) constant,
so every variant is on the Gram loss's scale.

Exactness: ``pca`` with k = C, ``svd`` with threshold 0 and ``weighted`` with
uniform weights reproduce the Gram loss exactly (up to float32 rounding).
``pca-paper`` does not: it compares two differently-based projections (see
:func:`pca_paper_loss`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import losses
from nstjax.errors import NSTError

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
VARIANTS = ("gram", "pca", "pca-paper", "svd", "weighted")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StyleSpec:
  """Which style representation and its parameters (hashable: static under jit).

  Attributes:
    kind: one of ``VARIANTS``.
    pca_k: ``pca``/``pca-paper`` components per layer: ``"64"`` (a count),
      ``"0.25"`` (a fraction of C, the default ``"0.5"`` is the paper's C/2) or
      ``"var=0.95"`` (the fewest components explaining that share of the
      style Gram's variance).
    svd_threshold: ``svd``: drop the style features' singular values below this
      multiple of their mean (1.0: below the mean, as the paper; 0: keep all).
    svd_energy: ``svd``: if set, instead keep the fewest top singular values
      holding this fraction of the energy (sum of squares).
    channel_weights: ``weighted``: ``"energy"`` (each channel's share of the
      style features' energy, mean 1), ``"uniform"`` (exactly the Gram) or a
      JSON file ``{"relu1_1": [w, ...], ...}``.
  """
  kind: str = "gram"
  pca_k: str = "0.5"
  svd_threshold: float = 1.0
  svd_energy: float | None = None
  channel_weights: str = "energy"

  def validate(self) -> "StyleSpec":
    if self.kind not in VARIANTS:
      raise NSTError(f"unknown style loss {self.kind!r}; expected one of {', '.join(VARIANTS)}")
    if self.kind in ("pca", "pca-paper"):
      parse_k(self.pca_k)
    if not (math.isfinite(self.svd_threshold) and self.svd_threshold >= 0):
      raise NSTError(f"svd threshold must be a finite number >= 0, got {self.svd_threshold}")
    if self.svd_energy is not None and not (0 < self.svd_energy <= 1):
      raise NSTError(f"svd energy fraction must be in (0, 1], got {self.svd_energy}")
    if self.kind == "weighted" and self.channel_weights not in ("energy", "uniform"):
      if not Path(self.channel_weights).is_file():
        raise NSTError(f"channel weights file {self.channel_weights} does not exist")
    return self

  def describe(self) -> dict:
    out = {"style_loss": self.kind}
    if self.kind in ("pca", "pca-paper"):
      out["pca_k"] = self.pca_k
    if self.kind == "svd":
      out.update(svd_threshold=self.svd_threshold, svd_energy=self.svd_energy)
    if self.kind == "weighted":
      out["channel_weights"] = self.channel_weights
    return out


def parse_k(spec: str):
  """``"64"`` -> ("count", 64); ``"0.5"`` -> ("fraction", 0.5); ``"var=0.9"`` -> ("variance", 0.9)."""
  text = str(spec).strip()
  try:
    if text.startswith("var="):
      v = float(text[4:])
      if not 0 < v <= 1:
        raise ValueError
      return "variance", v
    if "." in text or "e" in text.lower():
      v = float(text)
      if not 0 < v <= 1:
        raise ValueError
      return "fraction", v
    n = int(text)
    if n < 1:
      raise ValueError
    return "count", n
  except ValueError:
    raise NSTError(f"invalid PCA k {spec!r}: use a count >= 1 (64), a fraction of C in (0, 1] "
                   f"(0.25) or an explained-variance fraction (var=0.95)") from None


def choose_k(spec: str, eigenvalues: np.ndarray, layer: str) -> int:
  """The number of components for one layer (``eigenvalues`` descending, length C)."""
  kind, v = parse_k(spec)
  c = len(eigenvalues)
  if kind == "count":
    if v > c:
      raise NSTError(f"invalid PCA k {v} for {layer}: it has only {c} channels")
    return int(v)
  if kind == "fraction":
    return max(1, int(round(v * c)))
  total = float(np.sum(np.clip(eigenvalues, 0, None)))
  if total <= 0:
    return 1
  share = np.cumsum(np.clip(eigenvalues, 0, None)) / total
  return int(min(c, np.searchsorted(share, v - 1e-12) + 1))


@jax.jit
def _eigh_desc(g):
  w, v = jnp.linalg.eigh(g)
  return w[::-1], v[:, ::-1]


# --- gram -------------------------------------------------------------------

def gram_from_gram(a: Array, spec: StyleSpec, layer: str):
  """Eq. 2 target: the style Gram A (C, C)."""
  del spec, layer
  return a


def gram_loss(f: Array, target: Array) -> Array:
  """Eq. 3: :math:`\\frac{1}{4C^2} \\sum (G - A)^2`, G = gram(F)."""
  return losses.style_loss(losses.gram(f), target)


def gram_loss_of_gram(g: Array, target: Array) -> Array:
  """:func:`gram_loss` from the generated Gram G (C, C) instead of the features."""
  return losses.style_loss(g, target)


# --- pca (ours) --------------------------------------------------------------

def pca_from_gram(a: Array, spec: StyleSpec, layer: str):
  """Principal subspace of the style Gram, fixed for the run.

  U_k: the top-k eigenvectors of the style Gram A (C, k); target
  :math:`U_k^T A U_k` (k, k), which is diag(λ_1..λ_k).
  """
  w, v = _eigh_desc(a)
  k = choose_k(spec.pca_k, np.asarray(w), layer)
  basis = v[:, :k]
  return {"basis": basis, "gram": basis.T @ a @ basis}


def pca_loss(f: Array, target) -> Array:
  """Gram loss in the style's principal subspace, at O(HW·C·k + HW·k²) per step.

  .. math:: \\frac{1}{4C^2} \\| U_k^T G U_k - U_k^T A U_k \\|_F^2,
     \\quad U_k^T G U_k = \\mathrm{gram}(F U_k)

  computed as the Gram of the projected features (HW, k), never forming the
  (C, C) Gram. With k = C, U is orthogonal and this equals :func:`gram_loss`.
  """
  basis = target["basis"]
  x = f.reshape(-1, f.shape[-1]).astype(jnp.float32)
  p = jnp.matmul(x, basis, precision=_HIGHEST)
  g = jnp.matmul(p.T, p, precision=_HIGHEST) / x.shape[0]
  d = g - target["gram"]
  c = basis.shape[0]
  return jnp.sum(d * d) / (4.0 * c * c)


def pca_loss_of_gram(g: Array, target) -> Array:
  """:func:`pca_loss` from the generated Gram G (C, C): :math:`U_k^T G U_k` formed directly."""
  basis = target["basis"]
  p = jnp.matmul(jnp.matmul(basis.T, g, precision=_HIGHEST), basis, precision=_HIGHEST)
  d = p - target["gram"]
  c = basis.shape[0]
  return jnp.sum(d * d) / (4.0 * c * c)


# --- pca-paper ---------------------------------------------------------------

def _centre(g):
  return g - jnp.mean(g, axis=0, keepdims=True)   # the paper's G - mean(G, 0)


def _paper_projection(g, k):
  gc = _centre(g)
  # Top-k left singular vectors of gcᵀ (the paper's numpy.linalg.svd(Gᵀ)), held
  # constant in the gradient as the paper's numpy round trip does.
  u, _, _ = jnp.linalg.svd(jax.lax.stop_gradient(gc).T)
  return gc @ u[:, :k]


def pca_paper_from_gram(a: Array, spec: StyleSpec, layer: str):
  """The paper's own style target: centred style Gram times its top-k singular vectors (C, k)."""
  w, _ = _eigh_desc(a)
  k = choose_k(spec.pca_k, np.asarray(w), layer)
  return _paper_projection(a, k)


def pca_paper_loss(f: Array, target: Array) -> Array:
  """Guo & Yuan's PCA loss as written (their Fig. 11), on eq. 3's scale.

  Each Gram is centred (column means removed) and multiplied by the top-k left
  singular vectors of its own transpose, computed every step and held constant
  in the gradient. The two projections use different bases (and singular
  vectors have arbitrary signs), so even k = C does not give the Gram loss.
  Costs an SVD of a (C, C) matrix per layer per step.
  """
  return pca_paper_loss_of_gram(losses.gram(f), target)


def pca_paper_loss_of_gram(g: Array, target: Array) -> Array:
  """:func:`pca_paper_loss` from the generated Gram G (C, C)."""
  k = target.shape[1]
  d = _paper_projection(g, k) - target
  c = target.shape[0]
  return jnp.sum(d * d) / (4.0 * c * c)


# --- svd ---------------------------------------------------------------------

def svd_from_gram(a: Array, spec: StyleSpec, layer: str):
  """Gram of the SVD-truncated style features, from the (C, C) Gram's eigendecomposition.

  With F = U Σ Vᵀ (HW, C), :math:`F^T F / HW = V (Σ^2/HW) V^T`, so the singular
  values are :math:`σ_i = \\sqrt{HW λ_i}`. Singular values below
  ``svd_threshold`` × mean(σ) (or outside the top ``svd_energy`` share of
  Σσ²) are dropped: target :math:`V_t Λ_t V_t^T`. No SVD of the (HW, C)
  matrix is formed, so memory does not grow with resolution.
  """
  del layer
  w, v = _eigh_desc(a)
  lam = jnp.clip(w, 0.0, None)
  sigma = jnp.sqrt(lam)
  if spec.svd_energy is not None:
    share = jnp.cumsum(lam) / jnp.maximum(jnp.sum(lam), 1e-30)
    keep = jnp.concatenate([jnp.ones((1,), bool), share[:-1] < spec.svd_energy])
  else:
    keep = sigma >= spec.svd_threshold * jnp.mean(sigma)
  if spec.svd_threshold == 0 and spec.svd_energy is None:
    return a   # nothing dropped: exactly the Gram (no eigen round-off)
  return (v * jnp.where(keep, lam, 0.0).reshape(1, -1)) @ v.T


def svd_loss(f: Array, target: Array) -> Array:
  """Eq. 3 between the generated image's *full* Gram and the truncated style Gram.

  The generated side is not truncated: doing so every step would need
  gradients through an eigendecomposition, whose 1/(λ_i − λ_j) terms are
  unbounded for the many (near-)equal small eigenvalues of ReLU features. The
  loss therefore also pushes the generated image's energy in the dropped
  directions towards zero. Per-step cost equals the Gram's.
  """
  return gram_loss(f, target)


# --- weighted ----------------------------------------------------------------

def load_channel_weights(path) -> dict[str, np.ndarray]:
  """``{layer: (C,) weights}`` from a JSON object ``{"relu1_1": [w, ...], ...}``."""
  from nstjax.files import read_json_object
  data = read_json_object(path, "channel weights")
  out = {}
  for k, v in data.items():
    try:
      out[k] = np.asarray(v, np.float32)
    except (TypeError, ValueError):
      raise NSTError(f"channel weights {path}: {k} must be a list of numbers") from None
    if out[k].ndim != 1:
      raise NSTError(f"channel weights {path}: {k} must be a flat list of numbers")
  return out


def weighted_from_gram(a: Array, spec: StyleSpec, layer: str):
  """Style Gram and per-channel weights w (C,) for :math:`G_w = \\mathrm{diag}(w) G`."""
  c = a.shape[0]
  if spec.channel_weights == "uniform":
    w = jnp.ones((c,), jnp.float32)
  elif spec.channel_weights == "energy":
    energy = jnp.diagonal(a)
    w = energy / jnp.maximum(jnp.mean(energy), 1e-30)   # each channel's energy share, mean 1
  else:
    table = load_channel_weights(spec.channel_weights)
    if layer not in table:
      raise NSTError(f"channel weights {spec.channel_weights} have no entry for {layer}")
    w = table[layer]
    if w.shape != (c,):
      raise NSTError(f"channel weights for {layer}: expected {c} values, found {w.size}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
      raise NSTError(f"channel weights for {layer} must be finite and >= 0")
    w = jnp.asarray(w)
  return {"gram": a, "w": w}


def weighted_loss(f: Array, target) -> Array:
  """Eq. 3 on channel-weighted Grams :math:`G_w = W F F^T` (W = diag(w)).

  .. math:: \\frac{1}{4C^2} \\sum_{ij} w_i^2 (G_{ij} - A_{ij})^2

  Uniform weights (w = 1) give exactly :func:`gram_loss`.
  """
  return weighted_loss_of_gram(losses.gram(f), target)


def weighted_loss_of_gram(g: Array, target) -> Array:
  """:func:`weighted_loss` from the generated Gram G (C, C)."""
  w = target["w"].reshape(-1, 1)
  d = w * (g - target["gram"])
  c = d.shape[0]
  return jnp.sum(d * d) / (4.0 * c * c)


class Representation(NamedTuple):
  """A style representation: its target from the style Gram (computed once), and its loss.

  Every target is a function of the style's (HW-normalised) Gram A alone, so
  several styles blend by blending their Grams (jcjohnson's rule for the Gram;
  :func:`nstjax.objective` applies it to every representation).
  """
  from_gram: Callable[[Array, StyleSpec, str], Any]
  loss: Callable[[Array, Any], Array]
  loss_of_gram: Callable[[Array, Any], Array]   # the same loss from gram(F) (tiled runs)

  def target(self, f: Array, spec: StyleSpec, layer: str):
    """The target of one style image's features f (h, w, C)."""
    return self.from_gram(losses.gram(f), spec, layer)


REPRESENTATIONS = {
    "gram": Representation(gram_from_gram, gram_loss, gram_loss_of_gram),
    "pca": Representation(pca_from_gram, pca_loss, pca_loss_of_gram),
    "pca-paper": Representation(pca_paper_from_gram, pca_paper_loss, pca_paper_loss_of_gram),
    "svd": Representation(svd_from_gram, svd_loss, gram_loss_of_gram),
    "weighted": Representation(weighted_from_gram, weighted_loss, weighted_loss_of_gram),
}


def _target_of_features(name):
  def target(f: Array, spec: StyleSpec, layer: str):
    return REPRESENTATIONS[name].target(f, spec, layer)
  target.__doc__ = f"``{name}``'s target of one style image's features f (h, w, C)."
  return target


gram_target, pca_target, pca_paper_target, svd_target, weighted_target = (
    _target_of_features(n) for n in ("gram", "pca", "pca-paper", "svd", "weighted"))


def style_targets(features: dict[str, Array], spec: StyleSpec) -> dict[str, Any]:
  """Targets for every style layer (computed once, on concrete features)."""
  rep = REPRESENTATIONS[spec.kind]
  return {layer: rep.target(f, spec, layer) for layer, f in features.items()}
