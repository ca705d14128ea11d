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

# A source checkout. The editable install (editable_mode=strict) links each file
# into a tree with the installed layout; the real folder is added so that a module
# created since the install is found too. Running from the checkout's root imports
# this folder directly: the subpackages nstjax.weights and nstjax.cli are then the
# top-level weights/ and cli/ folders beside it (pyproject's package-dir).
# In an installed package neither applies.
_source = _os.path.dirname(_os.path.realpath(__file__))
if _source not in __path__:
  __path__.append(_source)
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "weights")):
  __path__.append(_os.path.dirname(_source))

# Names are imported on first use (PEP 562), so that ``import nstjax`` and the
# command's entry point are quick and can install signal handlers before JAX loads.
_EXPORTS = {
    "stylize_batch": "nstjax.batch", "StyleConfig": "nstjax.config",
    "attention_preset": "nstjax.config", "paper_preset": "nstjax.config",
    "NonFiniteLoss": "nstjax.errors", "NSTError": "nstjax.errors", "load_image": "nstjax.image",
    "Progress": "nstjax.pipeline", "Result": "nstjax.pipeline", "optimize": "nstjax.pipeline",
    "prepare": "nstjax.pipeline", "prepare_images": "nstjax.pipeline", "run": "nstjax.pipeline",
    "stylize": "nstjax.pipeline", "stylize_result": "nstjax.pipeline",
    "cache_info": "nstjax.programs", "clear_cache": "nstjax.programs",
    "VGGParams": "nstjax.vgg", "features": "nstjax.vgg", "load_weights": "nstjax.weights.registry",
}
_SUBMODULES = ("attention", "attention_map", "batch", "colour", "config", "errors", "files", "flax_vgg",
               "image", "jobs", "losses", "memory", "normalize", "objective", "optim", "pipeline",
               "programs", "style", "vgg", "weights", "cli")


def __getattr__(name):
  import importlib
  if name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
  elif name in _SUBMODULES:
    value = importlib.import_module(f"nstjax.{name}")
  else:
    raise AttributeError(f"module 'nstjax' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))


__all__ = [
    "NSTError", "NonFiniteLoss", "Progress", "Result", "StyleConfig", "VGGParams",
    "attention_preset", "batch", "cache_info", "clear_cache", "config", "features",
    "load_image", "load_weights", "losses", "objective", "optim", "optimize", "paper_preset",
    "pipeline", "prepare", "prepare_images", "programs", "run", "stylize", "stylize_batch",
    "stylize_result", "vgg",
]
__version__ = "0.1.0"
