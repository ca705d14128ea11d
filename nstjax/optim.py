"""Image optimisation: targets, one compiled step, and the loop around it.

The step is ``step(net, state, targets, weights) -> (state, metrics)``: the
network, the content/style targets and the loss weights are all arguments, so
a new image of the same size, a new style or new α/β reuse the compiled
program. The loop is plain Python around that one step (progress, intermediate
saves, NaN and Ctrl-C handling happen between steps).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nstjax import attention as nattention
from nstjax import losses, vgg
from nstjax import style as nstyle
from nstjax.config import ADAM_LR, StyleConfig
from nstjax.errors import NonFiniteLoss, NSTError

Array = jax.Array


class State(NamedTuple):
  """Optimisation state: the image being optimised and the optimiser's state."""
  image: Array          # (H, W, 3), RGB, nominally [0, 1] (not clipped during the run)
  opt_state: Any
  evaluations: Array    # int32 scalar: loss+gradient evaluations so far


@dataclasses.dataclass(frozen=True)
class Progress:
  """What the loop reports after each step (to ``callback``)."""
  iteration: int          # steps done
  iterations: int         # steps asked for
  evaluations: int        # loss+gradient evaluations done
  loss: float             # total loss at the image this step started from
  elapsed: float          # seconds in the loop so far
  image: Array            # current image (H, W, 3), unclipped
  terms: dict | None = None   # named loss terms at ``image`` every ``terms_every`` steps


def all_layers(config: StyleConfig) -> tuple[str, ...]:
  attention = config.attention_layers if config.attention_weight else ()
  return tuple(dict.fromkeys(config.content_layers + config.style_layers + attention))


def check_image_sizes(config: StyleConfig, content, style) -> None:
  """Raises NSTError if an image is too small for a layer it must pass through."""
  style_side = config.style_layers + (config.attention_layers if config.attention_weight else ())
  for what, img, lays in (("content", content, all_layers(config)), ("style", style, style_side)):
    need = vgg.min_image_size(lays)
    if min(img.shape[:2]) < need:
      deepest = max(lays, key=lambda name: vgg.min_image_size((name,)))
      raise NSTError(f"{what} image is {img.shape[1]}x{img.shape[0]} but {deepest} "
                     f"needs at least {need}x{need}; use a larger --size or shallower layers")


def attention_targets(net: vgg.VGGParams, content: Array, style: Array,
                      config: StyleConfig) -> dict[str, Array]:
  """SA (eq. 7) for every attention layer, chunked within ``config.attention_memory``."""
  if not config.attention_weight:
    return {}
  layers = config.attention_layers
  fc = _features(net, content, layers=layers, pooling=config.pooling)
  fs = _features(net, style, layers=layers, pooling=config.pooling)
  out = {}
  for layer in layers:
    nc = fc[layer].shape[0] * fc[layer].shape[1]
    ns = fs[layer].shape[0] * fs[layer].shape[1]
    if nc == 0 or ns == 0:
      raise NSTError(f"{layer}'s feature map is empty at this size; use a larger --size")
    c = fc[layer].shape[-1]
    if config.attention_chunks is not None:
      q_chunk, k_chunk = config.attention_chunks
    else:
      q_chunk, k_chunk = nattention.choose_chunks(
          nc, ns, c, c, nattention.parse_bytes(config.attention_memory))
    out[layer] = nattention.attention_target(fc[layer], fs[layer],
                                             temperature=config.attention_temperature,
                                             q_chunk=q_chunk, k_chunk=k_chunk)
  return out


_features = jax.jit(vgg.features, static_argnames=("layers", "pooling"))


def compute_targets(net: vgg.VGGParams, content: Array, style: Array, *,
                    content_layers: tuple[str, ...], style_layers: tuple[str, ...],
                    pooling: str, style_spec: nstyle.StyleSpec | None = None) -> losses.Targets:
  """Content features and style targets (Gram matrices by default); once per run."""
  fc = _features(net, content, layers=content_layers, pooling=pooling)
  fs = _features(net, style, layers=style_layers, pooling=pooling)
  return losses.Targets(content={k: fc[k] for k in content_layers},
                        style=nstyle.style_targets({k: fs[k] for k in style_layers},
                                                   style_spec or nstyle.StyleSpec()))


def make_targets(net: vgg.VGGParams, content: Array, style: Array,
                 config: StyleConfig) -> losses.Targets:
  """Every target of ``config``'s objective: content features, style targets, attention SA."""
  targets = compute_targets(net, content, style, content_layers=config.content_layers,
                            style_layers=config.style_layers, pooling=config.pooling,
                            style_spec=config.style_spec())
  return targets._replace(attention=attention_targets(net, content, style, config))


def make_weights(config: StyleConfig, preprocessing: str, normalized: bool = False) -> losses.Weights:
  w = config.loss_weights(preprocessing, normalized)
  cw, sw = config.layer_weights()
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return losses.Weights(content=f32(w["content"]), style=f32(w["style"]), tv=f32(w["tv"]),
                        content_layers={k: f32(v) for k, v in cw.items()},
                        style_layers={k: f32(v) for k, v in sw.items()},
                        attention=f32(config.attention_weight),
                        attention_layers={k: f32(v) for k, v in config.attention_layer_table().items()})


def make_loss_fns(layers: tuple[str, ...], pooling: str, style_loss: str = "gram",
                  attention_gram: str = "centered"):
  """(objective, terms): total loss of an image, and its named terms."""
  style_fn = nstyle.REPRESENTATIONS[style_loss].loss
  attention_fn = nattention.ATTENTION_LOSSES[attention_gram]

  def terms(image, *, net, targets, weights):
    feats = vgg.features(net, image, layers=layers, pooling=pooling)
    return losses.loss_terms(feats, image, targets, weights, style_fn=style_fn,
                             attention_fn=attention_fn)

  def objective(image, *, net, targets, weights):
    return losses.total(terms(image, net=net, targets=targets, weights=weights), weights)

  return objective, terms


def make_optimizer(config: StyleConfig) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(config.lr if config.lr is not None else ADAM_LR)
  if config.lr is not None:   # fixed step, no line search (torch.optim.LBFGS's default)
    return optax.lbfgs(learning_rate=config.lr, memory_size=config.lbfgs_memory, linesearch=None)
  return optax.lbfgs(memory_size=config.lbfgs_memory)


def _strong(tree):
  """Strips weak types so the state's type does not change after one update.

  optax's initial L-BFGS state holds weak-typed scalars that become strong after
  the first update, which would compile the step twice (anchors-jax §1.3a).
  """
  return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), tree)


def init_state(optimizer: optax.GradientTransformation, image: Array) -> State:
  image = jnp.asarray(image, jnp.float32)
  # The step donates opt_state; none of its buffers may be the image itself.
  opt_state = jax.tree.map(lambda a: jnp.array(a, copy=True), _strong(optimizer.init(image)))
  return State(image=image, opt_state=opt_state, evaluations=jnp.zeros((), jnp.int32))


class Step:
  """``step(net, state, targets, weights) -> (state, metrics)``, compiled once.

  ``state.opt_state`` is donated (the L-BFGS history is updated in place, not
  copied every step); ``state.image`` is not, so the caller may keep it.
  metrics: ``{"loss": total loss at the incoming image, "evaluations": count}``.
  """

  def __init__(self, fn):
    self.fn = fn   # unjitted (net, image, opt_state, evaluations, targets, weights) -> (State, metrics)
    self._jitted = jax.jit(fn, donate_argnums=(2,))

  @staticmethod
  def _args(net, state, targets, weights):
    return (net, state.image, state.opt_state, state.evaluations, targets, weights)

  def __call__(self, net, state, targets, weights):
    return self._jitted(*self._args(net, state, targets, weights))

  def compile(self, net, state, targets, weights):
    """AOT-compiles for these shapes; returns a callable with the same signature."""
    compiled = self._jitted.lower(*self._args(net, state, targets, weights)).compile()
    return lambda *a: compiled(*self._args(*a))


def make_step(config: StyleConfig, optimizer: optax.GradientTransformation) -> Step:
  """The compiled-once optimisation step for ``config`` (see :class:`Step`)."""
  objective, _ = make_loss_fns(all_layers(config), config.pooling, config.style_loss,
                               config.attention_gram)

  if config.optimizer == "lbfgs" and config.lr is None:   # with the zoom line search
    def step(net, image, opt_state, evaluations, targets, weights):
      state = State(image, opt_state, evaluations)
      kw = dict(net=net, targets=targets, weights=weights)
      cached = optax.tree.get(state.opt_state, "value")
      value, grad = optax.value_and_grad_from_state(objective)(
          state.image, state=state.opt_state, **kw)
      updates, opt_state = optimizer.update(grad, state.opt_state, state.image, value=value,
                                            grad=grad, value_fn=objective, **kw)
      info = optax.tree.get(opt_state, "info", default=None)
      line_search = (info.num_linesearch_steps if info is not None else 1)
      # value_and_grad_from_state recomputes only when no finite value is cached.
      evals = line_search + jnp.where(jnp.isfinite(cached), 0, 1)
      new = State(optax.apply_updates(state.image, updates), opt_state,
                  state.evaluations + jnp.asarray(evals, jnp.int32))
      return new, {"loss": value, "evaluations": new.evaluations}
  else:   # Adam, or L-BFGS with a fixed step: one evaluation per step
    def step(net, image, opt_state, evaluations, targets, weights):
      state = State(image, opt_state, evaluations)
      value, grad = jax.value_and_grad(objective)(state.image, net=net, targets=targets,
                                                  weights=weights)
      updates, opt_state = optimizer.update(grad, state.opt_state, state.image)
      new = State(optax.apply_updates(state.image, updates), opt_state, state.evaluations + 1)
      return new, {"loss": value, "evaluations": new.evaluations}

  return Step(step)


@functools.lru_cache(maxsize=16)
def _programs(config_key: StyleConfig):
  """(optimizer, step, terms) shared by every run with the same static configuration."""
  optimizer = make_optimizer(config_key)
  _, terms = make_loss_fns(all_layers(config_key), config_key.pooling, config_key.style_loss,
                           config_key.attention_gram)
  return optimizer, make_step(config_key, optimizer), jax.jit(terms)


def _static_key(config: StyleConfig) -> StyleConfig:
  """The config with every field that does not change the compiled program reset."""
  return dataclasses.replace(
      config, size=None, style_scale=1.0, iterations=0, content_weight=None,
      style_weight=None, tv_weight=None, content_layer_weights=None,
      style_layer_weights=None, init="content", seed=0,
      attention_weight=1.0 if config.attention_weight else 0.0, attention_layer_weights=None,
      attention_temperature=1.0, attention_memory="1GB", attention_chunks=None)


_COMPILED: dict = {}


def _signature(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def compiled_step(config: StyleConfig, net, state, targets, weights):
  """The step compiled for these argument shapes, and the seconds compiling took.

  Compiled once per (static configuration, shapes) in this process: a new
  content image of the same size, a new style or new loss weights reuse it
  (0 seconds).
  """
  key = (_static_key(config), _signature((net, state, targets, weights)))
  if key in _COMPILED:
    return _COMPILED[key], 0.0
  _, step, _ = _programs(key[0])
  t0 = time.perf_counter()
  compiled = step.compile(net, state, targets, weights)
  _COMPILED[key] = compiled
  return compiled, time.perf_counter() - t0


def initial_image(config: StyleConfig, content: Array, style: Array) -> Array:
  if config.init == "content":
    return jnp.asarray(content)
  if config.init == "style":
    return jax.image.resize(jnp.asarray(style), content.shape, "linear")
  key = jax.random.key(config.seed)
  return jax.random.uniform(key, content.shape, jnp.float32)


@dataclasses.dataclass
class Result:
  """The outcome of :func:`optimize`.

  Attributes:
    image: (H, W, 3) float32 numpy array in [0, 1] (clipped).
    status: ``"done"``, ``"interrupted"`` (Ctrl-C; the image is the last step's).
    summary: JSON-ready dict (iterations, evaluations, seconds, compile_seconds,
      losses, initial_losses, ...).
  """
  image: np.ndarray
  status: str
  summary: dict


def _floats(terms, weights):
  out = {k: float(v) for k, v in terms.items()}
  out["total"] = float(losses.total(terms, weights))
  return out


def optimize(net: vgg.VGGParams, content, style, config: StyleConfig = StyleConfig(), *,
             callback: Callable[[Progress], None] | None = None,
             terms_every: int = 10) -> Result:
  """Optimises an image to match ``content``'s features and ``style``'s Grams.

  Args:
    net: VGG weights (:func:`nstjax.load_weights`).
    content: (H, W, 3) float array, RGB in [0, 1], already at the working size.
    style: (H', W', 3) float array, RGB in [0, 1], already at the working size.
    config: the run's settings; ``size`` and ``style_scale`` are not applied
      here (see :func:`nstjax.stylize`).
    callback: called after every step with a :class:`Progress`.
    terms_every: every this many steps (and at the last) the callback also gets
      the named loss terms, at the cost of one forward pass.

  Returns:
    A :class:`Result`. A NaN or inf loss raises :class:`NonFiniteLoss`, which
    carries the last image whose loss was finite.
  """
  config.validate(net.arch)
  content = jnp.asarray(content, jnp.float32)
  style = jnp.asarray(style, jnp.float32)
  layers = all_layers(config)
  check_image_sizes(config, content, style)
  net = vgg.prepare(net, layers)
  optimizer, _, terms_fn = _programs(_static_key(config))
  weights = make_weights(config, net.preprocessing, net.normalized)
  targets = make_targets(net, content, style, config)
  state = init_state(optimizer, initial_image(config, content, style))
  kw = dict(net=net, targets=targets, weights=weights)
  initial = _floats(terms_fn(state.image, **kw), weights)

  compiled, compile_seconds = compiled_step(config, net, state, targets, weights)

  status, done, good_image = "done", 0, None
  t_loop = time.perf_counter()
  try:
    for iteration in range(1, config.iterations + 1):
      new_state, metrics = compiled(net, state, targets, weights)
      loss = float(metrics["loss"])      # the loss of state.image, the incoming image
      if not np.isfinite(loss):
        if done == 0:
          raise NonFiniteLoss(f"the loss of the initial image is {loss}; check the inputs "
                              f"and loss weights", iteration=0, image=None)
        raise NonFiniteLoss(
            f"loss became {loss} after iteration {done}; keeping the last image with a "
            f"finite loss (iteration {done - 1}); try smaller loss weights or learning rate",
            iteration=done - 1, image=np.clip(np.asarray(good_image), 0, 1))
      good_image, state, done = state.image, new_state, iteration
      if callback is not None:
        terms = None
        if terms_every and (iteration % terms_every == 0 or iteration == config.iterations):
          terms = _floats(terms_fn(state.image, **kw), weights)
        callback(Progress(iteration=iteration, iterations=config.iterations,
                          evaluations=int(metrics["evaluations"]), loss=loss,
                          elapsed=time.perf_counter() - t_loop, image=state.image,
                          terms=terms))
  except KeyboardInterrupt:
    status = "interrupted"
  seconds = time.perf_counter() - t_loop

  final_terms = _floats(terms_fn(state.image, **kw), weights)
  if not np.isfinite(final_terms["total"]):
    # The last step's result was never checked by the loop; its predecessor was.
    raise NonFiniteLoss(
        f"the loss of the final image is {final_terms['total']}; keeping the last image "
        f"with a finite loss (iteration {done - 1})", iteration=done - 1,
        image=None if good_image is None else np.clip(np.asarray(good_image), 0, 1))
  evaluations = int(state.evaluations)
  image = np.clip(np.asarray(state.image), 0.0, 1.0)
  summary = {
      "status": status,
      "iterations": done,
      "evaluations": evaluations,
      "seconds": round(seconds, 4),
      "seconds_per_evaluation": round(seconds / evaluations, 5) if evaluations else None,
      "compile_seconds": round(compile_seconds, 4),
      "initial_losses": initial,
      "losses": final_terms,
      "loss_weights": config.loss_weights(net.preprocessing, net.normalized),
      "style_representation": config.style_spec().describe(),
      "height": int(content.shape[0]), "width": int(content.shape[1]),
      "device": str(jax.devices()[0].device_kind) + f" ({jax.default_backend()})",
      "config": dataclasses.asdict(config),
  }
  return Result(image=image, status=status, summary=summary)
