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

from nstjax import objective
from nstjax.config import ADAM_LR

Array = jax.Array


class State(NamedTuple):
  """Optimisation state: the image being optimised and the optimiser's state."""
  image: Array          # (H, W, 3), RGB, nominally [0, 1] (not clipped during the run)
  opt_state: Any
  evaluations: Array    # int32 scalar: loss+gradient evaluations so far


def make_optimizer(config) -> optax.GradientTransformation:
  """optax L-BFGS (zoom line search, or a fixed step when ``config.lr`` is set) or Adam."""
  if config.optimizer == "adam":
    return optax.adam(config.lr if config.lr is not None else ADAM_LR)
  if config.lr is not None:   # fixed step, no line search (torch.optim.LBFGS's default)
    return optax.lbfgs(learning_rate=config.lr, memory_size=config.lbfgs_memory, linesearch=None)
  return optax.lbfgs(memory_size=config.lbfgs_memory)


def uses_line_search(config) -> bool:
  return config.optimizer == "lbfgs" and config.lr is None


def _strong(tree):
  """Strips weak types so the state's type does not change after one update.

  optax's initial L-BFGS state holds weak-typed scalars that become strong after
  the first update, which would compile the step twice (anchors-jax §1.3a).
  """
  return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), tree)


def init_state(optimizer: optax.GradientTransformation, image: Array) -> State:
  """A fresh state at ``image``; the optimiser's buffers never alias the image."""
  image = jnp.asarray(image, jnp.float32)
  # The step donates opt_state; none of its buffers may be the image itself.
  opt_state = jax.tree.map(lambda a: jnp.array(a, copy=True), _strong(optimizer.init(image)))
  return State(image=image, opt_state=opt_state, evaluations=jnp.zeros((), jnp.int32))


def make_step(config, optimizer: optax.GradientTransformation | None = None):
  """The unjitted step for ``config``'s static fields.

  ``step(net, image, opt_state, evaluations, targets, weights) -> (State, metrics)``,
  metrics ``{"loss": total loss at the incoming image, "evaluations": count}``.
  """
  optimizer = optimizer or make_optimizer(config)
  loss_fn = objective.make_objective(config)

  if uses_line_search(config):
    def step(net, image, opt_state, evaluations, targets, weights):
      kw = dict(net=net, targets=targets, weights=weights)
      cached = optax.tree.get(opt_state, "value")
      value, grad = optax.value_and_grad_from_state(loss_fn)(image, state=opt_state, **kw)
      updates, opt_state = optimizer.update(grad, opt_state, image, value=value, grad=grad,
                                            value_fn=loss_fn, **kw)
      info = optax.tree.get(opt_state, "info", default=None)
      line_search = (info.num_linesearch_steps if info is not None else 1)
      # value_and_grad_from_state recomputes only when no finite value is cached.
      evals = line_search + jnp.where(jnp.isfinite(cached), 0, 1)
      new = State(optax.apply_updates(image, updates), opt_state,
                  evaluations + jnp.asarray(evals, jnp.int32))
      return new, {"loss": value, "evaluations": new.evaluations}
  else:   # Adam, or L-BFGS with a fixed step: one evaluation per step
    def step(net, image, opt_state, evaluations, targets, weights):
      value, grad = jax.value_and_grad(loss_fn)(image, net=net, targets=targets, weights=weights)
      # optax's Adam bias correction raises a Python float to an int32 count,
      # which strict dtype promotion refuses; allow standard promotion there only.
      with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grad, opt_state, image)
      new = State(optax.apply_updates(image, updates), opt_state, evaluations + 1)
      return new, {"loss": value, "evaluations": new.evaluations}

  return step


def initial_image(config, content: Array, style: Array) -> Array:
  """The start image ``config.init`` names: the content, the style (resized) or seeded noise."""
  if config.init == "content":
    return jnp.asarray(content, jnp.float32)
  if config.init == "style":
    return jax.image.resize(jnp.asarray(style, jnp.float32), content.shape, "linear")
  key = jax.random.key(config.seed)
  return jax.random.uniform(key, content.shape, jnp.float32)
