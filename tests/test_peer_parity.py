"""Our loss terms equal the PyTorch peer's on the same weights, layers and images.

tests/data/peer_losses.json holds the peer's own numbers (make_peer_fixture.py
ran ../shared/peer/gatys.py); the weights are rebuilt here from the peer's
seeded numpy generator, so this test needs no torch.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import StyleConfig, load_image, objective, vgg

DATA = Path(__file__).parent / "data"
make_random_vgg = pytest.importorskip("make_random_vgg", reason="../shared/peer not beside the checkout")
RECORDS = json.loads((DATA / "peer_losses.json").read_text())["records"]


@pytest.fixture(scope="module")
def peer_convs():
  params = make_random_vgg.random_params("vgg19", 0)
  return {k: {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)} for k, (w, b) in params.items()}


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"{r['preprocessing']}-{r['pooling']}-{r['init']}")
def test_loss_terms_equal_peer(peer_convs, record):
  net = vgg.prepare(vgg.VGGParams(convs=peer_convs, arch="vgg19", preprocessing=record["preprocessing"]))
  content, style = load_image(DATA / "content64.png"), load_image(DATA / "style64.png")
  cfg = StyleConfig(size=None, pooling=record["pooling"], content_weight=1.0, style_weight=1e7, tv_weight=1.0)
  targets = objective.make_targets(net, content, style, cfg)
  weights = objective.make_weights(cfg, net.preprocessing)
  terms_fn = objective.make_terms_fn(cfg)
  image = content if record["init"] == "content" else style
  terms = terms_fn(jnp.asarray(image), net=net, targets=targets, weights=weights)
  for key in ("content", "style", "tv"):
    want = record["losses"][key]
    got = float(terms[key])
    # The peer prints 6 significant digits. A term that is zero (the image is
    # its own target) is judged against that term's size at the other init.
    scale = max(abs(r["losses"][key]) for r in RECORDS
                if (r["preprocessing"], r["pooling"]) == (record["preprocessing"], record["pooling"]))
    tol = 2e-5 * abs(want) if want else 1e-9 * scale
    assert abs(got - want) <= tol, (key, got, want)
