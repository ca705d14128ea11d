"""Batch stylisation: equal to sequential runs, sharded over devices, across processes,
failure isolation and resume."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nstjax
from conftest import communicate_all, free_port, smooth_image
from nstjax import NSTError, jobs

HERE = Path(__file__).parent
BASE = nstjax.StyleConfig(size=None, iterations=4, style_weight=1e3, tv_weight=0.0)


def _jobs(n=3):
  contents = [smooth_image(32, 40, i) for i in range(n)]
  styles = [smooth_image(36, 32, 10 + i) for i in range(n)]
  configs = [dataclasses.replace(BASE, style_weight=w, seed=i) for i, w in enumerate([1e3, 3e3, 1e4][:n])]
  return contents, styles, configs


@pytest.mark.parametrize("optimizer,line_search,mode,steps_per_call,conv", [
    ("lbfgs", "auto", "vmap", None, "auto"), ("lbfgs", "auto", "map", None, "auto"),
    ("lbfgs", "zoom", "auto", None, "auto"), ("adam", "auto", "vmap", None, "auto"),
    # several steps per call: one call of 3 steps, then one of 1
    ("lbfgs", "auto", "vmap", 3, "auto"), ("lbfgs", "zoom", "auto", 3, "auto"),
    ("adam", "auto", "vmap", None, "winograd")])
def test_batched_equals_sequential(tiny_net, optimizer, line_search, mode, steps_per_call, conv):
  from nstjax.batch import batch_mode
  contents, styles, configs = _jobs()
  configs = [dataclasses.replace(c, optimizer=optimizer, line_search=line_search, batch_mode=mode,
                                 conv_algorithm=conv) for c in configs]
  assert batch_mode(configs[0]) == ("map" if line_search == "zoom" else mode)
  results = nstjax.stylize_batch(tiny_net, contents, styles, configs, steps_per_call=steps_per_call)
  for c, s, cfg, r in zip(contents, styles, configs, results):
    alone = nstjax.stylize_result(c, s, cfg, net=tiny_net)
    assert r.status == "done"
    assert r.summary["batch"]["mode"] == batch_mode(cfg)   # 32x40 pixels: no size rule
    # Winograd's matmuls, batched, round differently from one job's (seen: 1.2e-6).
    np.testing.assert_allclose(r.image, alone.image, atol=1e-6 if conv == "auto" else 5e-6)
    assert r.summary["conv_algorithm"] == ("direct" if conv == "auto" else "winograd")
    assert r.summary["losses"]["total"] == pytest.approx(alone.summary["losses"]["total"], rel=1e-5)
    assert r.summary["evaluations"] == alone.summary["evaluations"]


def test_auto_batch_mode_by_backend_and_size():
  from nstjax.batch import CPU_VMAP_MAX_PIXELS, batch_mode
  big, small = CPU_VMAP_MAX_PIXELS + 1, CPU_VMAP_MAX_PIXELS
  assert batch_mode(BASE, small, "cpu") == "vmap"
  assert batch_mode(BASE, big, "cpu") == "map"
  assert batch_mode(BASE, big, "gpu") == batch_mode(BASE, big, "tpu") == "vmap"
  assert batch_mode(dataclasses.replace(BASE, line_search="zoom"), small, "gpu") == "map"
  assert batch_mode(dataclasses.replace(BASE, batch_mode="vmap"), big, "cpu") == "vmap"


def test_a_sweep_shares_its_images_and_targets(tiny_net, monkeypatch):
  from nstjax import objective
  calls = []
  make_targets = objective.make_targets
  monkeypatch.setattr(objective, "make_targets", lambda *a, **k: calls.append(1) or make_targets(*a, **k))
  content, style = smooth_image(32, 40, 0), smooth_image(36, 32, 10)
  configs = [BASE, dataclasses.replace(BASE, style_weight=3e3, init="noise", seed=1),
             dataclasses.replace(BASE, pooling="max")]      # pooling reaches the targets
  results = nstjax.stylize_batch(tiny_net, [content] * 3, [style] * 3, configs)
  assert len(calls) == 2
  for cfg, r in zip(configs, results):
    alone = nstjax.stylize_result(content, style, cfg, net=tiny_net)
    np.testing.assert_allclose(r.image, alone.image, atol=1e-6)
    assert r.summary["loss_weights"] == alone.summary["loss_weights"]


def test_per_job_iterations_and_variance_k_are_not_mixed(tiny_net):
  contents, styles, configs = _jobs(3)
  configs[1] = dataclasses.replace(configs[1], iterations=2)
  configs = [dataclasses.replace(c, style_loss="pca", pca_k="var=0.9") if i == 2 else c
             for i, c in enumerate(configs)]
  results = nstjax.stylize_batch(tiny_net, contents, styles, configs)
  assert [r.summary["iterations"] for r in results] == [4, 2, 4]
  assert [r.summary["batch"]["group_size"] for r in results] == [1, 1, 1]


def test_static_options_form_separate_groups(tiny_net):
  contents, styles, configs = _jobs(2)
  configs[1] = dataclasses.replace(configs[1], lbfgs_memory=5)
  results = nstjax.stylize_batch(tiny_net, contents, styles, configs)
  assert [r.summary["batch"]["group_size"] for r in results] == [1, 1]
  assert results[1].summary["config"]["lbfgs_memory"] == 5


def test_groups_by_shape(tiny_net):
  contents, styles, configs = _jobs(2)
  contents[1] = smooth_image(40, 32, 5)              # another shape: its own group
  results = nstjax.stylize_batch(tiny_net, contents, styles, configs)
  assert [r.summary["batch"]["group_size"] for r in results] == [1, 1]
  assert results[1].image.shape == (40, 32, 3)


SHARDED = textwrap.dedent("""
    import json, sys, dataclasses
    import numpy as np
    sys.path.insert(0, {tests!r})
    import jax
    from conftest import tiny_convs
    import jax.numpy as jnp
    import nstjax
    from nstjax import vgg
    from test_batch import _jobs
    net = vgg.VGGParams(convs={{k: {{"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
                                for k, (w, b) in tiny_convs().items()}}, arch="vgg19", preprocessing="torch")
    contents, styles, configs = _jobs(3)
    res = nstjax.stylize_batch(net, contents, styles, configs)
    np.save({out!r}, np.stack([r.image for r in res]))
    print(json.dumps({{"devices": jax.device_count(), "batch": res[0].summary["batch"]}}))
""")


def test_sharded_over_four_devices_equals_unsharded(tiny_net, tmp_path):
  out = tmp_path / "sharded.npy"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SHARDED.format(tests=str(HERE), out=str(out))],
                        capture_output=True, text=True, env=env, cwd=HERE)
  assert proc.returncode == 0, proc.stderr
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  assert info["devices"] == 4
  # 3 jobs on 4 devices: padded to 4, the padding discarded, every device used.
  assert info["batch"] == {"group_size": 3, "padded_to": 4, "devices": 4, "mode": "vmap",
                           "spec": ["data"], "devices_used": 4}
  contents, styles, configs = _jobs(3)
  local = nstjax.stylize_batch(tiny_net, contents, styles, configs)
  np.testing.assert_allclose(np.load(out), np.stack([r.image for r in local]), atol=1e-6)


def test_two_processes_on_loopback(tmp_path, image_files, tiny_weights_file):
  """Plain jobs are shared out; shard-spatial jobs are run by both processes together (one
  image over their 4 devices) and written once, by process 0."""
  content, style = image_files
  port = free_port()
  cmd = [sys.executable, "-m", "nstjax.cli.main", "batch", "--content", str(content), "--style", str(style),
         "--sweep", "style-weight=1e2,1e3", "--sweep", "shard=none,spatial", "-o", str(tmp_path / "out"),
         "--size", "40", "--iterations", "2", "--weights", str(tiny_weights_file), "-q", "--distributed",
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen(cmd + ["--process-id", str(i)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
  outs = communicate_all(procs, 240)
  assert [p.returncode for p in procs] == [0, 0], outs
  summary = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
  assert summary["processes"] == 2 and summary["counts"]["done"] == 4
  process = {j["name"]: j["process"] for j in summary["jobs"]}
  spatial = [n for n in process if "spatial" in n]
  assert len(process) == 4 and len(spatial) == 2
  assert sorted(process[n] for n in process if n not in spatial) == [0, 1]
  assert all(process[n] == 0 for n in spatial)
  for n in spatial:
    assert json.loads((tmp_path / "out" / f"{n}.json").read_text())["shard"]["devices"] == 4
  assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_failure_isolation_and_resume(tmp_path, image_files, tiny_weights_file, capsys):
  from test_cli import nstjax_cli
  content, style = image_files
  manifest = tmp_path / "jobs.csv"
  manifest.write_text("content,style,style_weight,name\n"
                      f"{content},{style},1e3,good\n"
                      f"missing.png,{style},1e3,missing\n"
                      f"{content},{style},abc,badnumber\n"
                      f"{content},{style},1e4,good2\n")
  out = tmp_path / "out"
  argv = ["batch", manifest, "-o", out, "--size", "32", "--iterations", "2", "--weights",
          tiny_weights_file, "-q", "--contact-sheet", tmp_path / "sheet.png"]
  code, _, err = nstjax_cli(argv, capsys)
  assert code == 1
  s = json.loads((out / "batch_summary.json").read_text())
  status = {j["name"]: j["status"] for j in s["jobs"]}
  assert status == {"good": "done", "good2": "done", "missing": "failed", "badnumber": "failed"}
  reasons = {j["name"]: j["reason"] for j in s["jobs"]}
  assert "does not exist" in reasons["missing"] and "must be a number" in reasons["badnumber"]
  assert json.loads((out / "good.json").read_text())["iterations"] == 2
  assert (tmp_path / "sheet.png").exists()
  # Rerun: finished jobs are skipped; --overwrite runs them again.
  before = (out / "good.png").stat().st_mtime_ns
  code, _, _ = nstjax_cli(argv, capsys)
  s = json.loads((out / "batch_summary.json").read_text())
  assert {j["name"]: j["status"] for j in s["jobs"]}["good"] == "skipped"
  assert (out / "good.png").stat().st_mtime_ns == before
  code, _, _ = nstjax_cli(argv + ["--overwrite"], capsys)
  assert (out / "good.png").stat().st_mtime_ns != before


def test_job_lists(tmp_path, image_files):
  content, style = image_files
  grid = jobs.sweep_jobs(content, style, ["style-weight=1,2", "seed=0,1,2"])
  assert len(grid) == 6 and grid[0]["overrides"] == {"style_weight": 1.0, "seed": 0}
  assert len({j["name"] for j in grid}) == 6
  with pytest.raises(NSTError, match="unknown job field"):
    jobs.sweep_jobs(content, style, ["colour=1"])
  assert jobs.sweep_jobs(content, style, ["lbfgs-memory=5,10"])[1]["overrides"] == {"lbfgs_memory": 10}
  (tmp_path / "c").mkdir()
  (tmp_path / "s").mkdir()
  for i in range(2):
    (tmp_path / "c" / f"{i}.png").write_bytes(content.read_bytes())
  (tmp_path / "s" / "a.png").write_bytes(style.read_bytes())
  assert len(jobs.pair_jobs(tmp_path / "c", tmp_path / "s")) == 2
  (tmp_path / "j.jsonl").write_text('{"content": "a.png", "style": "b.png", "seed": 3}\nnot json\n')
  parsed = jobs.read_manifest(tmp_path / "j.jsonl")
  assert parsed[0]["overrides"] == {"seed": 3} and parsed[0]["content"] == str(tmp_path / "a.png")
  assert parsed[1]["error"].startswith("line 2")


# 1 step per call: the first non-finite loss opens a call (the previous call's image is
# kept); 4: it falls inside one (the call's own last finite image is kept).
@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_non_finite_job_fails_alone_and_keeps_a_finite_image(tiny_net, steps_per_call):
  contents, styles, configs = _jobs(2)
  configs = [dataclasses.replace(c, optimizer="adam", iterations=6) for c in configs]
  configs[1] = dataclasses.replace(configs[1], lr=1e30)          # diverges
  with pytest.raises(nstjax.NonFiniteLoss) as alone:
    nstjax.stylize_result(contents[1], styles[1], configs[1], net=tiny_net)
  assert alone.value.iteration < 3   # the failure is in the first call of 4 steps
  results = nstjax.stylize_batch(tiny_net, contents, styles, configs, steps_per_call=steps_per_call)
  assert results[0].status == "done"
  assert results[0].summary["iterations"] == 6
  assert results[1].status == "non-finite"
  assert results[1].summary["iterations"] == alone.value.iteration
  assert len(results[1].trace) == alone.value.iteration + 1   # the steps whose loss was finite
  assert np.all(np.isfinite(results[1].image))
  # The same last finite image as the job run alone.
  np.testing.assert_allclose(results[1].image, alone.value.image, atol=1e-6)
