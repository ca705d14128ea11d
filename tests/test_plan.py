"""The memory plan (--dry-run, --max-memory) against what the run compiles."""

import dataclasses
import json

import jax
import pytest

import nstjax
from conftest import smooth_image
from nstjax import NSTError, pipeline
from nstjax import plan as nplan
from test_cli import nstjax_cli

BASE = nstjax.StyleConfig(size=None, iterations=3, style_weight=1e3)


@pytest.mark.parametrize("kw", [dict(), dict(line_search="zoom"), dict(optimizer="adam"),
                                dict(attention_weight=10.0, attention_layers=("relu3_1",))])
def test_plan_is_the_memory_analysis_of_the_step_the_run_compiles(tiny_net, kw):
  content, style = smooth_image(40, 48, 1), smooth_image(36, 44, 2)
  cfg = dataclasses.replace(BASE, **kw)
  entry = nplan.make_plan(tiny_net, content, style, cfg)["plan"][0]
  prepared = pipeline.prepare(tiny_net, content, style, cfg, resize=False)
  state = pipeline.start_state(prepared)
  compiled = jax.jit(pipeline.make_steps(cfg.static_key(), 1), donate_argnums=(2,)).lower(
      prepared.net, state.image, state.opt_state, state.evaluations, prepared.targets,
      prepared.weights).compile()
  a = compiled.memory_analysis()
  assert entry["temp_bytes"] == a.temp_size_in_bytes
  assert entry["argument_bytes"] == a.argument_size_in_bytes
  assert entry["estimated_peak_bytes"] == (a.argument_size_in_bytes + a.output_size_in_bytes
                                           - a.alias_size_in_bytes + a.temp_size_in_bytes)
  assert entry["optimizer_state_bytes"] == nplan.tree_bytes(state.opt_state)
  if cfg.optimizer == "lbfgs":
    assert entry["lbfgs_history_bytes"] == 2 * cfg.lbfgs_memory * 40 * 48 * 3 * 4
    assert entry["optimizer_state_bytes"] >= entry["lbfgs_history_bytes"]


def test_plan_per_scale_grows_with_the_size(tiny_net):
  cfg = dataclasses.replace(BASE, size=64, scales="32,48,64")
  plan = nplan.make_plan(tiny_net, smooth_image(48, 64, 1), smooth_image(48, 48, 2), cfg)
  peaks = [e["estimated_peak_bytes"] for e in plan["plan"]]
  assert [e["width"] for e in plan["plan"]] == [32, 48, 64]
  assert peaks == sorted(peaks) and plan["estimated_peak_bytes"] == peaks[-1]


def test_max_memory_shrinks_the_history_or_refuses(tiny_net):
  content, style = smooth_image(40, 48, 1), smooth_image(36, 44, 2)
  full = nplan.make_plan(tiny_net, content, style, BASE)["estimated_peak_bytes"]
  history = nplan.make_plan(tiny_net, content, style, BASE)["plan"][0]["lbfgs_history_bytes"]
  budget = full - history // 2
  cfg, plan, measures = nplan.fit(tiny_net, content, style, BASE, budget)
  assert 5 <= cfg.lbfgs_memory <= 50 and plan["estimated_peak_bytes"] <= budget
  assert measures == [f"L-BFGS history 100 -> {cfg.lbfgs_memory} pairs"]
  with pytest.raises(NSTError, match="more than the budget"):
    nplan.fit(tiny_net, content, style, BASE, full // 10)
  assert nplan.parse_max_memory("2GB") == 2 * 1024 ** 3


def test_dry_run_from_the_cli_writes_the_plan_and_no_image(tmp_path, image_files, tiny_weights_file,
                                                           capsys):
  content, style = image_files
  summary = tmp_path / "plan.json"
  before = set(tmp_path.rglob("*"))
  code, out, err = nstjax_cli(["stylize", content, style, "--dry-run", "--scales", "24,32",
                               "--summary", summary, "--weights", tiny_weights_file, "-q"], capsys)
  assert code == 0, err
  doc = json.loads(summary.read_text())
  assert [e["size"] for e in doc["plan"]] == [24, 32]
  assert all(e["estimated_peak_bytes"] > 0 for e in doc["plan"])
  assert "estimated peak" in out and set(tmp_path.rglob("*")) - before == {summary}
  code, _, err = nstjax_cli(["stylize", content, style, "--weights", tiny_weights_file, "-q"], capsys)
  assert code == 1 and "--output" in err
