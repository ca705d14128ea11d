"""Attention-based style loss with a chunked, memory-bounded softmax.

Chen, "Neural Style Transfer with Self-Attention Module" §2.3: at a layer l, with
content features C and style features A as (positions, channels) matrices,

.. math::
   FA_i = \\sum_j \\mathrm{softmax}_j(\\bar C_i \\cdot \\bar A_j / T)\\, A_j
   \\quad (eqs. 4-6)

where the bar is per-channel mean-variance normalisation over positions and T
an optional temperature (the paper has none: T = 1). FA is mean-normalised per
channel (not variance-normalised, as the paper chooses), SA = gram(FA), and the
loss is eq. 3 between SA and the generated image's Gram (eq. 7).

The attention matrix has Nc × Ns entries (4 billion at conv2_1 of a 512 px
image); :func:`chunked_attention` never forms it: an online softmax over
chunks of style positions for each chunk of content positions keeps
O(chunk_c × chunk_s + N × C) memory (Rabe & Staats 2021; Dao et al. 2022).
The target depends only on the fixed content and style images, so it is
computed once per run, outside the optimisation loop.

References:
  Rabe & Staats, "Self-attention Does Not Need O(n²) Memory", arXiv 2112.05682.
  Dao et al., "FlashAttention", arXiv 2205.14135. Park & Lee, "Arbitrary Style
  Transfer with Style-Attentional Networks" (SANet), CVPR 2019.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp

from nstjax import losses
from nstjax.errors import NSTError

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
GRAM_MODES = ("centered", "raw")
MVN_EPS = 1e-5


def mvn(x: Array, eps: float = MVN_EPS) -> Array:
  """Per-channel mean-variance normalisation over positions; x (N, C) -> (N, C).

  Uses the population variance plus ``eps`` (SANet uses the unbiased variance;
  the difference is a factor N/(N-1) inside the square root).
  """
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=0, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=0, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def attention_reference(q: Array, k: Array, v: Array, *, scale: float = 1.0) -> Array:
  """Unchunked ``softmax(scale · q kᵀ) v``: O(Nc × Ns) memory, for tests and small inputs.

  Args:
    q: (Nc, C) queries; k: (Ns, C) keys; v: (Ns, Cv) values.
  """
  logits = jnp.matmul(q, k.T, precision=_HIGHEST) * scale
  return jnp.matmul(jax.nn.softmax(logits, axis=-1), v, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("q_chunk", "k_chunk"))
def chunked_attention(q: Array, k: Array, v: Array, *, scale: float | Array = 1.0,
                      q_chunk: int = 1024, k_chunk: int = 2048, bias: Array | None = None) -> Array:
  """``softmax(scale · q kᵀ) v`` in O(q_chunk × k_chunk) working memory.

  For each chunk of ``q_chunk`` queries (``lax.map``), a ``lax.scan`` over chunks
  of ``k_chunk`` keys keeps a running max m, running sum l and accumulator in
  float32 (the online softmax): for a new block of logits s,
  m' = max(m, max s), l' = l·e^{m−m'} + Σ e^{s−m'}, acc' = acc·e^{m−m'} + e^{s−m'} v.
  The max is held out of the gradient. Lengths that are not multiples of the
  chunks are padded; padded keys are masked to −∞ and padded queries dropped
  (no clamped slices, so nothing is counted twice).

  Args:
    q: (Nc, C) queries. k: (Ns, C) keys. v: (Ns, Cv) values.
    scale: multiplies the logits (1 / temperature).
    q_chunk, k_chunk: chunk sizes (static).
    bias: optional (Ns,) added to every query's logits for each key (a log prior
      over the keys: ``log w`` weights key j's probability by w_j; −∞ drops it).

  Returns:
    (Nc, Cv) float32.

  >>> import jax, jax.numpy as jnp
  >>> from nstjax.attention import chunked_attention, attention_reference
  >>> q, k, v = (jax.random.normal(jax.random.key(i), s) for i, s in
  ...            enumerate([(100, 8), (77, 8), (77, 5)]))
  >>> bool(jnp.allclose(chunked_attention(q, k, v, q_chunk=32, k_chunk=24),
  ...                   attention_reference(q, k, v), atol=1e-5))
  True
  """
  nc, c = q.shape
  ns, cv = v.shape
  q_chunk, k_chunk = min(q_chunk, nc), min(k_chunk, ns)
  nq, nk = -(-nc // q_chunk), -(-ns // k_chunk)
  q = jnp.pad(q.astype(jnp.float32), ((0, nq * q_chunk - nc), (0, 0)))
  k = jnp.pad(k.astype(jnp.float32), ((0, nk * k_chunk - ns), (0, 0)))
  v = jnp.pad(v.astype(jnp.float32), ((0, nk * k_chunk - ns), (0, 0)))
  valid = (jnp.arange(nk * k_chunk) < ns).reshape(nk, 1, k_chunk)
  kc, vc = k.reshape(nk, k_chunk, c), v.reshape(nk, k_chunk, cv)
  bias = (jnp.zeros((nk, 1, k_chunk), jnp.float32) if bias is None else
          jnp.pad(bias.astype(jnp.float32), (0, nk * k_chunk - ns)).reshape(nk, 1, k_chunk))

  def one_query_chunk(qb):
    qb = qb * scale

    def body(carry, block):
      m, l, acc = carry
      kb, vb, ok, bb = block
      s = jnp.where(ok, jnp.matmul(qb, kb.T, precision=_HIGHEST) + bb, -jnp.inf)
      m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(s, axis=-1)))
      p = jnp.exp(s - m_new[:, None])
      correction = jnp.exp(m - m_new)
      l = l * correction + jnp.sum(p, axis=-1)
      acc = acc * correction[:, None] + jnp.matmul(p, vb, precision=_HIGHEST)
      return (m_new, l, acc), None

    init = (jnp.full((q_chunk,), -jnp.inf, jnp.float32), jnp.zeros((q_chunk,), jnp.float32),
            jnp.zeros((q_chunk, cv), jnp.float32))
    (_, l, acc), _ = jax.lax.scan(body, init, (kc, vc, valid, bias))
    return acc / l[:, None]

  out = jax.lax.map(one_query_chunk, q.reshape(nq, q_chunk, c))
  return out.reshape(nq * q_chunk, cv)[:nc]


def parse_bytes(text: str) -> int:
  """``"1GB"``, ``"512MB"``, ``"2e9"`` -> bytes."""
  m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
  if not m:
    raise NSTError(f"cannot read memory size {text!r} (e.g. 1GB, 512MB)")
  try:
    value = float(m.group(1))
  except ValueError:
    raise NSTError(f"cannot read memory size {text!r} (e.g. 1GB, 512MB)") from None
  unit = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
  if not math.isfinite(value) or value <= 0:
    raise NSTError(f"memory size must be positive, got {text!r}")
  return int(value * unit)


def working_bytes(q_chunk: int, k_chunk: int, c: int, cv: int) -> int:
  """float32 bytes one step of :func:`chunked_attention` holds beyond its inputs/outputs.

  The logits and their exponentials (2·Tq·Tk), the query chunk and accumulator
  (Tq·(C + Cv + 2)) and the key/value chunk (Tk·(C + Cv)).
  """
  return 4 * (2 * q_chunk * k_chunk + q_chunk * (c + cv + 2) + k_chunk * (c + cv))


def choose_chunks(nc: int, ns: int, c: int, cv: int, budget: int) -> tuple[int, int]:
  """The largest power-of-two chunks (≤ 2048 × 4096) whose working set fits ``budget``.

  Raises NSTError if even 8 × 8 does not fit.
  """
  def pow2_at_least(n):
    return 1 << max(0, (n - 1).bit_length())
  best = None
  for tq in (2048, 1024, 512, 256, 128, 64, 32, 16, 8):
    tq = min(tq, pow2_at_least(nc))
    for tk in (4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8):
      tk = min(tk, pow2_at_least(ns))
      if working_bytes(tq, tk, c, cv) <= budget:
        if best is None or tq * tk > best[0] * best[1]:
          best = (tq, tk)
        break
  if best is None:
    raise NSTError(f"attention memory budget of {budget} bytes is too small for one 8x8 chunk "
                   f"({working_bytes(8, 8, c, cv)} bytes at {c} channels)")
  return best


def attention_target(fc: Array, fs, *, temperature: float = 1.0,
                     q_chunk: int = 1024, k_chunk: int = 2048, style_weights=None) -> Array:
  """SA of eq. 7: the Gram of the attention-rearranged, mean-centred style features.

  Several style images: the attention runs over the union of their positions
  (each style's keys normalised by its own statistics), with style i's
  positions weighted by its blend weight w_i as a prior:
  p(j | i) ∝ w_s(j) exp(C̄_i · Ā_j / T). So the styles compete for each content
  position in proportion to their weights, and a weight of 0 removes a style.

  Args:
    fc: content features (h, w, C). fs: style features (h', w', C) (any size),
      or a list of them.
    temperature: softmax temperature T (logits divided by T; the paper: 1).
    q_chunk, k_chunk: chunk sizes of :func:`chunked_attention`.
    style_weights: blend weights of a list of styles (default equal).

  Returns:
    (C, C) float32, HW-normalised like :func:`nstjax.losses.gram`.
  """
  c = fc.shape[-1]
  content = fc.reshape(-1, c).astype(jnp.float32)
  if isinstance(fs, (list, tuple)):
    flat = [f.reshape(-1, c).astype(jnp.float32) for f in fs]
    weights = style_weights or [1.0 / len(flat)] * len(flat)
    keys = jnp.concatenate([mvn(f) for f in flat])
    values = jnp.concatenate(flat)
    bias = jnp.concatenate([jnp.full((f.shape[0],), jnp.log(jnp.float32(w)))
                            for f, w in zip(flat, weights)])
  else:
    values = fs.reshape(-1, c).astype(jnp.float32)
    keys, bias = mvn(values), None
  fa = chunked_attention(mvn(content), keys, values, scale=1.0 / temperature,
                         q_chunk=q_chunk, k_chunk=k_chunk, bias=bias)
  fa = fa - jnp.mean(fa, axis=0, keepdims=True)   # mean- but not variance-normalised (paper §2.3)
  return jnp.matmul(fa.T, fa, precision=_HIGHEST) / fa.shape[0]


def attention_loss_centered(f: Array, target: Array) -> Array:
  """Eq. 7 read as a covariance match: G is the Gram of mean-centred F.

  .. math:: \\frac{1}{4C^2} \\| \\mathrm{gram}(F - \\bar F) - SA \\|^2

  Both sides are centred, so the loss can reach zero (the default).
  """
  x = f.reshape(-1, f.shape[-1]).astype(jnp.float32)
  x = x - jnp.mean(x, axis=0, keepdims=True)
  g = jnp.matmul(x.T, x, precision=_HIGHEST) / x.shape[0]
  return losses.style_loss(g, target)


def attention_loss_raw(f: Array, target: Array) -> Array:
  """Eq. 7 read literally: G is the Gram of F as it is.

  F's channel means enter G but not SA, so the loss has a floor and pulls the
  means toward zero (a probe at γ = 0.6β washed the image out grey).
  """
  return losses.style_loss(losses.gram(f), target)


ATTENTION_LOSSES = {"centered": attention_loss_centered, "raw": attention_loss_raw}


def attention_weights_row(fc: Array, fs: Array, index: int, *, temperature: float = 1.0) -> Array:
  """One content position's softmax weights over all style positions (Ns,) (for maps)."""
  c = fc.shape[-1]
  content = mvn(fc.reshape(-1, c))
  style = mvn(fs.reshape(-1, c))
  logits = jnp.matmul(style, content[index], precision=_HIGHEST) / temperature
  return jax.nn.softmax(logits)
