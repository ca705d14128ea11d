"""Filter-mean normalisation of a converted weights file (``nstjax weights normalize``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from nstjax import image as nimage
from nstjax import normalize as nnorm
from nstjax.errors import NSTError
from nstjax.weights import format as wformat

DEFAULT_SIZE = 256


def default_calibration_dir() -> Path:
  """The calibration set that ships with nstjax (three 256-px images)."""
  return Path(str(resources.files("nstjax") / "data" / "calibration"))


def load_calibration(folders=None, *, size: int = DEFAULT_SIZE, include_default: bool = True):
  """Images (resized to ``size`` on the long side) and a description of the set."""
  folders = [Path(f) for f in (folders or [])]
  if include_default:
    folders = [default_calibration_dir()] + folders
  if not folders:
    raise NSTError("no calibration folders given")
  files = [f for folder in folders for f in nimage.list_images(folder, "calibration folder")]
  images = [nimage.resize_long_side(nimage.load_image(f), size) for f in files]
  description = {"folders": [str(f) for f in folders], "images": len(files), "size": size,
                 "default_set": include_default}
  return images, description


def normalize_file(src, dst, *, folders=None, size: int = DEFAULT_SIZE, pooling: str = "max",
                   include_default: bool = True) -> Path:
  """Writes ``dst``: ``src`` with Gatys' filter-mean normalisation applied."""
  params, info = wformat.read(src)
  if params.normalized:
    raise NSTError(f"{src} is already normalised ({info['normalized'].get('calibration', {})}); "
                   f"normalising again would compound the scaling")
  images, description = load_calibration(folders, size=size, include_default=include_default)
  means = nnorm.filter_means(params, images, pooling=pooling)
  normalized = nnorm.normalize(params, means)
  factors = nnorm.compute_factors(means)
  record = {"method": "Gatys filter-mean normalisation (mean post-ReLU activation = 1)",
            "calibration": description, "pooling": pooling, "layers": nnorm.summary(means)}
  return wformat.write_params(
      dst, normalized, info, extra_attrs={"normalized": json.dumps(record)},
      extra_datasets={f"{n}/factor": np.asarray(f, np.float32) for n, f in factors.items()})
