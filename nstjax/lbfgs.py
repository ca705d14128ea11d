"""Compact L-BFGS: the two-loop recursion's direction from a few matrix products.

Byrd, Nocedal & Schnabel (1994), "Representations of quasi-Newton matrices and
their use in limited memory methods", Theorem 2.2: with the history's
parameter and gradient differences stacked as ``S`` and ``Y`` (m, n),
``R = triu(S Yᵀ)``, ``D = diag(S Yᵀ)`` and ``H₀ = γI``,

.. math::

   H g = γ g + [Sᵀ\\; γYᵀ]\\,
   \\begin{bmatrix} R^{-T}(D + γ Y Yᵀ) R^{-1} & -R^{-T} \\\\ -R^{-1} & 0 \\end{bmatrix}
   \\begin{bmatrix} S g \\\\ γ Y g \\end{bmatrix}

The m x m products ``S Yᵀ`` and ``Y Yᵀ`` are kept up to date one row and
column per accepted pair, so a step reads the history twice (``[S; Y] @ [g, s,
y]`` and ``[S; Y]ᵀ @ q``) as two matrix products, where the two-loop recursion
runs 2m dependent dot/axpy pairs (about 1,200 small kernels per step on a GPU
at m = 100). The small triangular solves cost O(m²).

The history is a circular buffer of flat vectors (m, n): the image's last
dimension of 3 never becomes an array's minor dimension, which a TPU would pad
to 128 lanes.

:func:`scale_by_compact_lbfgs` is an optax ``GradientTransformation`` with
the contract of ``optax.scale_by_lbfgs``: it returns ``H g`` (chain it with a
negative step size) and records the pair from the previous call's parameters
and gradient. Its direction equals optax's within 1e-5 (tests/test_lbfgs.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST

# A pair enters the history only if s·y exceeds this (torch.optim.LBFGS and
# Torch7's optim.lbfgs use the same absolute threshold). s·y is invariant under
# a rescaling of the variables (s -> s/c, y -> c y), so the guard does not depend
# on the image's units.
CURVATURE_EPS = 1e-10


class CompactLBFGSState(NamedTuple):
  """History of ``m`` pairs as a circular buffer, with its small products."""
  count: Array      # int32: calls so far (0: no previous point yet)
  pairs: Array      # int32: pairs accepted so far (slot of the next: pairs % m)
  s: Array          # (m, n) parameter differences
  y: Array          # (m, n) gradient differences
  sy: Array         # (m, m) sy[i, j] = s_i · y_j
  yy: Array         # (m, m) yy[i, j] = y_i · y_j
  age: Array        # (m,) int32: when each slot was written (-1: empty)
  gamma: Array      # float32: H₀ = γ I, s·y / y·y of the newest accepted pair
  params: Array     # (n,) the previous call's parameters
  grad: Array       # (n,) and gradient


def init(n: int, memory_size: int, dtype=jnp.float32) -> CompactLBFGSState:
  m = memory_size
  return CompactLBFGSState(
      count=jnp.zeros((), jnp.int32), pairs=jnp.zeros((), jnp.int32),
      s=jnp.zeros((m, n), dtype), y=jnp.zeros((m, n), dtype),
      sy=jnp.zeros((m, m), dtype), yy=jnp.zeros((m, m), dtype),
      age=jnp.full((m,), -1, jnp.int32), gamma=jnp.ones((), dtype),
      params=jnp.zeros((n,), dtype), grad=jnp.zeros((n,), dtype))


def record(state: CompactLBFGSState, x: Array, g: Array, step: Array | None = None,
           take: Array | bool = True) -> tuple[CompactLBFGSState, Array, Array]:
  """Adds the pair (x - previous x, g - previous g) if its curvature is positive.

  ``step``: the step taken, ``t·d``, used for ``s`` instead of the difference of
  the iterates (as Torch7's optim.lbfgs does): in float32 the difference of two
  nearby images loses the step's low bits (a first step moves a pixel by ~1e-6).
  ``take=False`` (traced): a rejected trial point; nothing changes.

  The history is written one row at a time (an in-place update when the state
  is donated): no copy of the (m, n) buffers is ever made.

  Returns ``(state, Sg, Yg)`` with ``Sg = S g`` and ``Yg = Y g`` for the
  updated history (the direction needs them; they come from the same pass
  over the history as the new pair's products).
  """
  m = state.s.shape[0]
  take = jnp.asarray(take)
  s_new = x - state.params if step is None else step
  y_new = g - state.grad
  sy_new = jnp.vdot(s_new, y_new, precision=_HIGHEST)
  yy_new = jnp.vdot(y_new, y_new, precision=_HIGHEST)
  accept = (take & (state.count > 0) & (sy_new > CURVATURE_EPS)
            & jnp.isfinite(sy_new) & jnp.isfinite(yy_new))
  k = state.pairs % m

  def put(old, new):
    return jnp.where(accept, new, old)

  # Write row k first, then read the buffers once: XLA updates a donated buffer
  # in place only when no earlier read of it is pending (a read-then-write
  # order costs a copy of the whole history on XLA:CPU).
  s_hist = state.s.at[k].set(put(state.s[k], s_new))
  y_hist = state.y.at[k].set(put(state.y[k], y_new))
  stacked = jnp.stack([g, s_new, y_new], axis=1)                    # (n, 3)
  s_prod = jnp.matmul(s_hist, stacked, precision=_HIGHEST)           # (m, 3): S g, S s, S y
  y_prod = jnp.matmul(y_hist, stacked, precision=_HIGHEST)           # Y g, Y s, Y y
  # Row and column k of the small products (the new pair against every pair,
  # itself included): s_k·y_j = (Y s_k)_j, s_i·y_k = (S y_k)_i, y_k·y_j = (Y y_k)_j.
  sy = state.sy.at[k, :].set(y_prod[:, 1]).at[:, k].set(s_prod[:, 2])
  yy = state.yy.at[k, :].set(y_prod[:, 2]).at[:, k].set(y_prod[:, 2])
  new = CompactLBFGSState(
      count=state.count + take.astype(jnp.int32),
      pairs=state.pairs + accept.astype(jnp.int32),
      s=s_hist, y=y_hist, sy=put(state.sy, sy), yy=put(state.yy, yy),
      age=put(state.age, state.age.at[k].set(state.pairs)),
      gamma=put(state.gamma, sy_new / jnp.where(accept, yy_new, 1.0)),
      params=jnp.where(take, x, state.params), grad=jnp.where(take, g, state.grad))
  return new, s_prod[:, 0], y_prod[:, 0]


def forget(state: CompactLBFGSState) -> CompactLBFGSState:
  """The same state with an empty history (the buffers' stale rows are masked, not zeroed)."""
  return state._replace(pairs=jnp.zeros_like(state.pairs), age=jnp.full_like(state.age, -1),
                        gamma=jnp.ones_like(state.gamma))


def direction(state: CompactLBFGSState, g: Array, sg: Array, yg: Array,
              gamma: Array | None = None) -> Array:
  """``H g`` for the history in ``state`` (``sg = S g``, ``yg = Y g`` from :func:`record`)."""
  gamma = state.gamma if gamma is None else gamma
  # Empty slots decouple: their rows and columns of the small matrices and
  # their entries of Sg, Yg are zeroed, R's diagonal is 1 there, so their
  # coefficients come out 0 whatever stale rows the buffers hold.
  valid = state.age >= 0
  both = valid[:, None] & valid[None, :]
  # Chronological order (empty slots first: age -1).
  order = jnp.argsort(state.age)
  sy = jnp.where(both, state.sy, 0.0)[order][:, order]
  yy = jnp.where(both, state.yy, 0.0)[order][:, order]
  empty = ~valid[order]
  r = jnp.triu(sy) + jnp.diag(empty.astype(sy.dtype))
  d = jnp.diag(jnp.diag(sy))
  a = jnp.where(valid, sg, 0.0)[order]
  b = jnp.where(valid, yg, 0.0)[order]
  solve = jax.scipy.linalg.solve_triangular
  r_inv_a = solve(r, a, lower=False)
  p = solve(r, jnp.matmul(d + gamma * yy, r_inv_a, precision=_HIGHEST) - gamma * b,
            lower=False, trans="T")
  q = -r_inv_a
  # Back to buffer order, then one pass over the history.
  p = jnp.zeros_like(p).at[order].set(p)
  q = jnp.zeros_like(q).at[order].set(q)
  return (gamma * g + jnp.matmul(p, state.s, precision=_HIGHEST)
          + gamma * jnp.matmul(q, state.y, precision=_HIGHEST))


def scale_by_compact_lbfgs(memory_size: int = 10) -> optax.GradientTransformation:
  """optax-style L-BFGS preconditioning by the compact representation.

  Same contract as ``optax.scale_by_lbfgs(memory_size)``: returns ``H g`` for
  the incoming gradient, having first recorded the pair from the previous
  call's (params, gradient); the first call scales ``g`` by
  ``min(1, 1/‖g‖)``. Pairs of non-positive curvature (s·y <= 1e-10) are
  skipped, which optax does not do (its direction is then undefined).
  """
  if memory_size < 1:
    raise ValueError("memory_size must be >= 1")

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    return init(flat.size, memory_size, flat.dtype)

  def update_fn(updates, state, params):
    g, unravel = ravel_pytree(updates)
    x, _ = ravel_pytree(params)
    first = state.count == 0
    state, sg, yg = record(state, x, g)
    gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / jnp.linalg.norm(g)), state.gamma)
    return unravel(direction(state, g, sg, yg, gamma)), state

  return optax.GradientTransformation(init_fn, update_fn)
