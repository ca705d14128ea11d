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
    return tuple(int(self.convs[f"conv{b}_1"]["kernel"].shape[-1])
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


def prepare(params: VGGParams, layers=None) -> VGGParams:
  """Adds ``kernel_flipped`` to every conv so :func:`features` uses :func:`frozen_conv`.

  With ``layers``, convs deeper than the deepest of them are dropped (the
  default style layers never use conv5_2..conv5_4: 28 MB of VGG19).
  """
  keep = convs_needed(params.arch, layers) if layers is not None else tuple(params.convs)
  kept = {name: params.convs[name] for name in keep}
  flipped = _flip_all({name: p["kernel"] for name, p in kept.items()})  # one program, not 30
  convs = {name: {"kernel": p["kernel"], "bias": p["bias"], "kernel_flipped": flipped[name]}
           for name, p in kept.items()}
  return dataclasses.replace(params, convs=convs)


@jax.jit
def _flip_all(kernels):
  return {name: flip_kernel(k) for name, k in kernels.items()}


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
      if "kernel_flipped" in p:
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
