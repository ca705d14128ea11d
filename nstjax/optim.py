"""The optimiser and the one step it takes.

``step(net, image, opt_state, evaluations, targets, weights) -> (State, metrics)``:
the network, the targets and the loss weights are all arguments, so a new
image of the same size, a new style or new weights reuse the compiled program
(:mod:`nstjax.programs` holds it). The loop around the step lives in
:mod:`nstjax.pipeline`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nstjax import lbfgs, objective
from nstjax.config import ADAM_LR

Array = jax.Array


class State(NamedTuple):
  """Optimisation state: the image being optimised and the optimiser's state."""
  image: Array          # (H, W, 3), RGB, nominally [0, 1] (not clipped during the run)
  opt_state: Any
  evaluations: Array    # int32 scalar: loss+gradient evaluations so far


def line_search(config) -> str | None:
  """The L-BFGS step rule ``config`` asks for (``None`` for Adam)."""
  if config.optimizer != "lbfgs":
    return None
  if config.line_search == "auto":
    # Backtracking: at 256 px on the shared images it reaches a lower loss than
    # optax's zoom after the same number of evaluations (BENCHMARKS.md, "Solver"),
    # with no data-dependent control flow in the step (zoom: 3 conditionals and
    # 3 while loops, each a device-to-host round trip on a GPU), on every backend.
    return "none" if config.lr is not None else "backtracking"
  return config.line_search


def make_optimizer(config) -> optax.GradientTransformation | None:
  """optax's L-BFGS with its zoom line search, or Adam; ``None`` for nstjax's own L-BFGS."""
  if config.optimizer == "adam":
    return optax.adam(config.lr if config.lr is not None else ADAM_LR)
  if line_search(config) == "zoom":
    return optax.lbfgs(memory_size=config.lbfgs_memory)
  return None


def uses_line_search(config) -> bool:
  return line_search(config) == "zoom"


class SolverState(NamedTuple):
  """nstjax's L-BFGS (``line_search`` ``none`` or ``backtracking``) between steps.

  The point the next step evaluates is :attr:`State.image`; the last accepted
  point, its gradient and history are in ``lbfgs`` (flat, in solver units:
  the image times ``pixel_scale``).
  """
  lbfgs: lbfgs.CompactLBFGSState
  value: Array       # loss at the accepted point (inf before the first)
  terms: Any         # {term: value} at the accepted point
  direction: Array   # (n,) search direction from the accepted point
  t: Array           # step length of the point being evaluated
  slope: Array       # gradient · direction at the accepted point (< 0)


ARMIJO_C1 = 1e-4          # sufficient decrease, as optax's and torch's line searches
SMALLEST_STEP = 1e-10     # below this the backtracking restarts from steepest descent


def _strong(tree):
  """Strips weak types so the state's type does not change after one update.

  optax's initial L-BFGS state holds weak-typed scalars that become strong after
  the first update, which would compile the step twice (anchors-jax §1.3a).
  """
  return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), tree)


def init_state(config, image: Array, terms: dict | None = None) -> State:
  """A fresh state at ``image``; the optimiser's buffers never alias the image.

  ``terms``: the term names (values ignored) nstjax's L-BFGS reports per step.
  """
  image = jnp.asarray(image, jnp.float32)
  optimizer = make_optimizer(config)
  if optimizer is not None:
    opt_state = _strong(optimizer.init(image))
  else:
    n = image.size
    opt_state = SolverState(
        lbfgs=lbfgs.init(n, config.lbfgs_memory), value=jnp.full((), jnp.inf, jnp.float32),
        terms={k: jnp.full((), jnp.inf, jnp.float32) for k in (terms or {})},
        direction=jnp.zeros((n,), jnp.float32), t=jnp.ones((), jnp.float32),
        slope=jnp.zeros((), jnp.float32))
  # The step donates opt_state; none of its buffers may be the image itself.
  opt_state = jax.tree.map(lambda a: jnp.array(a, copy=True), opt_state)
  return State(image=image, opt_state=opt_state, evaluations=jnp.zeros((), jnp.int32))


def accepted_image(config, state: State) -> Array:
  """The image a run ends with: the last accepted point for the backtracking
  line search (its pending trial point is unevaluated), else ``state.image``.
  Works on one state or a batch's stacked states."""
  if line_search(config) != "backtracking":
    return state.image
  hist = state.opt_state.lbfgs
  flat = (hist.params / config.pixel_scale).reshape(state.image.shape)
  started = (hist.count > 0).reshape(hist.count.shape + (1,) * 3)
  return jnp.where(started, flat, state.image)


def _own_lbfgs_step(config, value):
  """The step of nstjax's L-BFGS: one evaluation, no data-dependent control flow.

  ``value(x, net, targets, weights) -> (total, terms)``.

  ``none``: every point is accepted (a non-finite loss stops the run on the
  host) and the next is ``x + lr·d``; the first direction is the gradient
  scaled by ``min(1, 1/‖g‖₁)``, torch.optim.LBFGS's and Torch7's rule.
  ``backtracking``: a point is accepted when it satisfies Armijo's condition
  against the last accepted point; otherwise the next point is the accepted one
  plus a shorter step along the same direction (quadratic interpolation,
  clamped to [0.1, 0.5] of the step), one trial per step, so a step is always
  one evaluation and the compiled program has no conditional. Its first
  direction is scaled by ``min(1, 1/‖g‖₂)`` (optax's rule).
  """
  mode = line_search(config)
  scale = float(config.pixel_scale)
  lr = 1.0 if config.lr is None else float(config.lr)

  def step(net, image, opt_state, evaluations, targets, weights):
    (f, terms), g_img = jax.value_and_grad(value, has_aux=True)(image, net, targets, weights)
    u = image.reshape(-1) * scale
    g = g_img.reshape(-1) / scale
    st = opt_state
    first = st.lbfgs.count == 0
    finite = jnp.isfinite(f)
    if mode == "none":
      accept = finite
    else:
      armijo = f <= st.value + ARMIJO_C1 * st.t * st.slope
      accept = finite & (first | armijo)

    # Accepted: record the pair, new direction (a rejected point records nothing).
    hist, sg, yg = lbfgs.record(st.lbfgs, u, g, step=st.t * st.direction, take=accept)
    if mode == "none":
      gamma0 = jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(g)))
    else:
      gamma0 = jnp.minimum(1.0, 1.0 / jnp.linalg.norm(g))
    gamma = jnp.where(first, gamma0, hist.gamma)
    d = -lbfgs.direction(hist, g, sg, yg, gamma)
    slope = jnp.vdot(g, d)
    # A direction that does not descend (rounding): restart from steepest descent.
    bad = ~(slope < 0)
    d = jnp.where(bad, -gamma0 * g, d)
    slope = jnp.where(bad, -gamma0 * jnp.vdot(g, g), slope)
    t_acc = jnp.asarray(lr if mode == "none" else 1.0, jnp.float32)

    if mode == "none":
      new_st = SolverState(hist, f, terms, d, t_acc, slope)
      next_u = u + t_acc * d
    else:
      # Rejected: shorter step from the accepted point (quadratic model of f along d).
      dec = f - st.value - st.t * st.slope
      t_q = -st.slope * st.t * st.t / (2.0 * jnp.where(dec > 0, dec, 1.0))
      t_rej = jnp.clip(jnp.where(finite & (dec > 0), t_q, 0.1 * st.t), 0.1 * st.t, 0.5 * st.t)
      restart = ~accept & (t_rej < SMALLEST_STEP)
      # restart: the history forgotten, the count reset so the next point is a first one
      empty = lbfgs.forget(hist)
      hist = hist._replace(**{k: jnp.where(restart, getattr(empty, k), getattr(hist, k))
                              for k in ("pairs", "age", "gamma")},
                           count=jnp.where(restart, 0, hist.count))
      keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(accept, x, y), a, b)
      new_st = SolverState(hist, jnp.where(accept, f, st.value),
                           keep(terms, st.terms), jnp.where(accept, d, st.direction),
                           jnp.where(accept, t_acc, jnp.where(restart, 1.0, t_rej)),
                           jnp.where(accept, slope, st.slope))
      base_u = st.lbfgs.params
      next_u = jnp.where(accept, u + t_acc * d,
                         jnp.where(restart, base_u, base_u + t_rej * st.direction))
      f, terms = new_st.value, new_st.terms    # report the accepted point's losses
    new = State((next_u / scale).reshape(image.shape), new_st, evaluations + 1)
    return new, {"loss": f, "terms": terms, "evaluations": new.evaluations}

  return step


def make_step(config):
  """The unjitted step for ``config``'s static fields.

  ``step(net, image, opt_state, evaluations, targets, weights) -> (State, metrics)``,
  metrics ``{"loss": total loss at the incoming image, "evaluations": count}``
  and, for nstjax's L-BFGS and Adam, ``"terms"``: the named loss terms at the
  same image, from the step's own evaluation. With backtracking the loss and
  terms are the last accepted point's (a rejected trial is not reported).
  """
  optimizer = make_optimizer(config)
  terms_fn = objective.make_terms_fn(config)

  def value(x, net, targets, weights):
    terms = terms_fn(x, net=net, targets=targets, weights=weights)
    return objective.total(terms, weights), terms

  if optimizer is None:
    return _own_lbfgs_step(config, value)

  if uses_line_search(config):
    loss_fn = objective.make_objective(config)

    def step(net, image, opt_state, evaluations, targets, weights):
      kw = dict(net=net, targets=targets, weights=weights)
      cached = optax.tree.get(opt_state, "value")
      value_, grad = optax.value_and_grad_from_state(loss_fn)(image, state=opt_state, **kw)
      updates, opt_state = optimizer.update(grad, opt_state, image, value=value_, grad=grad,
                                            value_fn=loss_fn, **kw)
      info = optax.tree.get(opt_state, "info", default=None)
      line_search_evals = (info.num_linesearch_steps if info is not None else 1)
      # value_and_grad_from_state recomputes only when no finite value is cached.
      evals = line_search_evals + jnp.where(jnp.isfinite(cached), 0, 1)
      new = State(optax.apply_updates(image, updates), opt_state,
                  evaluations + jnp.asarray(evals, jnp.int32))
      return new, {"loss": value_, "evaluations": new.evaluations}
  else:   # Adam: one evaluation per step
    def step(net, image, opt_state, evaluations, targets, weights):
      (f, terms), grad = jax.value_and_grad(value, has_aux=True)(image, net, targets, weights)
      # optax's Adam bias correction raises a Python float to an int32 count,
      # which strict dtype promotion refuses; allow standard promotion there only.
      with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grad, opt_state, image)
      new = State(optax.apply_updates(image, updates), opt_state, evaluations + 1)
      return new, {"loss": f, "terms": terms, "evaluations": new.evaluations}

  return step


def initial_image(config, content: Array, style: Array) -> Array:
  """The start image ``config.init`` names: the content, the style (resized) or seeded noise."""
  if config.init == "content":
    return jnp.asarray(content, jnp.float32)
  if config.init == "style":
    return jax.image.resize(jnp.asarray(style, jnp.float32), content.shape, "linear")
  key = jax.random.key(config.seed)
  return jax.random.uniform(key, content.shape, jnp.float32)
