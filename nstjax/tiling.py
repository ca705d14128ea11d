"""Exact tiled evaluation: the untiled loss and gradient, one tile's memory at a time.

The image is cut into a grid of tiles ("cores"). Each tile is run through the
network as a window: its core plus a *halo* on every side wide enough to
hold the receptive field of the deepest layer used, so the core's features
are exactly the whole image's (:func:`receptive_field`). Every network term's
loss is a function of sums over feature positions (a Gram is Σ f fᵀ, a
content loss Σ (f − p)²), so

1. **pass 1** sums each tile's core statistics into the whole image's (the
   Gram of the whole image, exactly) and finishes the losses from them;
2. **pass 2** (the gradient) runs each tile's forward and backward again,
   with the cotangent of the statistics held fixed (the "global style
   residual" ∂L/∂G), and adds the window's gradient into the image's.

Both passes are ``lax.fori_loop`` over the tiles inside one compiled
program, so the memory of the network's passes is that of one window.
Pass 2 costs one more forward per tile than an untiled step, and every
window computes its halo again: the cost is measured in BENCHMARKS.md.

The window is zeroed outside the image at every layer (``vgg.features``'s
``origin``/``extent``), so tiles at the border see the zero padding the
untiled network sees, and every window has the same shape: one program
for all tiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nstjax import vgg
from nstjax.errors import NSTError

Array = jax.Array
_HIGHEST = lax.Precision.HIGHEST


def layer_level(layer: str) -> int:
  """How many 2x2 poolings precede ``layer``'s output (its map is 1/2**level of the image)."""
  block = vgg._block_of(layer)
  return block if layer.startswith("pool") else block - 1


def receptive_field(arch: str, layers) -> tuple[int, int]:
  """``(halo, align)`` in image pixels for the deepest of ``layers``.

  Each 3x3 convolution after ``p`` poolings widens the receptive field by
  ``2**p`` pixels on each side; ``align`` = 2**(poolings before the deepest
  layer), the grid every window must start on so that its pooling windows are
  the image's. The halo is the sum, rounded up to ``align``: for VGG19,
  relu5_1 needs 70 → 80 px (align 16), conv4_2 38 → 40 (align 8), relu3_1
  14 → 16 (align 4).
  """
  wanted = set(layers)
  if not wanted:
    return 0, 1
  halo, level = 0, 0
  for block, n, _ in vgg.BLOCKS[arch]:
    for i in range(1, n + 1):
      if not wanted:
        break
      halo += 2 ** level
      wanted -= {f"conv{block}_{i}", f"relu{block}_{i}"}
    if not wanted:
      break
    level += 1
    wanted.discard(f"pool{block}")
  align = 2 ** level
  return -(-halo // align) * align, align


@dataclasses.dataclass(frozen=True)
class Grid:
  """The tiles of an ``height x width`` image: ``rows x cols`` cores of ``tile_h x tile_w``
  pixels (the last row and column may reach past the image), each read with ``halo``."""
  height: int
  width: int
  tile_h: int
  tile_w: int
  rows: int
  cols: int
  halo: int

  @property
  def count(self) -> int:
    return self.rows * self.cols

  @property
  def window(self) -> tuple[int, int]:
    """The window's (height, width): core plus a halo on each side."""
    return self.tile_h + 2 * self.halo, self.tile_w + 2 * self.halo

  def place(self, t) -> tuple[Array, Array]:
    """Tile ``t``'s (row, column) of the grid (``t`` may be traced)."""
    return t // self.cols, t % self.cols

  def origin(self, t) -> tuple[Array, Array]:
    """Tile ``t``'s window's top-left corner in image pixels (negative at the top and left)."""
    i, j = self.place(t)
    return i * self.tile_h - self.halo, j * self.tile_w - self.halo

  def layer_size(self, layer: str) -> tuple[int, int]:
    """The whole image's map size at ``layer``."""
    s = 2 ** layer_level(layer)
    return self.height // s, self.width // s

  def describe(self) -> dict:
    return {"tile": [self.tile_h, self.tile_w], "grid": [self.rows, self.cols],
            "halo": self.halo, "window": list(self.window)}


def make_grid(shape, tile: int, arch: str, layers) -> Grid:
  """The grid for an image of ``shape`` (H, W, ...) with cores of about ``tile`` pixels.

  Each side gets as many tiles as ``tile`` (rounded up to the alignment the
  deepest layer needs) takes to cover it, and the image is then split evenly
  among them (768 rows with ``tile=512``: two tiles of 384, not 512 + 256),
  each rounded up to the alignment.
  """
  if tile < 1:
    raise NSTError(f"tile must be a positive number of pixels, got {tile}")
  height, width = int(shape[0]), int(shape[1])
  halo, align = receptive_field(arch, layers)
  up = lambda v: -(-v // align) * align
  t = up(int(tile))
  rows, cols = -(-height // t), -(-width // t)
  tile_h, tile_w = up(-(-height // rows)), up(-(-width // cols))
  return Grid(height, width, tile_h, tile_w, -(-height // tile_h), -(-width // tile_w), halo)


def pad(image: Array, grid: Grid) -> Array:
  """``image`` padded so that every window is a plain slice (the padding is masked away)."""
  bottom = grid.rows * grid.tile_h + grid.halo - grid.height
  right = grid.cols * grid.tile_w + grid.halo - grid.width
  return jnp.pad(image, ((grid.halo, bottom), (grid.halo, right), (0, 0)))


def window(padded: Array, grid: Grid, t) -> Array:
  """Tile ``t``'s window of the padded image."""
  i, j = grid.place(t)
  return lax.dynamic_slice(padded, (i * grid.tile_h, j * grid.tile_w, 0),
                           (*grid.window, padded.shape[-1]))


class TileView:
  """What a term's tile statistics read: one window's features, where its core is, and
  slices of whole-image maps (a content target) at the window's place."""

  def __init__(self, grid: Grid, t, feats: dict[str, Array]):
    self.grid, self.t, self.feats = grid, t, feats

  def mask(self, layer: str) -> Array:
    """(h, w, 1) float32 in window cells: 1 on the tile's core inside the image, else 0."""
    s = 2 ** layer_level(layer)
    g = self.grid
    i, j = g.place(self.t)
    size = g.layer_size(layer)

    def axis(k, tile, n, limit):
      index = jnp.arange(n) + (k * tile - g.halo) // s
      return (index >= k * tile // s) & (index < (k + 1) * tile // s) & (index < limit)

    wh, ww = g.window[0] // s, g.window[1] // s
    keep = axis(i, g.tile_h, wh, size[0])[:, None] & axis(j, g.tile_w, ww, size[1])[None, :]
    return keep[:, :, None].astype(jnp.float32)

  def crop(self, full: Array, layer: str) -> Array:
    """The window's part of a whole-image map ``full`` (h, w, C) at ``layer``."""
    s = 2 ** layer_level(layer)
    g = self.grid
    i, j = g.place(self.t)
    hq, wq = g.halo // s, full.shape[:2]
    padded = jnp.pad(full, ((hq, (g.rows * g.tile_h + g.halo) // s - wq[0]),
                            (hq, (g.cols * g.tile_w + g.halo) // s - wq[1]), (0, 0)))
    return lax.dynamic_slice(padded, (i * g.tile_h // s, j * g.tile_w // s, 0),
                             (g.window[0] // s, g.window[1] // s, full.shape[-1]))

  def gram_sum(self, layer: str) -> Array:
    """Σ over the core of f fᵀ (C, C), float32."""
    x = (self.feats[layer].astype(jnp.float32) * self.mask(layer))
    x = x.reshape(-1, x.shape[-1])
    return jnp.matmul(x.T, x, precision=_HIGHEST)

  def sum(self, layer: str) -> Array:
    """Σ over the core of f (C,)."""
    x = self.feats[layer].astype(jnp.float32) * self.mask(layer)
    return jnp.sum(x, axis=(0, 1))

  def core(self, layer: str) -> Array:
    """The core's cells of ``layer`` (tile_h/s, tile_w/s, C): static offsets in the window."""
    s = 2 ** layer_level(layer)
    g = self.grid
    return self.feats[layer][g.halo // s:(g.halo + g.tile_h) // s,
                             g.halo // s:(g.halo + g.tile_w) // s]


def window_features(net, win: Array, grid: Grid, t, *, layers, pooling, input_scale=None,
                    precision="tf32") -> dict[str, Array]:
  """``vgg.features`` of tile ``t``'s window ``win`` (exact on its core)."""
  return vgg.features(net, win, layers=layers, pooling=pooling, input_scale=input_scale,
                      precision=precision, origin=grid.origin(t),
                      extent=(grid.height, grid.width))


def _window_features(net, padded, grid, t, **kw):
  return window_features(net, window(padded, grid, t), grid, t, **kw)


def sum_over_tiles(fn, grid: Grid, init):
  """Σ_t fn(t) over the grid's tiles (a pytree), one tile at a time."""
  return lax.fori_loop(0, grid.count, lambda t, acc: jax.tree.map(jnp.add, acc, fn(t)), init)


def assembled_features(net, image: Array, grid: Grid, *, layers, pooling, input_scale=None,
                       precision="tf32") -> dict[str, Array]:
  """``vgg.features`` of the whole image, computed one window at a time (whole maps out)."""
  padded = pad(jnp.asarray(image, jnp.float32), grid)
  shapes = jax.eval_shape(lambda p: _window_features(net, p, grid, 0, layers=layers,
                                                     pooling=pooling, input_scale=input_scale,
                                                     precision=precision), padded)
  out = {}
  for k, v in shapes.items():
    s = 2 ** layer_level(k)
    out[k] = jnp.zeros((grid.rows * grid.tile_h // s, grid.cols * grid.tile_w // s,
                        v.shape[-1]), jnp.float32)

  def body(t, acc):
    view = TileView(grid, t, _window_features(net, padded, grid, t, layers=layers,
                                              pooling=pooling, input_scale=input_scale,
                                              precision=precision))
    i, j = grid.place(t)
    new = {}
    for k, buf in acc.items():
      s = 2 ** layer_level(k)
      new[k] = lax.dynamic_update_slice(buf, view.core(k),
                                        (i * grid.tile_h // s, j * grid.tile_w // s, 0))
    return new

  out = lax.fori_loop(0, grid.count, body, out)
  return {k: v[:grid.layer_size(k)[0], :grid.layer_size(k)[1]] for k, v in out.items()}


def gram_sums(net, image: Array, grid: Grid, *, layers, pooling, input_scale=None,
              precision="tf32") -> dict[str, Array]:
  """``{layer: Σ f fᵀ}`` of the whole image, one window at a time (divide by h·w for a Gram)."""
  padded = pad(jnp.asarray(image, jnp.float32), grid)

  def one(t):
    view = TileView(grid, t, _window_features(net, padded, grid, t, layers=layers,
                                              pooling=pooling, input_scale=input_scale,
                                              precision=precision))
    return {k: view.gram_sum(k) for k in layers}

  return sum_over_tiles(one, grid, jax.tree.map(jnp.zeros_like, jax.eval_shape(one, 0)))


def tiled_network_terms(grid: Grid, layers, stats_fns, finish_fns, *, pooling, input_scale,
                        precision):
  """``terms(image, net, targets, layer_weights) -> {term: value}`` for the network terms,
  evaluated tile by tile, with the untiled gradient (a ``jax.custom_vjp``).

  ``stats_fns[name](view, target)`` returns the tile's sums; ``finish_fns[name](stats,
  target, layer_weights, grid)`` the term from the whole image's sums.
  """
  def tile_stats(win, t, net, targets):
    view = TileView(grid, t, window_features(net, win, grid, t, layers=layers, pooling=pooling,
                                             input_scale=input_scale, precision=precision))
    return {name: fn(view, targets[name]) for name, fn in stats_fns.items()}

  def pass1(image, net, targets):
    padded = pad(image, grid)
    one = lambda t: tile_stats(window(padded, grid, t), t, net, targets)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(one, 0))
    return sum_over_tiles(one, grid, zeros)

  def finish(stats, targets, layer_weights):
    return {name: jnp.asarray(fn(stats[name], targets[name], layer_weights[name], grid),
                              jnp.float32)
            for name, fn in finish_fns.items()}

  @jax.custom_vjp
  def terms(image, net, targets, layer_weights):
    return finish(pass1(image, net, targets), targets, layer_weights)

  def fwd(image, net, targets, layer_weights):
    stats = pass1(image, net, targets)
    return finish(stats, targets, layer_weights), (image, net, targets, layer_weights, stats)

  def bwd(res, cotangent):
    image, net, targets, layer_weights, stats = res
    _, finish_vjp = jax.vjp(lambda s: finish(s, targets, layer_weights), stats)
    (ct_stats,) = finish_vjp(cotangent)
    padded = pad(image, grid)

    def body(t, grad):
      i, j = grid.place(t)
      corner = (i * grid.tile_h, j * grid.tile_w, 0)
      _, vjp = jax.vjp(lambda w: tile_stats(w, t, net, targets), window(padded, grid, t))
      (g_window,) = vjp(ct_stats)
      return lax.dynamic_update_slice(
          grad, lax.dynamic_slice(grad, corner, g_window.shape) + g_window, corner)

    grad = lax.fori_loop(0, grid.count, body, jnp.zeros_like(padded))
    grad = grad[grid.halo:grid.halo + grid.height, grid.halo:grid.halo + grid.width]
    return (grad.astype(image.dtype), _zero_cotangent(net), _zero_cotangent(targets),
            _zero_cotangent(layer_weights))

  terms.defvjp(fwd, bwd)
  return terms


def _zero_cotangent(tree):
  return jax.tree.map(lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.inexact)
                      else np.zeros(x.shape, jax.dtypes.float0), tree)


def extra_compute(grid: Grid) -> float:
  """Pixels the windows process over the image's pixels (the halo's overhead, per pass)."""
  wh, ww = grid.window
  return grid.count * wh * ww / (grid.height * grid.width)


__all__ = ["Grid", "TileView", "assembled_features", "extra_compute", "gram_sums", "layer_level",
           "make_grid", "pad", "receptive_field", "tiled_network_terms", "window",
           "window_features"]
