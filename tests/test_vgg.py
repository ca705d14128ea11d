"""The VGG forward pass against an independent numpy implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_WIDTHS, tiny_convs
from nstjax import NSTError, vgg


def np_conv_same(x, k, b):
  """3x3 stride-1 zero-padded cross-correlation, (H, W, Ci) x (3, 3, Ci, Co)."""
  h, w, _ = x.shape
  xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  out = np.zeros((h, w, k.shape[-1]), np.float64)
  for dy in range(3):
    for dx in range(3):
      out += xp[dy:dy + h, dx:dx + w, :] @ k[dy, dx]
  return out + b


def np_pool(x, kind):
  h, w, c = x.shape
  x = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
  return x.max(axis=(1, 3)) if kind == "max" else x.mean(axis=(1, 3))


def np_features(convs, image, arch, preprocessing, pooling):
  if preprocessing == "caffe":
    x = image[..., ::-1] * 255.0 - np.array(vgg.CAFFE_BGR_MEAN)
  else:
    x = (image - np.array(vgg.IMAGENET_MEAN)) / np.array(vgg.IMAGENET_STD)
  out = {}
  for block, n, _ in vgg.BLOCKS[arch]:
    for i in range(1, n + 1):
      k, b = convs[f"conv{block}_{i}"]
      x = np_conv_same(x, k.astype(np.float64), b)
      out[f"conv{block}_{i}"] = x
      x = np.maximum(x, 0)
      out[f"relu{block}_{i}"] = x
    x = np_pool(x, pooling)
    out[f"pool{block}"] = x
  return out


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("preprocessing", ["caffe", "torch"])
def test_features_match_numpy(arch, pooling, preprocessing):
  convs = tiny_convs(arch)
  net = vgg.VGGParams(convs={k: {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)} for k, (w, b) in convs.items()},
                      arch=arch, preprocessing=preprocessing)
  image = np.random.default_rng(0).random((36, 34, 3)).astype(np.float32)
  layers = ("conv1_1", "relu1_2", "pool1", "relu2_1", "relu3_1", "conv4_2", "relu5_1", "pool5")
  got = jax.jit(vgg.features, static_argnames=("layers", "pooling"))(net, image, layers=layers, pooling=pooling)
  ref = np_features(convs, image.astype(np.float64), arch, preprocessing, pooling)
  assert set(got) == set(layers)
  for name in layers:
    scale = np.abs(ref[name]).max() + 1e-6
    np.testing.assert_allclose(np.asarray(got[name]) / scale, ref[name] / scale, atol=2e-5, err_msg=name)


def test_prepared_net_gives_same_features_and_gradients(tiny_net):
  image = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
  layers = ("relu1_1", "relu3_1", "relu5_1")

  def loss(net, x):
    f = vgg.features(net, x, layers=layers, pooling="avg")
    return sum(jnp.sum(v**2) for v in f.values())

  prepared = vgg.prepare(tiny_net)
  v1, g1 = jax.jit(jax.value_and_grad(loss, argnums=1))(tiny_net, image)
  v2, g2 = jax.jit(jax.value_and_grad(loss, argnums=1))(prepared, image)
  np.testing.assert_allclose(v1, v2, rtol=1e-6)
  np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6 * float(jnp.abs(g1).max()))


def test_features_stop_at_deepest_layer(tiny_net):
  jaxpr = jax.make_jaxpr(lambda x: vgg.features(tiny_net, x, layers=("relu2_1",)))(jnp.zeros((16, 16, 3)))
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 3   # conv1_1, conv1_2, conv2_1


@pytest.mark.parametrize("preprocessing", ["caffe", "torch"])
def test_preprocess_deprocess_inverse(preprocessing):
  x = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
  back = vgg.deprocess(vgg.preprocess(x, preprocessing), preprocessing)
  np.testing.assert_allclose(back, x, atol=1e-5)


def test_caffe_preprocessing_is_bgr_0_255_minus_mean():
  red = np.zeros((1, 1, 3), np.float32)
  red[..., 0] = 1.0
  np.testing.assert_allclose(vgg.preprocess(red, "caffe")[0, 0], [-103.939, -116.779, 255 - 123.68], rtol=1e-6)


def test_layer_names_and_sizes():
  assert vgg.layer_names("vgg19")[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
  assert len([n for n in vgg.layer_names("vgg16") if n.startswith("conv")]) == 13
  assert vgg.min_image_size(("relu5_1",)) == 16
  assert vgg.min_image_size(("pool5",)) == 32
  assert vgg.min_image_size(("relu1_1",)) == 1
  assert vgg.feature_shape("relu4_2", 100, 60) == (12, 7)
  with pytest.raises(NSTError, match="unknown layer 'block4_conv2'.*Caffe names"):
    vgg.validate_layers("vgg19", ["block4_conv2"])
  with pytest.raises(NSTError, match="unknown layer 'relu3_4' for vgg16"):
    vgg.validate_layers("vgg16", ["relu3_4"])


def test_widths_property(tiny_net):
  assert tiny_net.widths == TINY_WIDTHS


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_flax_module_equals_pure_function(tiny_net, pooling):
  from nstjax.flax_vgg import FlaxVGG, to_variables
  layers = ("conv1_1", "relu2_2", "pool3", "relu5_1")
  model = FlaxVGG(arch="vgg19", preprocessing=tiny_net.preprocessing, pooling=pooling,
                  layers=layers, widths=tiny_net.widths)
  image = np.random.default_rng(4).random((32, 32, 3)).astype(np.float32)
  variables = to_variables(tiny_net, layers)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((32, 32, 3)))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  got = jax.jit(model.apply)(variables, image)
  ref = vgg.features(tiny_net, jnp.asarray(image), layers=layers, pooling=pooling)
  for k in layers:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5 * float(jnp.abs(ref[k]).max()))


# --- Winograd F(4,3) -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 13, 18, 5), (2, 8, 8, 3), (1, 3, 1, 4)])
@pytest.mark.parametrize("band", [None, 8])
def test_winograd_conv_equals_xla_conv_and_its_input_gradient(monkeypatch, shape, band):
  if band is not None:   # several bands of tile rows, the last one shorter
    monkeypatch.setattr(vgg, "_BAND_ELEMENTS", band * shape[-1] * shape[0])
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 6)), jnp.float32)
  u = vgg.winograd_kernel(k)
  direct = lambda x: vgg._conv(x, k, "fp32")
  winograd = lambda x: vgg.winograd_conv(x, u, "fp32")
  ref = np.stack([np_conv_same(np.asarray(xi, np.float64), np.asarray(k, np.float64), 0.0)
                  for xi in np.asarray(x)])
  np.testing.assert_allclose(jax.jit(winograd)(x), ref, atol=2e-5 * np.abs(ref).max())
  probe = jnp.asarray(rng.standard_normal(shape[:-1] + (6,)), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(f(x)) * probe))(x)
  g_direct, g_winograd = grad(direct), jax.jit(lambda x: grad(winograd))(x)
  np.testing.assert_allclose(g_winograd, g_direct, atol=2e-5 * float(jnp.abs(g_direct).max()))


def test_winograd_network_gives_the_same_features_and_gradients(tiny_net):
  image = np.random.default_rng(1).random((36, 28, 3)).astype(np.float32)
  layers = ("relu1_1", "relu3_1", "conv4_2", "relu5_1")
  fast = vgg.winograd_convs("vgg19", layers, TINY_WIDTHS)
  assert fast == ("conv3_2", "conv3_3", "conv3_4", "conv4_1", "conv4_2", "conv4_3", "conv4_4",
                  "conv5_1")
  direct, winograd = vgg.prepare(tiny_net, layers), vgg.prepare(tiny_net, layers, winograd=fast)
  assert "winograd" in winograd.convs["conv4_2"] and "kernel" not in winograd.convs["conv4_2"]
  assert "kernel_flipped" in winograd.convs["conv3_1"]

  def loss(net, x):
    f = vgg.features(net, x, layers=layers, pooling="avg", precision="fp32")
    return sum(jnp.sum(jnp.sin(v)) for v in f.values()), f

  (v1, f1), g1 = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True))(direct, image)
  (v2, f2), g2 = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True))(winograd, image)
  for name in layers:
    np.testing.assert_allclose(f2[name], f1[name], atol=2e-5 * float(jnp.abs(f1[name]).max()),
                               err_msg=name)
  np.testing.assert_allclose(g2, g1, atol=2e-5 * float(jnp.abs(g1).max()))
  with pytest.raises(NSTError, match="not bf16"):
    vgg.features(winograd, image, layers=layers, precision="bf16")
  with pytest.raises(NSTError, match="no conv 'conv5_4'"):
    vgg.prepare(tiny_net, layers, winograd=("conv5_4",))


def test_winograd_convs_are_blocks_3_to_5_after_conv3_1():
  assert vgg.winograd_convs("vgg19")[0] == "conv3_2" and len(vgg.winograd_convs("vgg19")) == 11
  assert vgg.winograd_convs("vgg16", ("relu4_1",)) == ("conv3_2", "conv3_3", "conv4_1")
  assert vgg.winograd_convs("vgg19", ("relu3_1",)) == ()
  assert vgg.winograd_convs("vgg16", ("relu4_2",), min_channels=512) == ("conv4_2",)
