"""nstjax's L-BFGS: the compact representation against optax and Torch7's optim.lbfgs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nstjax
from nstjax import StyleConfig, lbfgs, objective, optim, pipeline

BASE = StyleConfig(size=None, iterations=12, style_weight=1e3, tv_weight=0.0, pooling="avg")


def _quadratic(seed, n=60):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, n))
  a = jnp.asarray(a @ a.T / n + 0.05 * np.eye(n), jnp.float32)
  b = jnp.asarray(rng.normal(size=n), jnp.float32)
  return (lambda x: 0.5 * x @ (a @ x) - b @ x), jnp.asarray(rng.normal(size=n), jnp.float32)


@pytest.mark.parametrize("memory", [1, 4, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_compact_direction_equals_optax_two_loop(seed, memory):
  f, x = _quadratic(seed)
  ours, ref = lbfgs.scale_by_compact_lbfgs(memory), optax.scale_by_lbfgs(memory)
  s_ours, s_ref = ours.init(x), ref.init(x)
  grad, up_ours, up_ref = jax.jit(jax.grad(f)), jax.jit(ours.update), jax.jit(ref.update)
  for _ in range(3 * memory + 5):      # past the history's wrap-around
    g = grad(x)
    u_ours, s_ours = up_ours(g, s_ours, x)
    u_ref, s_ref = up_ref(g, s_ref, x)
    rel = float(jnp.linalg.norm(u_ours - u_ref) / jnp.linalg.norm(u_ref))
    assert rel < 1e-5
    x = x - 0.7 * u_ref


def test_pairs_of_negative_curvature_are_skipped():
  state = lbfgs.init(3, 4)
  x0, g0 = jnp.zeros(3), jnp.ones(3)
  state, _, _ = lbfgs.record(state, x0, g0)
  state, _, _ = lbfgs.record(state, x0 + 1.0, g0 - 1.0)   # s·y = -3
  assert int(state.pairs) == 0 and int(state.count) == 2
  state, sg, yg = lbfgs.record(state, x0 + 2.0, g0)        # s·y = 3
  assert int(state.pairs) == 1
  g = jnp.asarray([1.0, -2.0, 0.5])
  assert np.isfinite(np.asarray(lbfgs.direction(state, g, sg, yg))).all()


class Torch7LBFGS:
  """Torch7's optim.lbfgs (the one jcjohnson/neural-style calls) without line search,
  tolerances off, in numpy float64. ``step(x, g)`` is one iteration: the gradient
  ``g`` at the current point ``x`` -> the next point."""

  def __init__(self, lr=1.0, n_correction=100):
    self.lr, self.n = lr, n_correction
    self.old_dirs, self.old_stps, self.h_diag = [], [], 1.0
    self.d = self.t = self.g_old = None

  def step(self, x, g):
    if self.d is None:
      d = -g
    else:
      y, s = g - self.g_old, self.d * self.t
      ys = y @ s
      if ys > 1e-10:
        if len(self.old_dirs) == self.n:
          self.old_dirs.pop(0), self.old_stps.pop(0)
        self.old_dirs.append(s), self.old_stps.append(y)
        self.h_diag = ys / (y @ y)
      ro = [1.0 / (yi @ si) for si, yi in zip(self.old_dirs, self.old_stps)]
      q, al = -g, [0.0] * len(self.old_dirs)
      for i in reversed(range(len(self.old_dirs))):
        al[i] = (self.old_dirs[i] @ q) * ro[i]
        q = q - al[i] * self.old_stps[i]
      d = q * self.h_diag
      for i in range(len(self.old_dirs)):
        be = (self.old_stps[i] @ d) * ro[i]
        d = d + (al[i] - be) * self.old_dirs[i]
    self.t = min(1.0, 1.0 / np.sum(np.abs(g))) * self.lr if self.d is None else self.lr
    self.d, self.g_old = d, g
    return x + self.t * d


@pytest.mark.parametrize("pixel_scale,lr", [(1.0, 1.0), (256.0, 1.0), (256.0, 0.5)])
def test_fixed_step_follows_torch7_lbfgs(tiny_net, content32, style32, pixel_scale, lr):
  """line_search="none" is Torch7's optim.lbfgs with learning rate lr on the image
  times pixel_scale (jcjohnson/neural-style's L-BFGS on 0..256 pixel values).

  The trajectory is chaotic at float32 rounding (a 1e-7 change of the start
  image moves the sixth iterate by ~5% of a step: the first step is tiny, so
  the first gradient difference is mostly rounding), so the reference is fed
  our iterates and the gradients our step computed there (kept in its state),
  and predicts each next iterate.
  """
  cfg = dataclasses.replace(BASE, line_search="none", lr=lr, pixel_scale=pixel_scale,
                            init="noise", iterations=8)
  prepared = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)
  loss = objective.make_objective(cfg)
  grad = jax.jit(jax.grad(lambda u: loss(u / pixel_scale, net=prepared.net,
                                         targets=prepared.targets, weights=prepared.weights)))
  reference = Torch7LBFGS(lr=lr)
  state = pipeline.start_state(prepared)
  for i in range(cfg.iterations):
    x = np.asarray(state.image, np.float64).reshape(-1) * pixel_scale
    state = pipeline.run(prepared, iterations=1, start=state).state
    g = np.asarray(state.opt_state.lbfgs.grad, np.float64)     # the gradient at x, per unit of u
    np.testing.assert_allclose(g, np.asarray(grad(jnp.asarray(x.reshape(content32.shape),
                                                              jnp.float32))).reshape(-1),
                               rtol=1e-3, atol=1e-3 * np.abs(g).max())
    expected = reference.step(x, g)
    got = np.asarray(state.image, np.float64).reshape(-1) * pixel_scale
    # Agreement to 0.1% of the step, plus the float32 spacing of the stored image
    # (a first step at 256 moves a pixel by ~1e-4, near that spacing).
    ulp = np.linalg.norm(np.spacing(np.abs(expected).astype(np.float32)))
    err = np.linalg.norm(got - expected)
    assert err < 1e-3 * np.linalg.norm(expected - x) + ulp, (i, err, ulp)


@pytest.mark.parametrize("line_search", ["backtracking", "none"])
def test_own_lbfgs_reduces_the_loss_and_traces_every_step(tiny_net, content32, style32,
                                                          line_search):
  cfg = dataclasses.replace(BASE, line_search=line_search)
  r = nstjax.optimize(tiny_net, content32, style32, cfg)
  s = r.summary
  assert s["losses"]["total"] < 0.3 * s["initial_losses"]["total"]
  assert s["evaluations"] == cfg.iterations            # one evaluation per step
  assert [t["iteration"] for t in r.trace] == list(range(1, cfg.iterations + 1))
  first = r.trace[0]["losses"]
  assert set(first) == {"content", "style", "tv", "total"}
  assert first["total"] == pytest.approx(s["initial_losses"]["total"], rel=1e-5)
  w = s["loss_weights"]
  for rec in r.trace:
    assert rec["losses"]["total"] == pytest.approx(
        sum(w[k] * rec["losses"][k] for k in w), rel=1e-4)
  if line_search == "backtracking":   # only accepted points are reported: never rises
    totals = [t["losses"]["total"] for t in r.trace]
    assert all(b <= a for a, b in zip(totals, totals[1:]))


def _hlo(cfg, prepared):
  state = pipeline.start_state(prepared)
  step = jax.jit(optim.make_step(cfg.static_key()))
  return step.lower(prepared.net, state.image, state.opt_state, state.evaluations,
                    prepared.targets, prepared.weights).compile().as_text()


def test_own_lbfgs_step_has_no_conditionals_or_loops(tiny_net, content32, style32):
  """No data-dependent control flow: on a GPU each would be a device-to-host round trip."""
  counts = {}
  for ls in ("zoom", "backtracking", "none"):
    cfg = dataclasses.replace(BASE, line_search=ls)
    text = _hlo(cfg, pipeline.prepare(tiny_net, content32, style32, cfg, resize=False))
    counts[ls] = sum(text.count(op) for op in (" conditional(", " while("))
  assert counts["backtracking"] == 0 and counts["none"] == 0
  assert counts["zoom"] > 0


def test_several_steps_per_call_equal_one_at_a_time(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, line_search="backtracking", iterations=7)
  prepared = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)
  one = pipeline.run(prepared, steps_per_call=1)
  seen = []
  four = pipeline.run(prepared, steps_per_call=4, image_every=5,
                      callback=lambda p: seen.append(p.image is not None))
  np.testing.assert_allclose(four.image, one.image, atol=1e-5)
  assert [t["losses"]["total"] for t in four.trace] == pytest.approx(
      [t["losses"]["total"] for t in one.trace], rel=1e-5)
  # Calls: 4 steps, 1, 1 (to reach step 5, where the image is reported), then 1, 1.
  assert seen == [False, False, False, True, True, True, True]


def test_the_loop_fetches_once_per_call(tiny_net, content32, style32, monkeypatch):
  """One device-to-host transfer per call of K steps (the metrics); jax.transfer_guard
  would count on a GPU, but on XLA:CPU arrays already live on the host and it never fires."""
  cfg = dataclasses.replace(BASE, line_search="backtracking", iterations=8)
  prepared = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)
  pipeline.run(prepared, steps_per_call=4)     # compiled before counting
  fetched, real = [], jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: fetched.append(x) or real(x))
  r = pipeline.run(prepared, steps_per_call=4)
  assert len(fetched) == 2 and len(r.trace) == 8
  assert set(fetched[0]) >= {"loss", "evaluations"} and len(fetched[0]["loss"]) == 4


def test_non_finite_inside_a_call_keeps_the_last_finite_image(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, line_search="none", lr=1e30, iterations=8)
  prepared = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)
  with pytest.raises(nstjax.NonFiniteLoss) as info:
    pipeline.run(prepared, steps_per_call=8)
  e = info.value
  assert e.image is not None and np.isfinite(e.image).all()
  r = pipeline.run(prepared, iterations=max(e.iteration, 0), steps_per_call=1)
  np.testing.assert_allclose(e.image, r.image, atol=1e-5)
