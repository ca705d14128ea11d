"""Obtaining and converting pretrained VGG weights (installed as ``nstjax.weights``)."""

import os as _os

# Editable install: also search the source folder behind the linked tree, so a
# module created since the install is found (see nstjax/__init__.py).
_source = _os.path.dirname(_os.path.realpath(__file__))
if _source not in __path__:
  __path__.append(_source)
