"""--shard spatial: one image over 4 forced CPU devices (in one process, or two on loopback), the
same losses as one device."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import communicate_all, free_port

HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, re, sys
    sys.path.insert(0, {tests!r})
    import jax
    import numpy as np
    import nstjax
    from conftest import smooth_image, tiny_convs
    from nstjax import pipeline, vgg
    from nstjax.cli.main import run as cli
    import jax.numpy as jnp
    net = vgg.VGGParams(convs={{k: {{"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
                                for k, (w, b) in tiny_convs().items()}}, arch="vgg19",
                        preprocessing="torch")
    content, style = smooth_image(64, 48, 1), smooth_image(40, 40, 2)
    out = {{"devices": jax.device_count()}}
    runs = {{}}
    for shard in ("none", "spatial"):
      cfg = nstjax.StyleConfig(size=None, iterations=5, shard=shard)
      r = nstjax.stylize_result(content, style, cfg, net=net)
      runs[shard] = r
      out[shard] = {{"initial": r.summary["initial_losses"]["total"],
                     "final": r.summary["losses"]["total"], "shard": r.summary["shard"],
                     "image_spec": list(getattr(r.state.image.sharding, "spec", ()))}}
    out["image_max_diff"] = float(np.max(np.abs(runs["none"].image - runs["spatial"].image)))
    # The compiled step: what the partitioner put in.
    cfg = nstjax.StyleConfig(size=None, shard="spatial")
    prepared = pipeline.prepare(net, content, style, cfg, resize=False)
    state = pipeline.start_state(prepared)
    text = jax.jit(pipeline.make_steps(cfg.static_key(), 1)).lower(
        prepared.net, state.image, state.opt_state, state.evaluations, prepared.targets,
        prepared.weights).compile().as_text()
    out["hlo"] = {{op: len(re.findall(op + r"(-start)?\\(", text))
                  for op in ("all-gather", "all-reduce", "collective-permute")}}
    out["history_spec"] = list(state.opt_state.lbfgs.s.sharding.spec)
    out["target_spec"] = list(next(iter(prepared.targets["content"].values())).sharding.spec)
    try:
      pipeline.prepare(net, smooth_image(30, 48, 1), style, cfg, resize=False)
    except nstjax.NSTError as e:
      out["uneven"] = str(e)
    print(json.dumps(out))
""")


def test_spatial_sharding_over_four_devices_equals_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(HERE))],
                        capture_output=True, text=True, env=env, cwd=HERE)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  one, four = out["none"], out["spatial"]
  assert abs(four["initial"] - one["initial"]) <= 1e-5 * abs(one["initial"])
  assert abs(four["final"] - one["final"]) <= 1e-3 * abs(one["final"])
  assert out["image_max_diff"] < 1e-3
  assert four["shard"] == {"mode": "spatial", "devices": 4, "axis": "height"}
  assert one["shard"] is None
  assert four["image_spec"] == ["rows"]
  assert out["history_spec"] == [None, "rows"]
  assert out["target_spec"] == ["rows"]
  # Split convolutions exchange halos and the Grams are all-reduced; nothing is gathered.
  assert out["hlo"]["all-gather"] == 0, out["hlo"]
  assert out["hlo"]["collective-permute"] > 0 and out["hlo"]["all-reduce"] > 0, out["hlo"]
  assert "multiple of 4" in out["uneven"]


CLI = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from nstjax.cli.main import run
    run(sys.argv[1:])
""")


def test_cli_and_batch_shard_spatial(tmp_path, image_files, tiny_weights_file):
  content, style = image_files
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  summary = tmp_path / "s.json"
  manifest = tmp_path / "jobs.jsonl"
  manifest.write_text(json.dumps({"content": str(content), "style": str(style), "name": "j",
                                  "shard": "spatial"}) + "\n")
  for argv in (["stylize", content, style, "-o", tmp_path / "o.png", "--summary", summary],
               ["batch", manifest, "-o", tmp_path / "b"]):
    proc = subprocess.run([sys.executable, "-c", CLI.format(tests=str(HERE)), *map(str, argv),
                           "--weights", str(tiny_weights_file), "--size", "32", "--iterations",
                           "2", "-q", *(["--shard", "spatial"] if argv[0] == "stylize" else [])],
                          capture_output=True, text=True, env=env, cwd=HERE)
    assert proc.returncode == 0, proc.stderr
  assert json.loads(summary.read_text())["shard"]["devices"] == 2
  assert json.loads((tmp_path / "b" / "j.json").read_text())["shard"]["mode"] == "spatial"


def _two_processes(tmp_path, content, style, weights, extra, outputs):
  """The same stylize command in two processes of 2 forced CPU devices each (4 in all; the
  40 px content is 32 rows, 8 per device)."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  return [subprocess.Popen(
      [sys.executable, "-c", CLI.format(tests=str(HERE)), "stylize", str(content), str(style),
       "-o", str(outputs[i]), "--weights", str(weights), "--size", "40", "-q", "--shard", "spatial",
       "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
       "--process-id", str(i), *extra],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=HERE)
      for i in range(2)]


def test_one_image_over_two_processes_equals_one_process(tmp_path, image_files, tiny_weights_file):
  """--shard spatial --distributed: 2 processes x 2 devices give one process x 4 devices' run;
  only process 0 writes."""
  content, style = image_files
  args = ["--iterations", "4", "--weights", str(tiny_weights_file), "--size", "40", "-q",
          "--shard", "spatial"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  one = tmp_path / "one.json"
  proc = subprocess.run([sys.executable, "-c", CLI.format(tests=str(HERE)), "stylize", str(content),
                         str(style), "-o", str(tmp_path / "one.png"), "--summary", str(one), *args],
                        capture_output=True, text=True, env=env, cwd=HERE)
  assert proc.returncode == 0, proc.stderr
  outputs = [tmp_path / "p0.png", tmp_path / "p1.png"]
  procs = _two_processes(tmp_path, content, style, tiny_weights_file,
                         ["--iterations", "4", "--summary", str(tmp_path / "two.json")], outputs)
  outs = communicate_all(procs, 300)
  assert [p.returncode for p in procs] == [0, 0], outs
  assert outputs[0].exists() and not outputs[1].exists()
  a, b = json.loads(one.read_text()), json.loads((tmp_path / "two.json").read_text())
  assert a["shard"]["devices"] == b["shard"]["devices"] == 4
  assert abs(b["initial_losses"]["total"] - a["initial_losses"]["total"]) <= 1e-5 * a["initial_losses"]["total"]
  assert abs(b["losses"]["total"] - a["losses"]["total"]) <= 1e-3 * a["losses"]["total"]
  from nstjax.image import load_image
  import numpy as np
  assert np.max(np.abs(load_image(outputs[0]) - load_image(tmp_path / "one.png"))) <= 2 / 255


def test_a_stop_signal_to_one_process_stops_both_with_the_image(tmp_path, image_files,
                                                                 tiny_weights_file):
  """SIGTERM to process 1 alone: both processes stop after the same call (no one left waiting
  in a collective), exit 143, and process 0 writes the current image and summary."""
  import signal
  import time
  content, style = image_files
  outputs = [tmp_path / "p0.png", tmp_path / "p1.png"]
  summary = tmp_path / "two.json"
  procs = _two_processes(tmp_path, content, style, tiny_weights_file,
                         ["--iterations", "100000", "--save-every", "5", "--summary", str(summary)],
                         outputs)
  try:
    deadline = time.time() + 240
    while not (tmp_path / "p0_00005.png").exists():   # running: process 0's first snapshot
      assert time.time() < deadline and all(p.poll() is None for p in procs), \
          [p.communicate() for p in procs]
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outs
  finally:   # a failure must not leave processes waiting in a collective
    for p in procs:
      if p.poll() is None:
        p.kill()
  s = json.loads(summary.read_text())
  assert s["status"] == "interrupted" and s["interrupted_by"] == "SIGTERM"
  assert 5 <= s["iterations"] < 100000
  assert outputs[0].exists() and not outputs[1].exists()
  assert not list(tmp_path.glob("p1*"))   # process 1 wrote no snapshot either
