"""nstjax: Gatys neural style transfer in JAX.

>>> import nstjax
>>> net = nstjax.load_weights()                      # doctest: +SKIP
>>> image = nstjax.stylize("content.jpg", "style.jpg",
...                        nstjax.StyleConfig(size=256, iterations=100),
...                        net=net)                  # doctest: +SKIP

This module only re-exports. The pieces: :mod:`nstjax.vgg` (``features``),
:mod:`nstjax.losses` (the loss primitives), :mod:`nstjax.objective` (the
registry of named loss terms), :mod:`nstjax.optim` (the optimiser and its
step), :mod:`nstjax.pipeline` (prepare, run, summarise), :mod:`nstjax.batch`
(many jobs), :mod:`nstjax.programs` (the compiled-program cache),
:mod:`nstjax.config` (the one config object).
"""

import os as _os

# In a source checkout the subpackages nstjax.weights and nstjax.cli are the
# top-level weights/ and cli/ folders beside this one (pyproject's
# package-dir); installed packages hold them inside this folder. Running from
# the checkout's root imports this folder directly, so find them beside it.
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "weights")):
  __path__.append(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

from nstjax import batch, config, losses, objective, optim, pipeline, programs, vgg
from nstjax.batch import stylize_batch
from nstjax.config import StyleConfig, attention_preset, paper_preset
from nstjax.errors import NonFiniteLoss, NSTError
from nstjax.image import load_image
from nstjax.pipeline import (Progress, Result, optimize, prepare, prepare_images, run, stylize,
                             stylize_result)
from nstjax.programs import cache_info, clear_cache
from nstjax.vgg import VGGParams, features
from nstjax.weights.registry import load_weights

__all__ = [
    "NSTError", "NonFiniteLoss", "Progress", "Result", "StyleConfig", "VGGParams",
    "attention_preset", "batch", "cache_info", "clear_cache", "config", "features",
    "load_image", "load_weights", "losses", "objective", "optim", "optimize", "paper_preset",
    "pipeline", "prepare", "prepare_images", "programs", "run", "stylize", "stylize_batch",
    "stylize_result", "vgg",
]
__version__ = "0.1.0"
