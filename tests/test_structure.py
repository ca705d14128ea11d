"""The architecture's promises: one declaration of every config field, no import cycles,
an editable install that works from any folder, one pipeline, one bounded program cache."""

import ast
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import typer

import nstjax
from conftest import smooth_image
from nstjax import config as nconfig
from nstjax import objective, optim, pipeline, programs
from nstjax.cli.main import app
from nstjax.errors import NSTError

ROOT = Path(__file__).resolve().parents[1]
BASE = nstjax.StyleConfig(size=None, iterations=3, style_weight=1e3, tv_weight=0.1)


# --- no import cycles ---------------------------------------------------------------

def _package_modules():
  """{module name: source path} for every module of the installed nstjax package."""
  out = {}
  for pkg in ("nstjax", "nstjax.weights", "nstjax.cli"):
    spec = importlib.util.find_spec(pkg)
    for folder in spec.submodule_search_locations:
      for path in Path(folder).glob("*.py"):
        name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
        out.setdefault(name, path)
  return out


def _imports(path, modules):
  """Modules of ``modules`` that ``path`` imports anywhere (functions included)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        if sub in modules:
          found.add(sub)
        elif node.module in modules:
          found.add(node.module)
  return found


def test_no_import_cycles_in_the_installed_package():
  modules = _package_modules()
  assert {"nstjax", "nstjax.pipeline", "nstjax.weights.registry", "nstjax.cli.main"} <= set(modules)
  graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = "open"
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n, stack + [n])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert cycles == []


def test_package_init_only_reexports():
  tree = ast.parse((ROOT / "nstjax" / "__init__.py").read_text())
  defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
  assert defs == ["__getattr__", "__dir__"]   # the lazy re-export (PEP 562), nothing else
  assert set(nstjax.__all__) <= set(dir(nstjax))
  for name in nstjax.__all__:
    assert getattr(nstjax, name) is not None


@pytest.mark.parametrize("where", ["clone-parent", "repo-root"])
def test_import_works_from_any_folder(tmp_path, where):
  # A folder named nstjax beside the working directory (a clone, a download)
  # must not shadow the installed package; nor must the checkout's own folders.
  if where == "clone-parent":
    (tmp_path / "nstjax").mkdir()
    cwd = tmp_path
  else:
    cwd = ROOT
  code = ("import nstjax, nstjax.cli.main, nstjax.weights.registry; "
          "assert callable(nstjax.stylize); print(nstjax.__file__)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=""))
  assert proc.returncode == 0, proc.stderr


# --- one declaration per field --------------------------------------------------------

def _click_params(name):
  command = typer.main.get_command(app).commands[name]
  return {p.name: p for p in command.params}


@pytest.mark.parametrize("command", ["stylize", "batch"])
def test_every_cli_default_is_the_configs(command):
  params = _click_params(command)
  for f in nconfig.fields():
    assert f.name in params, f"{command} lacks --{f.name.replace('_', '-')}"
    read = f.metadata["read"]
    cli = params[f.name].default
    assert (None if cli is None else read(cli, f.name)) == f.default, f.name


def test_stylize_and_batch_expose_the_same_config_options():
  names = {f.name for f in nconfig.fields()}
  assert names <= set(_click_params("stylize")) and names <= set(_click_params("batch"))


def test_no_literal_config_defaults_in_cli():
  # The config's defaults appear in cli/ only through the declarations.
  text = "\n".join(p.read_text() for p in (ROOT / "cli").glob("*.py"))
  for literal in ('Option(512', 'Option(500', 'Option("lbfgs"', 'Option(100', 'Option("relu4_2"',
                  'Option("avg"', 'Option("relu4_1"', "default 0.02"):
    assert literal not in text, literal


def test_every_field_declares_its_kind_and_reader():
  for f in nconfig.fields():
    assert f.metadata["kind"] in nconfig.KINDS and f.metadata["help"], f.name
    assert f.metadata["read"](f.default, f.name) == f.default, f.name


def test_readme_field_table_matches_the_declarations():
  readme = (ROOT / "README.md").read_text()
  rows = {}
  for line in readme.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 2 and cells[1] in nconfig.KINDS:
      rows.update({name.strip("` "): cells[1] for name in cells[0].split(",")})
  assert rows == {f.name: f.metadata["kind"] for f in nconfig.fields()}


def test_strings_are_read_like_the_command_line():
  cfg = nstjax.StyleConfig(style_layers="relu1_1, relu2_1", style_layer_weights="0.25,0.75",
                           attention_chunks="16,8", size="64", style_weight="1e3")
  assert cfg.style_layers == ("relu1_1", "relu2_1") and cfg.style_layer_weights == (0.25, 0.75)
  assert cfg.attention_chunks == (16, 8) and cfg.size == 64 and cfg.style_weight == 1e3
  with pytest.raises(NSTError, match="seed must be an integer"):
    nstjax.StyleConfig(seed=1.5)
  with pytest.raises(NSTError, match="style-layers must be comma-separated layer names"):
    nstjax.StyleConfig(style_layers=3)


def test_per_job_fields_and_static_split():
  assert set(nconfig.per_job_fields()) == {f.name for f in nconfig.fields()}
  over = nconfig.read_overrides({"style-weight": "1e6", "seed": 3, "pooling": "max",
                                 "style_layers": ["relu1_1"]})
  assert over == {"style_weight": 1e6, "seed": 3, "pooling": "max", "style_layers": ("relu1_1",)}
  a = dataclasses.replace(BASE, **over)
  assert a.static_key() == dataclasses.replace(a, style_weight=1.0, seed=9, size=64).static_key()
  assert a.static_key() != dataclasses.replace(a, pooling="avg").static_key()
  assert a.static_key() != dataclasses.replace(a, attention_weight=1.0).static_key()


# --- the static key is complete: a non-static field never changes the program ----------

ALTERNATIVES = {   # field -> (base overrides that make it matter, another value)
    "size": ({}, 24), "style_scale": ({}, 0.5), "iterations": ({}, 9),
    "style_blend_weights": ({}, (2.0,)),
    "content_weight": ({}, 3.0), "style_weight": ({}, 7.0), "tv_weight": ({}, 0.0),
    "content_layer_weights": ({}, (2.0,)), "style_layer_weights": ({}, (1.0, 2.0, 3.0, 4.0, 5.0)),
    "init": ({}, "noise"), "seed": ({"init": "noise"}, 5), "preserve_colors": ({}, "luminance"),
    # k reaches the step only through the targets' shapes (part of every program key).
    "pca_k": ({"style_loss": "pca", "pca_k": "2"}, 2),
    "svd_threshold": ({"style_loss": "svd"}, 0.5), "svd_energy": ({"style_loss": "svd"}, 0.9),
    "channel_weights": ({"style_loss": "weighted"}, "uniform"),
    "attention_weight": ({"attention_weight": 2.0}, 5.0),
    "attention_layer_weights": ({"attention_weight": 2.0, "attention_layers": ("relu2_1", "relu3_1")},
                                (0.3, 0.7)),
    "attention_temperature": ({"attention_weight": 2.0}, 3.0),
    "attention_memory": ({"attention_weight": 2.0}, "1MB"),
    "attention_chunks": ({"attention_weight": 2.0}, (8, 8)),
    "scales": ({}, (16, 24)), "scale_iterations": ({"scales": (16, 24)}, (2, 1)),
}


def _lowered(tiny_net, cfg, content, style):
  """The step and terms programs built from the *whole* config (not its static key)."""
  p = pipeline.prepare(tiny_net, content, style, cfg, resize=False)
  state = pipeline.start_state(p)
  step = jax.jit(optim.make_step(cfg)).lower(p.net, state.image, state.opt_state,
                                             state.evaluations, p.targets, p.weights)
  terms = objective.make_terms_fn(cfg)
  t = jax.jit(lambda image, net, targets, weights: terms(image, net=net, targets=targets,
                                                          weights=weights))
  return step.as_text() + t.lower(state.image, p.net, p.targets, p.weights).as_text()


def test_alternatives_cover_every_non_static_field():
  non_static = {f.name for f in nconfig.fields() if f.metadata["kind"] != nconfig.STATIC}
  assert set(ALTERNATIVES) == non_static


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_a_non_static_field_does_not_change_the_compiled_programs(tiny_net, content32, style32, name):
  # Built from the full config, so a field wrongly marked traced or host (one the
  # step reads) shows up here as a different program, whatever any cache holds.
  extra, value = ALTERNATIVES[name]
  base = dataclasses.replace(BASE, **extra)
  other = dataclasses.replace(base, **{name: value})
  assert base.static_key() == other.static_key()
  assert _lowered(tiny_net, base, content32, style32) == _lowered(tiny_net, other, content32, style32)


def test_a_static_field_changes_the_program(tiny_net, content32, style32):
  other = dataclasses.replace(BASE, pooling="max")
  assert _lowered(tiny_net, BASE, content32, style32) != _lowered(tiny_net, other, content32, style32)


# --- one pipeline -------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_continuing_a_state_equals_one_longer_run(tiny_net, content32, style32, optimizer):
  cfg = dataclasses.replace(BASE, optimizer=optimizer, iterations=4)
  p = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)
  whole = pipeline.run(p)
  half = pipeline.run(p, iterations=2)
  rest = pipeline.run(p, iterations=2, start=half.state)
  np.testing.assert_array_equal(rest.image, whole.image)
  assert half.summary["evaluations"] + rest.summary["evaluations"] == whole.summary["evaluations"]


def test_start_image_is_any_image_resized(tiny_net, content32, style32):
  cfg = dataclasses.replace(BASE, iterations=0)
  p = pipeline.prepare(tiny_net, content32, style32, cfg, resize=False)
  same = pipeline.run(p, start=content32)
  np.testing.assert_array_equal(same.image, pipeline.run(p).image)
  other = pipeline.run(p, start=smooth_image(64, 80, 7))
  assert other.image.shape == content32.shape


def test_batch_isolates_failures_and_reports_each_result(tiny_net, tmp_path):
  contents = [smooth_image(32, 40, 1), tmp_path / "missing.png", smooth_image(8, 8, 2),
              smooth_image(32, 40, 3)]
  styles = [smooth_image(36, 32, 4)] * 4
  configs = [BASE, BASE, BASE, "not a config"]
  seen = []
  results = nstjax.stylize_batch(tiny_net, contents, styles, configs,
                                 on_result=lambda i, r: seen.append((i, r.status)))
  assert [r.status for r in results] == ["done", "failed", "failed", "failed"]
  assert "does not exist" in results[1].reason and "needs at least" in results[2].reason
  assert "StyleConfig" in results[3].reason
  assert sorted(seen) == [(0, "done"), (1, "failed"), (2, "failed"), (3, "failed")]
  alone = nstjax.stylize_result(contents[0], styles[0], BASE, net=tiny_net)
  np.testing.assert_allclose(results[0].image, alone.image, atol=1e-6)   # the batched program
  assert results[0].summary["losses"] == pytest.approx(alone.summary["losses"], rel=1e-5)


# --- one bounded program cache ---------------------------------------------------------

def test_program_cache_is_bounded_and_clearable(tiny_net, content32, style32):
  cache = programs._Cache(2)
  for k in range(3):
    cache.get(k, lambda k=k: k)
  assert list(cache.entries) == [1, 2] and (cache.hits, cache.misses) == (0, 3)
  assert cache.get(2, lambda: None) == (2, 0.0)

  nstjax.clear_cache()
  first = nstjax.optimize(tiny_net, content32, style32, BASE).summary["compile_seconds"]
  again = nstjax.optimize(tiny_net, content32, style32, BASE).summary["compile_seconds"]
  assert first > 0 and again == 0 and nstjax.cache_info()["size"] == 2   # step and terms
  nstjax.clear_cache()
  assert nstjax.cache_info() == {"size": 0, "maxsize": programs.MAX_PROGRAMS, "hits": 0, "misses": 0}
  assert nstjax.optimize(tiny_net, content32, style32, BASE).summary["compile_seconds"] > 0


def test_host_memory_is_released_after_each_compilation_and_preparation(
    tiny_net, content32, style32, monkeypatch):
  import platform
  from nstjax import memory
  if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    assert memory.release_host_memory()        # glibc's malloc_trim found and called
  calls = []
  monkeypatch.setattr(memory, "release_host_memory", lambda: calls.append(1) or True)
  nstjax.clear_cache()
  nstjax.optimize(tiny_net, content32, style32, BASE)
  assert len(calls) == 3                       # prepare, the terms and the step program
  nstjax.optimize(tiny_net, content32, style32, BASE)
  assert len(calls) == 4                       # programs cached: prepare only


# --- a new term is one registration ------------------------------------------------------

def test_registering_a_term_reaches_targets_weights_and_the_summary(tiny_net, content32, style32):
  import jax.numpy as jnp

  term = objective.Term(
      name="mean-colour", weight_field="tv_weight", enabled=lambda c: True,
      layers=lambda c: (), target_layers=lambda c: {}, layer_weights=lambda c: {},
      target=lambda inputs, c: jnp.mean(inputs.style, axis=(0, 1)),
      loss=lambda c: lambda feats, image, target, lw: jnp.sum((jnp.mean(image, (0, 1)) - target) ** 2))
  objective.register(term)
  try:
    s = nstjax.optimize(tiny_net, content32, style32, BASE).summary
    want = float(np.sum((content32.mean((0, 1)) - style32.mean((0, 1))) ** 2))
    assert s["initial_losses"]["mean-colour"] == pytest.approx(want, rel=1e-4)
    assert s["loss_weights"]["mean-colour"] == BASE.tv_weight
    i, w = s["initial_losses"], s["loss_weights"]
    assert i["total"] == pytest.approx(sum(w[k] * i[k] for k in w), rel=1e-5)
  finally:
    del objective.TERMS["mean-colour"]
  assert "mean-colour" not in nstjax.optimize(tiny_net, content32, style32, BASE).summary["losses"]
