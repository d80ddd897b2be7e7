"""Every user error of the command-line programs ends in one line naming the file, field or value, exit code 2 and
no traceback, before any work is done; nothing a user owns is removed or written where it does not belong."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOLLM2_GGUF

ROOT = Path(__file__).resolve().parents[1]
ARITH = str(ROOT / "configs" / "arith.py")


def _run(module, *args, cwd=ROOT, timeout=600, env=None):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                        timeout=timeout, env=env)


def _user_error(r, *needles):
  """Exit code 2, one line on stderr naming every needle, no traceback."""
  err = r.stderr.strip()
  assert r.returncode == 2, (r.returncode, err[-3000:])
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err[-3000:]
  for n in needles:
    assert str(n) in lines[0], (n, lines[0])
  return lines[0]


def _read_only_dir(tmp_path) -> Path:
  """A directory nothing can be created in: chmod 555 for a normal user; for root, which ignores modes, a path
  under /sys (sysfs refuses new entries)."""
  if os.geteuid() != 0:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d
  d = Path("/sys/sparkjax-test-readonly")
  if d.exists() or os.access("/sys", os.W_OK) and _can_mkdir(d):
    pytest.skip("no read-only directory available to root on this machine")
  return d


def _can_mkdir(d: Path) -> bool:
  try:
    d.mkdir()
  except OSError:
    return False
  d.rmdir()
  return True


# ---- the main job: config and workdir ----------------------------------------------------------------------------


@pytest.mark.parametrize("config,needles", [
    ("configs/nope.py", ["configs/nope.py", "does not exist"]),
    (f"{ARITH}:runlocl", ["runlocl", "not known", "runlocal"]),
    (f"{ARITH}:sft_steps=abc", ["sft_steps='abc'", "integer"]),
    ("configs", ["configs", "is a directory"]),
])
def test_config_file_errors(tmp_path, config, needles):
  _user_error(_run("sparkjax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"), *needles)
  assert not (tmp_path / "w").exists()


def test_bad_fields_are_all_named_before_any_work(tmp_path):
  """Registry names, divisibility and ranges: every bad field in one line, before SFT (nothing written)."""
  r = _run("sparkjax.main", f"--config={ARITH}:runlocal", "--config.rl.advantage=bogus",
           "--config.rl.group_size=3", "--config.rl.iterations=0", "--config.sft.optimizer.lr=-1",
           f"--workdir={tmp_path / 'w'}")
  _user_error(r, "rl.advantage='bogus'", "grpo, drgrpo, rloo", "rl.batch_size=32", "rl.group_size=3",
              "rl.iterations=0", "sft.optimizer.lr=-1")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("override,needles", [
    ("--config.mesh.tp=3", ["mesh", "'tp': 3", "8 devices"]),
    ("--config.model.num_heads=3", ["model.hidden_size=", "num_heads=3"]),
    ("--config.world.max_operand=99", ["world", "max_operand=99"]),
    ("--config.rl.reward=remote", ["rl.reward='remote'", "device, host"]),
])
def test_more_bad_fields(tmp_path, override, needles):
  _user_error(_run("sparkjax.main", f"--config={ARITH}:runlocal", override, f"--workdir={tmp_path / 'w'}"), *needles)


@pytest.mark.parametrize("overrides,needles", [
    (["--config.stage2.format_steps.disc=0"], ["stage2.format_steps.disc=0", "steps >= 1"]),
    (["--config.world.heldout_every=0"], ["world.heldout_every=0"]),  # no held-out problems: refused
    (["--config.stage2.length_buckets=9"], ["stage2.length_buckets=9", "in [0, 8]"]),  # more micro-batches than rows
    (["--config.stage2.format_batch.prm_cot=0"], ["stage2.format_batch.prm_cot=0", "batch size >= 1"]),
    # A format's smaller batch bounds the micro-batches too.
    (["--config.stage2.format_batch.prm_cot=2", "--config.stage2.length_buckets=3"],
     ["stage2.length_buckets=3", "at most stage2.format_batch.prm_cot=2"]),
    (["--config.stage2.correct_share=1.0"], ["stage2.correct_share=1.0", "in [0.0, 1.0)"]),
    (["--config.verifier.by_task=False", "--config.verifier.verify_first=5"],
     ["verifier.verify_first=5", "needs verifier.by_task=True"]),
])
def test_spark_prm_fields(tmp_path, overrides, needles):
  r = _run("sparkjax.main", f"--config={ROOT / 'configs' / 'spark_prm.py'}:runlocal", *overrides,
           f"--workdir={tmp_path / 'w'}")
  _user_error(r, *needles)
  assert not (tmp_path / "w").exists()


def test_spark_prm_run_schedule_stretches_the_schedule_to_a_format_s_steps():
  import importlib.util

  import ml_collections

  from sparkjax.pipelines import spark_prm

  spec = importlib.util.spec_from_file_location("spark_prm_config", ROOT / "configs" / "spark_prm.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config().stage2
  c.format_steps = ml_collections.ConfigDict(dict(disc=3 * c.steps))
  steps, opt = spark_prm.run_schedule(c, "disc")
  assert (steps, opt.total_steps, opt.lr) == (3 * c.steps, 3 * c.steps, c.optimizer.lr)
  assert c.optimizer.total_steps == c.steps  # the config's own schedule is not touched
  assert spark_prm.run_schedule(c, "prm") == (c.steps, c.optimizer)
  c.format_batch = ml_collections.ConfigDict(dict(prm_cot=c.batch_size // 2))
  assert spark_prm.run_batch(c, "prm_cot") == c.batch_size // 2 and spark_prm.run_batch(c, "disc") == c.batch_size


def test_spark_prm_switches_must_be_booleans():
  """An on/off field given as a number or a string is named with its value (the YAML-ish 'false' is truthy)."""
  import ml_collections

  from sparkjax import config_check

  c = ml_collections.ConfigDict(dict(verifier=dict(by_task="false"), stage2=dict(disc_until_first_error=1,
                                                                                   disc_balance_classes=False)))
  ch = config_check.Checks(c)
  assert not ch.boolean("verifier.by_task") and not ch.boolean("stage2.disc_until_first_error")
  assert ch.boolean("stage2.disc_balance_classes") and ch.boolean("stage2.absent", optional=True)
  assert ch.errors == ["config verifier.by_task='false': expected True or False",
                       "config stage2.disc_until_first_error=1: expected True or False"]
  assert not ch.boolean("stage2.absent") and ch.errors[-1] == "config stage2.absent is missing from the config"


def test_empty_workdir_writes_nothing_into_the_current_directory(tmp_path):
  r = _run("sparkjax.main", f"--config={ARITH}:runlocal", "--workdir=", cwd=tmp_path)
  _user_error(r, "--workdir", "empty")
  assert list(tmp_path.iterdir()) == []


def test_workdir_that_is_a_file_or_read_only(tmp_path):
  f = tmp_path / "afile"
  f.write_text("mine")
  _user_error(_run("sparkjax.main", f"--config={ARITH}:runlocal", f"--workdir={f}"), str(f), "is a file")
  _user_error(_run("sparkjax.main", f"--config={ARITH}:runlocal", f"--workdir={f / 'sub'}"), str(f), "is a file")
  assert f.read_text() == "mine"
  ro = _read_only_dir(tmp_path)
  _user_error(_run("sparkjax.main", f"--config={ARITH}:runlocal", f"--workdir={ro / 'run'}"), str(ro / "run"),
              "cannot write")


def test_hf_grpo_missing_data_and_gguf_as_model_dir_fail_first(tmp_path):
  cfg = ROOT / "configs" / "hf_grpo_cpu.py"
  r = _run("sparkjax.main", f"--config={cfg}", f"--config.data.path={tmp_path / 'nope.jsonl'}",
           f"--workdir={tmp_path / 'w'}")
  _user_error(r, "data.path", "nope.jsonl", "does not exist")
  r = _run("sparkjax.main", f"--config={cfg}:model_dir={SMOLLM2_GGUF}", f"--workdir={tmp_path / 'w'}")
  _user_error(r, "model.dir", "GGUF file", "sparkjax.tools.convert")
  assert not (tmp_path / "w").exists()


# ---- models and the programs that load them ----------------------------------------------------------------------


def test_generate_errors(tmp_path, smollm2_dir):
  args = ["--prompt", "hi", "--max_new_tokens", "2"]
  _user_error(_run("sparkjax.generate", "--model", smollm2_dir, "--temperature", "nan", *args), "temperature=nan")
  _user_error(_run("sparkjax.generate", "--model", SMOLLM2_GGUF, *args), "GGUF file", "sparkjax.tools.convert")
  bad = tmp_path / "bad"
  shutil.copytree(smollm2_dir, bad)
  with open(bad / "model.safetensors", "r+b") as f:
    f.truncate(1_000_000)
  _user_error(_run("sparkjax.generate", "--model", bad, *args), str(bad / "model.safetensors"), "not a readable")
  for text, needles in [("[1, 2]", ["config.json", "expected a JSON object"]),
                        (json.dumps(dict(json.loads((smollm2_dir / "config.json").read_text()), hidden_size="576")),
                         ["config.json", "'hidden_size'", "'576'", "positive integer"])]:
    (bad / "config.json").write_text(text)
    _user_error(_run("sparkjax.generate", "--model", bad, *args), *needles)


def test_processbench_checks_out_and_batch_size_before_loading(tmp_path, smollm2_dir):
  args = ["--model", smollm2_dir, "--limit", "2"]
  r = _run("sparkjax.eval.processbench", *args, "--out", tmp_path / "pb", "--batch_size", "0")
  _user_error(r, "--batch_size=0")
  readme = ROOT / "README.md"
  _user_error(_run("sparkjax.eval.processbench", *args, "--out", readme / "pb"), str(readme), "is a file")
  ro = _read_only_dir(tmp_path)
  _user_error(_run("sparkjax.eval.processbench", *args, "--out", ro / "pb"), str(ro / "pb"), "cannot write")


def test_convert_never_removes_what_it_did_not_write(tmp_path):
  if not SMOLLM2_GGUF.is_file():
    pytest.skip("shared SmolLM2 GGUF not found")
  d = tmp_path / "x"
  d.mkdir()
  src = d / SMOLLM2_GGUF.name
  shutil.copy(SMOLLM2_GGUF, src)
  digest = src.read_bytes()[-4096:]
  # The input lives in --out: the converter refuses without --overwrite, and with it keeps the input.
  _user_error(_run("sparkjax.tools.convert", "--gguf", src, "--out", d), str(d), "already exists")
  r = _run("sparkjax.tools.convert", "--gguf", src, "--out", d, "--overwrite")
  assert r.returncode == 0, r.stderr
  assert src.is_file() and src.read_bytes()[-4096:] == digest
  assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
  # A second overwrite replaces the converter's own files only.
  (d / "notes.txt").write_text("mine")
  (d / "config.json").write_text("{}")  # the converter's file, edited: it is replaced
  r = _run("sparkjax.tools.convert", "--gguf", src, "--out", d, "--overwrite")
  assert r.returncode == 0, r.stderr
  assert (d / "notes.txt").read_text() == "mine" and src.is_file()
  assert json.loads((d / "config.json").read_text())["model_type"] == "llama"
  # Files the converter would replace but did not write stop it, and stay as they were.
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text("theirs")
  _user_error(_run("sparkjax.tools.convert", "--gguf", src, "--out", other, "--overwrite"), "config.json",
              "no conversion wrote")
  assert (other / "config.json").read_text() == "theirs"
  _user_error(_run("sparkjax.tools.convert", "--gguf", d, "--out", tmp_path / "y"), str(d), "is a directory")
  _user_error(_run("sparkjax.tools.convert", "--gguf", src, "--out", ROOT / "README.md" / "x"), "README.md",
              "is a file")


# ---- data ----------------------------------------------------------------------------------------------------------


def test_gsm8k_row_without_final_answer_is_reported(tmp_path):
  from sparkjax.data import math as math_data

  f = tmp_path / "g.jsonl"
  f.write_text(json.dumps(dict(question="q1", answer="Tom has 3.\nHe buys <<3+4=7>>7 more.")) + "\n"
               + json.dumps(dict(question="q2", answer="2 + 2 = 4\n#### 4")) + "\n")
  d = math_data.load_math(f)
  assert [r.answer for r in d.records] == ["4"]
  assert d.bad == [("g.jsonl:1", "'answer' is a worked solution with no final '#### X' line")]


# ---- what a newcomer sees ----------------------------------------------------------------------------------------


def test_quiet_logs_silences_backend_probing_without_a_tpu():
  import logging

  from sparkjax import cli

  if any(Path("/dev").glob("accel*")) or any(Path("/dev/vfio").glob("[0-9]*")):
    pytest.skip("a TPU is attached: jax's backend warnings are kept")
  cli.quiet_logs()
  assert logging.getLogger("jax._src.xla_bridge").getEffectiveLevel() == logging.ERROR


def test_one_line_joins_multiline_messages():
  from sparkjax import cli

  assert cli.one_line(ValueError("a\n  b\n")) == "a b"
  assert cli.one_line(OSError("disk full")) == "disk full"


@pytest.mark.parametrize("overrides,needles", [
    # Guards that zero every correct 3-operation solution, or that the world's number tokens cannot write.
    (["--config.stage3.max_steps=2"], ["stage3.max_steps=2", "contradict", "2-3 operations"]),
    (["--config.stage3.min_steps=3"], ["stage3.min_steps=3", "min_steps <= 2"]),
    (["--config.stage3.max_steps=13"], ["stage3.max_steps=13", "world.max_value=12"]),
    (["--config.stage3.runs=('rlvr', 'gold_prm')"], ["stage3.runs='gold_prm/process_outcome'", "does not train",
                                                     "step_consistency_prm_cot"]),
    (["--config.stage3.runs=('step_consistency_prm_cot/best',)"], ["stage3.runs=", "unknown reward design 'best'"]),
    (["--config.stage3.runs=('rlvr/format_off',)"], ["stage3.runs='rlvr/format_off'", "only for PRM rewards"]),
])
def test_spark_stage3_fields(tmp_path, overrides, needles):
  r = _run("sparkjax.main", f"--config={ROOT / 'configs' / 'spark.py'}:runlocal", *overrides,
           f"--workdir={tmp_path / 'w'}")
  _user_error(r, *needles)
  assert not (tmp_path / "w").exists()


def test_spark_rl_needs_its_prms(tmp_path):
  cfg = f"--config={ROOT / 'configs' / 'spark_rl.py'}:runlocal"
  _user_error(_run("sparkjax.main", cfg, f"--workdir={tmp_path / 'w'}"), "stage3.prm_root=''",
              "directory of trained PRMs")
  (tmp_path / "prms" / "other_prm").mkdir(parents=True)
  (tmp_path / "prms" / "other_prm" / "config.json").write_text("{}")
  _user_error(_run("sparkjax.main", cfg, f"--config.stage3.prm_root={tmp_path / 'prms'}",
                   f"--workdir={tmp_path / 'w'}"), "stage3.runs='step_consistency_prm_cot/process_outcome'",
              "holds no PRM", "PRMs in", "other_prm")
  assert not (tmp_path / "w").exists()


def test_progress_lines_in_a_log_show_time_per_item_when_slow(monkeypatch, capsys):
  """A redirected log gets plain progress lines; an iteration of minutes reads as seconds per item with elapsed
  time and an estimate (it printed "0.00 it/s" before)."""
  from sparkjax import cli

  clock = iter([0.0, 500.0, 1000.0, 1001.0, 1001.5])
  monkeypatch.setattr(cli.time, "time", lambda: next(clock))
  monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: False, raising=False)
  list(cli.Progress(range(2), total=4, desc="grpo", every_s=0.0))
  assert capsys.readouterr().err.splitlines() == ["grpo: 1/4 it (500.0 s/it, elapsed 8:20, eta 25:00)",
                                                  "grpo: 2/4 it (500.0 s/it, elapsed 16:40, eta 16:40)"]
  list(cli.Progress(range(1), total=1, desc="fast", every_s=0.0))
  assert capsys.readouterr().err.splitlines() == ["fast: 1/1 it (2.00 it/s, elapsed 0:00)"]


@pytest.mark.parametrize("run,needles", [("gold:nope", ["--run=gold:nope", "expected 'variant:format'"]),
                                         ("gold:disc", ["no complete Stage I", "stage1"])])
def test_prm_selection_errors(tmp_path, run, needles):
  r = _run("sparkjax.tools.prm_selection", f"--config={ROOT / 'configs' / 'spark_prm.py'}:runlocal",
           f"--workdir={tmp_path}", f"--run={run}")
  _user_error(r, *needles)
  assert not any(tmp_path.iterdir())  # nothing written into a workdir without a Stage I
