"""The same VGG as a Flax Linen module, for code that composes Flax modules.

``FlaxVGG`` holds the convolutions as ``nn.Conv`` submodules named
``conv1_1`` ... with Flax's standard ``kernel`` (HWIO) / ``bias`` parameters,
so :func:`to_variables` renames :class:`nstjax.vgg.VGGParams` rather than
converting it. Its output equals :func:`nstjax.vgg.features` (tested). The
optimisation loop itself uses the pure function, which also carries the
pre-flipped kernels that keep XLA:CPU's input gradient fast.

>>> import jax, jax.numpy as jnp
>>> from nstjax import vgg
>>> from nstjax.flax_vgg import FlaxVGG, to_variables
>>> p = vgg.random_params(jax.random.key(0), "vgg19", widths=(4, 4, 8, 8, 8))
>>> model = FlaxVGG(arch="vgg19", preprocessing=p.preprocessing, widths=p.widths, layers=("relu2_1",))
>>> model.apply(to_variables(p), jnp.zeros((16, 16, 3)))["relu2_1"].shape
(8, 8, 4)
"""

from __future__ import annotations

import flax.linen as nn
import jax

from nstjax import vgg


class FlaxVGG(nn.Module):
  """VGG16/VGG19 features: ``apply(variables, image (H, W, 3) in [0, 1]) -> {layer: (h, w, C)}``.

  Attributes:
    arch, preprocessing, pooling: as in :mod:`nstjax.vgg`.
    layers: layer names to return; the network stops at the deepest.
    widths: per-block channels (``None``: the real VGG widths).
  """
  arch: str = "vgg19"
  preprocessing: str = "caffe"
  pooling: str = "max"
  layers: tuple[str, ...] = ("relu4_2",)
  widths: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, image):
    wanted = set(self.layers)
    widths = self.widths or tuple(c for _, _, c in vgg.BLOCKS[self.arch])
    x = vgg.preprocess(image, self.preprocessing)[None]
    out = {}
    for (block, n, _), width in zip(vgg.BLOCKS[self.arch], widths):
      for i in range(1, n + 1):
        if wanted <= out.keys():
          return out
        name = f"conv{block}_{i}"
        x = nn.Conv(width, (3, 3), padding="SAME", name=name)(x)
        if name in wanted:
          out[name] = x[0]
        x = jax.nn.relu(x)
        if f"relu{block}_{i}" in wanted:
          out[f"relu{block}_{i}"] = x[0]
      if wanted <= out.keys():
        return out
      x = vgg.pool2x2(x, self.pooling)
      if f"pool{block}" in wanted:
        out[f"pool{block}"] = x[0]
    return out


def to_variables(params: vgg.VGGParams, layers=None) -> dict:
  """``{"params": {"conv1_1": {"kernel", "bias"}, ...}}`` for :class:`FlaxVGG`.

  With ``layers``, only the convs those layers run through (Flax rejects none,
  but this keeps the tree minimal).
  """
  names = vgg.convs_needed(params.arch, layers) if layers is not None else tuple(params.convs)
  return {"params": {n: {"kernel": params.convs[n]["kernel"], "bias": params.convs[n]["bias"]}
                     for n in names}}
