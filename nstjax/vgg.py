"""VGG16/VGG19 feature extractors as pure functions of (params, image).

The network is the convolutional part of Simonyan & Zisserman's VGG: 3x3
"same" convolutions with ReLU, 2x2 pooling between blocks. ``features`` returns
a dict of named activations and stops at the deepest layer asked for.

Names follow Caffe/Gatys: ``conv4_2`` is the convolution's output *before* its
ReLU, ``relu4_2`` after it (Caffe's ReLUs are in place, so the papers'
"conv4_2" blob is our ``relu4_2``), ``pool4`` the output of block 4's pooling.

References:
  Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", 2014. Gatys, Ecker & Bethge, "Image Style Transfer Using
  Convolutional Neural Networks", CVPR 2016.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from nstjax.errors import NSTError

Array = jax.Array

# (block, number of convs, output channels) per architecture.
BLOCKS = {
    "vgg16": ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)),
    "vgg19": ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512)),
}

# Caffe / Keras VGG: BGR, 0..255, minus the ImageNet mean pixel in BGR order.
# Source: keras.applications.imagenet_utils.preprocess_input(mode="caffe").
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# torchvision: RGB, 0..1, ImageNet mean and std. Source: torchvision.models docs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSINGS = ("caffe", "torch")
POOLINGS = ("max", "avg")

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv_layers(arch: str, widths: tuple[int, ...] | None = None):
  """The conv layers in network order as ``(name, c_in, c_out)``.

  Args:
    arch: ``"vgg16"`` or ``"vgg19"``.
    widths: per-block output channels; ``None`` for the real VGG widths
      (64, 128, 256, 512, 512). Small widths give the same topology with fewer
      channels, for tests.
  """
  if arch not in BLOCKS:
    raise NSTError(f"unknown architecture {arch!r}; expected one of {sorted(BLOCKS)}")
  blocks = BLOCKS[arch]
  if widths is None:
    widths = tuple(c for _, _, c in blocks)
  if len(widths) != len(blocks):
    raise NSTError(f"{arch} has {len(blocks)} blocks, got {len(widths)} widths")
  out, c_in = [], 3
  for (block, n, _), c_out in zip(blocks, widths):
    for i in range(1, n + 1):
      out.append((f"conv{block}_{i}", c_in, int(c_out)))
      c_in = int(c_out)
  return out


def layer_names(arch: str) -> tuple[str, ...]:
  """Every tappable layer in network order: conv1_1, relu1_1, ..., pool5."""
  names = []
  for block, n, _ in BLOCKS[arch]:
    for i in range(1, n + 1):
      names += [f"conv{block}_{i}", f"relu{block}_{i}"]
    names.append(f"pool{block}")
  return tuple(names)


def _block_of(layer: str) -> int:
  digits = layer.lstrip("convrelupool")
  return int(digits.split("_")[0])


def validate_layers(arch: str, layers) -> tuple[str, ...]:
  """Check layer names against ``arch``; returns them as a tuple."""
  known = layer_names(arch)
  layers = tuple(layers)
  if not layers:
    raise NSTError("no layers given")
  for layer in layers:
    if layer not in known:
      hint = ""
      if layer.startswith("block"):
        hint = " (use Caffe names such as relu4_2, not Keras block names)"
      raise NSTError(f"unknown layer {layer!r} for {arch}{hint}; "
                     f"known layers: {', '.join(known)}")
  return layers


def min_image_size(layers) -> int:
  """The smallest image side for which every layer's feature map is non-empty."""
  deepest = 1
  for layer in layers:
    block = _block_of(layer)
    # convB_* / reluB_* sit after B-1 poolings; poolB after B of them.
    deepest = max(deepest, 2 ** (block if layer.startswith("pool") else block - 1))
  return deepest


def feature_shape(layer: str, height: int, width: int) -> tuple[int, int]:
  """Spatial size of ``layer``'s feature map for an image of ``height x width``."""
  block = _block_of(layer)
  pools = block if layer.startswith("pool") else block - 1
  for _ in range(pools):
    height, width = height // 2, width // 2
  return height, width


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["convs"],
                   meta_fields=["arch", "preprocessing", "normalized"])
@dataclasses.dataclass(frozen=True)
class VGGParams:
  """Frozen VGG weights.

  Attributes:
    convs: ``{"conv1_1": {"kernel": (3, 3, Cin, Cout), "bias": (Cout,)}, ...}``,
      kernels HWIO, cross-correlation (as Caffe, Keras and PyTorch). After
      :func:`prepare` each entry also has ``kernel_flipped``.
    arch: ``"vgg16"`` or ``"vgg19"``.
    preprocessing: ``"caffe"`` or ``"torch"``; how the weights expect images.
    normalized: whether filter-mean normalisation (:mod:`nstjax.normalize`)
      was applied; the default loss weights differ.
  """
  convs: Mapping[str, Mapping[str, Array]]
  arch: str
  preprocessing: str
  normalized: bool = False

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(int(self.convs[f"conv{b}_1"]["bias"].shape[-1])
                 for b, _, _ in BLOCKS[self.arch])


def _per_channel(values, like: Array) -> Array:
  """``values`` (3,) shaped to broadcast against ``like`` (..., 3) without rank promotion."""
  return jnp.asarray(values, like.dtype).reshape((1,) * (like.ndim - 1) + (-1,))


def preprocess(image: Array, preprocessing: str, input_scale: float | None = None) -> Array:
  """RGB image in [0, 1], shape (..., H, W, 3) -> network input.

  ``caffe``: BGR, times ``input_scale`` (default 255; jcjohnson/neural-style
  uses 256), minus ``CAFFE_BGR_MEAN``. ``torch``: RGB,
  ``(x - IMAGENET_MEAN) / IMAGENET_STD`` (``input_scale`` must be ``None``).
  """
  if preprocessing == "caffe":
    scale = 255.0 if input_scale is None else float(input_scale)
    return image[..., ::-1] * scale - _per_channel(CAFFE_BGR_MEAN, image)
  if input_scale is not None:
    raise NSTError(f"an input scale applies to Caffe-preprocessed weights, not {preprocessing!r}")
  if preprocessing == "torch":
    return (image - _per_channel(IMAGENET_MEAN, image)) / _per_channel(IMAGENET_STD, image)
  raise NSTError(f"unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSINGS}")


def deprocess(x: Array, preprocessing: str, input_scale: float | None = None) -> Array:
  """Inverse of :func:`preprocess`: network input -> RGB image in [0, 1] scale."""
  if preprocessing == "caffe":
    scale = 255.0 if input_scale is None else float(input_scale)
    return ((x + _per_channel(CAFFE_BGR_MEAN, x)) / scale)[..., ::-1]
  if preprocessing == "torch":
    return x * _per_channel(IMAGENET_STD, x) + _per_channel(IMAGENET_MEAN, x)
  raise NSTError(f"unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSINGS}")


PRECISIONS = ("fp32", "tf32", "bf16")


def _conv(x, kernel, precision: str = "tf32"):
  """3x3 SAME convolution under a precision policy.

  ``tf32``: JAX's default precision (fp32 on a CPU, TF32 on Ampere+ GPUs, one
  bf16 pass on a TPU). ``fp32``: ``Precision.HIGHEST`` (true fp32 everywhere).
  ``bf16``: operands in bf16, products accumulated in fp32
  (``preferred_element_type``); the result is fp32.
  """
  if precision == "bf16":
    return jax.lax.conv_general_dilated(
        x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), "SAME",
        dimension_numbers=_DIMENSION_NUMBERS, preferred_element_type=jnp.float32)
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=_DIMENSION_NUMBERS,
      precision=jax.lax.Precision.HIGHEST if precision == "fp32" else None)


def flip_kernel(kernel: Array) -> Array:
  """HWIO kernel -> the kernel whose SAME convolution is the input gradient."""
  return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def frozen_conv(x: Array, kernel: Array, kernel_flipped: Array, precision: str = "tf32") -> Array:
  """3x3 stride-1 SAME convolution whose gradient flows to ``x`` only.

  Equal to ``lax.conv_general_dilated`` and its autodiff input gradient, but
  the backward pass uses ``kernel_flipped`` (= ``flip_kernel(kernel)``) given
  as an argument. On XLA:CPU the autodiff input-gradient convolution runs
  4-6x slower inside ``while_loop`` bodies (jax-ml/jax#12868; optax's line
  search evaluates the loss inside one); a precomputed flipped kernel keeps it
  on the fast path. No weight gradient is computed: the network is frozen.
  ``precision``: see :func:`_conv` (the backward convolution uses it too).
  """
  return _conv(x, kernel, precision)


def _frozen_conv_fwd(x, kernel, kernel_flipped, precision):
  return _conv(x, kernel, precision), (kernel_flipped, jnp.zeros((0,), x.dtype))


def _frozen_conv_bwd(precision, res, g):
  kernel_flipped, like = res
  return _conv(g, kernel_flipped, precision).astype(like.dtype), None, None


frozen_conv.defvjp(_frozen_conv_fwd, _frozen_conv_bwd)


# Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for
# Convolutional Neural Networks", CVPR 2016): a 6x6 input tile gives a 4x4 output
# tile with 36 products per channel pair instead of 144. Y = A^T [(G g G^T) * (B^T d B)] A.
_WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                        np.float32)
_WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float32)
_WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                         [0, 1, -1, 8, -8, 1]], np.float32)
_TILE, _OUT = 6, 4


def winograd_kernel(kernel: Array) -> Array:
  """HWIO 3x3 kernel -> its Winograd F(4,3) transform ``G g G^T``, (36, Cin, Cout).

  Computed once per run (the network is frozen); 4x the kernel's size.
  """
  # (column position, row position, Cin, Cout): the order winograd_conv's tiles take
  u = jnp.einsum("ai,ijco,bj->baco", _WINOGRAD_G, kernel, _WINOGRAD_G,
                 precision=jax.lax.Precision.HIGHEST)
  return u.reshape(_TILE * _TILE, *kernel.shape[2:])


def winograd_conv(x: Array, u: Array, precision: str = "tf32") -> Array:
  """3x3 stride-1 SAME convolution of NHWC ``x`` by Winograd F(4,3).

  Equal to ``lax.conv_general_dilated`` with the kernel ``u`` was made from
  (:func:`winograd_kernel`) to float32 rounding (relative error ~2e-5 at
  VGG's widths): the input is cut into 6x6 tiles overlapping by 2, each tile
  and channel transformed by ``B^T d B``, multiplied with ``u`` as 36 matmuls
  (one per tile position), and transformed back by ``A^T m A``. The input
  gradient is the same steps transposed, written out (no convolution, no
  flipped kernel, the matmuls against the same ``u``). Large maps run in bands
  of tile rows that fit a CPU's cache (one band per ``_BAND_ELEMENTS`` of tile
  input, at most ``_MAX_BANDS``), each band a separate set of fusions. Any
  height and width (edge tiles zero-padded). ``precision``: ``tf32`` or ``fp32`` (the matmuls at
  ``Precision.HIGHEST``); no bf16: the transforms' constants amplify its
  rounding.
  """
  n, h, w, c = x.shape
  th, tw = -(-h // _OUT), -(-w // _OUT)
  xp = jnp.pad(x, ((0, 0), (1, th * _OUT - h + 1), (1, tw * _OUT - w + 1), (0, 0)))
  # tile rows per band; at most _MAX_BANDS bands (each is its own code: compile time)
  rows = max(1, _BAND_ELEMENTS // (n * tw * c), -(-th // _MAX_BANDS))
  bands = [_winograd_valid(xp[:, r * _OUT:min(th, r + rows) * _OUT + 2], u, precision)
           for r in range(0, th, rows)]
  y = bands[0] if len(bands) == 1 else jnp.concatenate(bands, axis=1)
  return y[:, :h, :w]


# Tile-channel elements of one band: 256 tiles x 512 channels (a 64 x 64 x 512 map) ran
# its transforms at memory speed on the project's CPU; 1024 x 256 took 4-5x longer per
# element (the stacked outputs no longer fit in cache).
_BAND_ELEMENTS = 256 * 512
_MAX_BANDS = 8


def _combine(matrix, parts):
  """``[sum_i matrix[r, i] * parts[i] for r]`` as adds of the non-zero terms (fused by XLA)."""
  out = []
  for row in np.asarray(matrix):
    acc = None
    for coef, part in zip(row, parts):
      if coef == 0:
        continue
      term = part if coef == 1 else -part if coef == -1 else part * float(coef)
      acc = term if acc is None else acc + term
    out.append(acc)
  return out


def _dot(precision):
  return jax.lax.Precision.HIGHEST if precision == "fp32" else None


def _stage(matrix, parts, axis):
  """One transform stage: :func:`_combine`'s outputs stacked along ``axis`` (one fusion)."""
  return jnp.stack(_combine(matrix, parts), axis=axis)


# The transforms run in two stages (rows, then columns), each a stack of six sums
# over whole arrays: the same memory passes as 36 sums of 16 terms, in a sixth of
# the code XLA compiles.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _winograd_valid(xp: Array, u: Array, precision: str) -> Array:
  """VALID 3x3 convolution of ``xp`` (n, 4a + 2, 4b + 2, c) -> (n, 4a, 4b, o)."""
  n, hp, wp, c = xp.shape
  a, b = (hp - 2) // _OUT, (wp - 2) // _OUT
  rows = _stage(_WINOGRAD_BT, [xp[:, i:i + a * _OUT:_OUT] for i in range(_TILE)], 0)
  v = _stage(_WINOGRAD_BT, [rows[:, :, :, j:j + b * _OUT:_OUT] for j in range(_TILE)], 0)
  m = jnp.einsum("pnc,pco->pno", v.reshape(_TILE * _TILE, -1, c), u, precision=_dot(precision))
  m = m.reshape(_TILE, _TILE, n, a, b, -1)                       # (y, x, n, a, b, o)
  s = _stage(_WINOGRAD_AT, [m[:, x] for x in range(_TILE)], 0)   # (i, y, n, a, b, o)
  y = _stage(_WINOGRAD_AT, [s[:, y] for y in range(_TILE)], -2)  # (i, n, a, b, j, o)
  return y.transpose(1, 2, 0, 3, 4, 5).reshape(n, a * _OUT, b * _OUT, -1)


def _winograd_valid_fwd(xp, u, precision):
  return _winograd_valid(xp, u, precision), (u, jnp.zeros((0,) + xp.shape, xp.dtype))


def _winograd_valid_bwd(precision, res, g):
  u, like = res
  n, hp, wp, c = like.shape[1:]
  a, b = (hp - 2) // _OUT, (wp - 2) // _OUT
  g = g.reshape(n, a, _OUT, b, _OUT, -1)
  gs = _stage(_WINOGRAD_AT.T, [g[:, :, :, :, j] for j in range(_OUT)], 0)   # (y, n, a, i, b, o)
  gm = _stage(_WINOGRAD_AT.T, [gs[:, :, :, i] for i in range(_OUT)], 1)     # (y, x, n, a, b, o)
  gv = jnp.einsum("pno,pco->pnc", gm.reshape(_TILE * _TILE, -1, g.shape[-1]), u,
                  precision=_dot(precision)).reshape(_TILE, _TILE, n, a, b, c)
  r = _stage(_WINOGRAD_BT.T, [gv[:, x] for x in range(_TILE)], 0)          # (i, y, n, a, b, c)
  t = _stage(_WINOGRAD_BT.T, [r[:, y] for y in range(_TILE)], -2)          # (i, n, a, b, j, c)
  t = t.transpose(1, 2, 0, 3, 4, 5)                                        # (n, a, i, b, j, c)
  return _overlap_add(_overlap_add(t, 1), 2), None


def _overlap_add(tiles: Array, axis: int) -> Array:
  """Tiles of 6 along ``axis + 1`` at a stride of 4 along ``axis`` -> their sum, 4t + 2 long."""
  pad = lambda a, lo, hi: jnp.pad(a, [(0, 0)] * axis + [(lo, hi)] + [(0, 0)] * (a.ndim - axis - 1))
  shape = tiles.shape[:axis] + (tiles.shape[axis] * _OUT,) + tiles.shape[axis + 2:]
  head = jax.lax.slice_in_dim(tiles, 0, _OUT, axis=axis + 1).reshape(shape)
  tail = jax.lax.slice_in_dim(tiles, _OUT, _TILE, axis=axis + 1)
  tail = jnp.pad(tail, [(0, 0)] * (axis + 1) + [(0, 2 * _OUT - _TILE)]
                 + [(0, 0)] * (tiles.ndim - axis - 2)).reshape(shape)
  return jax.lax.slice_in_dim(pad(head, 0, _OUT) + pad(tail, _OUT, 0), 0, shape[axis] + 2, axis=axis)


_winograd_valid.defvjp(_winograd_valid_fwd, _winograd_valid_bwd)


def convs_needed(arch: str, layers) -> tuple[str, ...]:
  """The conv layers that computing ``layers`` runs through, in order."""
  order = [name for name, _, _ in conv_layers(arch)]
  last = 0
  for layer in layers:
    block = _block_of(layer)
    if layer.startswith("pool"):
      idx = max(i for i, n in enumerate(order) if _block_of(n) == block)
    else:
      idx = order.index("conv" + layer.lstrip("convrelu"))
    last = max(last, idx)
  return tuple(order[: last + 1])


def prepare(params: VGGParams, layers=None, winograd=()) -> VGGParams:
  """Adds ``kernel_flipped`` to every conv so :func:`features` uses :func:`frozen_conv`.

  With ``layers``, convs deeper than the deepest of them are dropped (the
  default style layers never use conv5_2..conv5_4: 28 MB of VGG19). The convs
  named in ``winograd`` get ``winograd`` (:func:`winograd_kernel`) in place of
  their kernels, and :func:`features` runs them by :func:`winograd_conv`.
  """
  keep = convs_needed(params.arch, layers) if layers is not None else tuple(params.convs)
  kept = {name: params.convs[name] for name in keep}
  unknown = sorted(set(winograd) - set(kept))
  if unknown:
    raise NSTError(f"no conv {unknown[0]!r} among {', '.join(kept)}")
  direct = {name: p["kernel"] for name, p in kept.items() if name not in winograd}
  fast = {name: p["kernel"] for name, p in kept.items() if name in winograd}
  flipped, transformed = _transform_all(direct, fast)  # one program, not 30
  convs = {name: ({"winograd": transformed[name]} if name in fast else
                  {"kernel": p["kernel"], "kernel_flipped": flipped[name]}) | {"bias": p["bias"]}
           for name, p in kept.items()}
  return dataclasses.replace(params, convs=convs)


@jax.jit
def _transform_all(direct, fast):
  return ({name: flip_kernel(k) for name, k in direct.items()},
          {name: winograd_kernel(k) for name, k in fast.items()})


def conv_algorithm(params: VGGParams) -> str:
  """``"winograd"`` if :func:`prepare` gave any conv Winograd kernels, else ``"direct"``."""
  return "winograd" if any("winograd" in c for c in params.convs.values()) else "direct"


def winograd_convs(arch: str, layers=None, widths=None, min_channels: int = 0) -> tuple[str, ...]:
  """The convs Winograd F(4,3) may run: those of blocks 3-5 after conv3_1 whose input has
  at least ``min_channels`` channels, of those ``layers`` need.

  On the project's CPU it runs VGG19's (256 and 512 input channels) in 0.5-0.8x
  XLA's time (forward + input gradient, BENCHMARKS); at 64 and 128 channels its
  transforms cost more than the products save.
  """
  needed = set(convs_needed(arch, layers)) if layers is not None else None
  convs = conv_layers(arch, widths)
  first = next(i for i, (name, _, _) in enumerate(convs) if name == "conv3_1")
  return tuple(name for name, c_in, _ in convs[first + 1:]
               if c_in >= min_channels and (needed is None or name in needed))


def pool2x2(x: Array, pooling: str) -> Array:
  """2x2 stride-2 max or average pooling of (N, H, W, C); odd edges dropped (as Caffe's VALID)."""
  window = (1, 2, 2, 1)
  if pooling == "max":
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID") * 0.25


def features(params: VGGParams, image: Array, *, layers: tuple[str, ...],
             pooling: str = "max", input_scale: float | None = None,
             precision: str = "tf32", origin=None, extent=None) -> dict[str, Array]:
  """Named VGG activations of one image.

  Args:
    params: the network (see :class:`VGGParams`); its ``preprocessing`` is
      applied here, so images are always RGB in [0, 1].
    image: float array (H, W, 3), RGB, values in [0, 1].
    layers: names such as ``("relu1_1", "conv4_2", "pool3")``; static under
      jit. The network runs only up to the deepest of them.
    pooling: ``"max"`` or ``"avg"`` (Gatys et al. use average pooling).
    input_scale: Caffe weights: the pixel scale (:func:`preprocess`).
    precision: ``tf32`` (JAX's default), ``fp32`` or ``bf16`` (convolutions
      and stored activations in bf16, accumulation in fp32); see
      :func:`_conv`. The returned features are always float32.
    origin, extent: ``image`` is a window of a larger image: ``origin`` =
      (y0, x0), the window's top-left corner in that image's pixels (may be
      traced, may be negative; multiples of ``2**pools`` so that the pooling
      grid is the large image's), ``extent`` = (H, W), the large image's size
      (static). Every layer's input is zeroed outside the large image, so the
      window's features equal the large image's wherever the window holds
      their receptive field (:mod:`nstjax.tiling`). Positions outside the
      large image hold garbage; ignore them.

  Returns:
    ``{name: (h, w, C)}`` for every name in ``layers``.

  >>> import jax, jax.numpy as jnp
  >>> from nstjax import vgg
  >>> p = vgg.random_params(jax.random.key(0), "vgg19", widths=(4, 4, 8, 8, 8))
  >>> f = vgg.features(p, jnp.zeros((32, 32, 3)), layers=("relu1_1", "pool2"))
  >>> {k: v.shape for k, v in f.items()}
  {'relu1_1': (32, 32, 4), 'pool2': (8, 8, 4)}
  """
  if pooling not in POOLINGS:
    raise NSTError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
  wanted = set(layers)
  x = preprocess(image, params.preprocessing, input_scale)[None]
  out = {}

  if precision not in PRECISIONS:
    raise NSTError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
  store = jnp.bfloat16 if precision == "bf16" else jnp.float32
  inside = (lambda v, level: v) if origin is None else functools.partial(
      _inside, origin=origin, extent=extent)
  level = 0
  x = inside(x, level)

  def tap(name, value):
    if name in wanted:
      out[name] = value[0].astype(jnp.float32)
      wanted.discard(name)

  for block, n, _ in BLOCKS[params.arch]:
    for i in range(1, n + 1):
      if not wanted:
        return out
      name = f"conv{block}_{i}"
      p = params.convs[name]
      if "winograd" in p:
        if precision == "bf16":
          raise NSTError("Winograd convolutions run in fp32 or tf32, not bf16")
        x = winograd_conv(x, p["winograd"], precision)
      elif "kernel_flipped" in p:
        x = frozen_conv(x, p["kernel"], p["kernel_flipped"], precision)
      else:
        x = _conv(x, p["kernel"], precision)
      x = x + p["bias"].reshape(1, 1, 1, -1)
      tap(name, x)
      x = inside(jax.nn.relu(x).astype(store), level)
      tap(f"relu{block}_{i}", x)
    if not wanted:
      return out
    level += 1
    # The name lets a jax.checkpoint policy keep only the blocks' outputs (bench/remat.py).
    x = checkpoint_name(inside(pool2x2(x, pooling), level), f"pool{block}")
    tap(f"pool{block}", x)
  return out


def _inside(x: Array, level: int, *, origin, extent) -> Array:
  """``x`` (1, h, w, C) at ``level`` (after ``level`` poolings) zeroed outside the large image."""
  def axis(start, size, n):
    index = jnp.arange(n) + start // 2 ** level
    return (index >= 0) & (index < size // 2 ** level)
  keep = (axis(origin[0], extent[0], x.shape[1])[:, None]
          & axis(origin[1], extent[1], x.shape[2])[None, :])
  return jnp.where(keep[None, :, :, None], x, jnp.zeros((), x.dtype))


def random_params(key: Array, arch: str = "vgg19", *, widths=None,
                  preprocessing: str = "torch") -> VGGParams:
  """He-normal random weights, zero biases: a stand-in network for tests."""
  convs = {}
  for name, c_in, c_out in conv_layers(arch, widths):
    key, sub = jax.random.split(key)
    std = (2.0 / (9 * c_in)) ** 0.5
    convs[name] = {"kernel": jax.random.normal(sub, (3, 3, c_in, c_out)) * std,
                   "bias": jnp.zeros((c_out,))}
  return VGGParams(convs=convs, arch=arch, preprocessing=preprocessing)
