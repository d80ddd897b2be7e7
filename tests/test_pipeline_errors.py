"""Bad input to the main job: clear errors, nothing already in the workdir damaged; NaN stops the run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparkjax.data.jsonl import read_jsonl
from sparkjax.train import metrics as metrics_lib

ROOT = Path(__file__).resolve().parents[1]


def _main(workdir, *args):
  return subprocess.run([sys.executable, "-m", "sparkjax.main", "--config=configs/arith.py:runlocal",
                         "--config.sft.steps=10", "--config.sft.optimizer.total_steps=10", *args,
                         f"--workdir={workdir}"], capture_output=True, text=True, cwd=ROOT, timeout=600)


def _snapshot(d: Path):
  return {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_group_size_not_dividing_batch(tmp_path):
  (tmp_path / "keep.txt").write_text("precious")
  r = _main(tmp_path, "--config.rl.batch_size=18", "--config.rl.group_size=4", "--config.sft.steps=0")
  assert r.returncode != 0
  assert "rl.batch_size=18" in r.stderr and "rl.group_size=4" in r.stderr and "Traceback" not in r.stderr
  assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("override,msg", [("--config.rl.group_size=four", "group_size"),
                                          ("--config.rl.groupsize=4", "unknown key 'groupsize'")])
def test_bad_overrides(tmp_path, override, msg):
  r = _main(tmp_path, override)
  assert r.returncode != 0 and msg in r.stderr
  assert not any(tmp_path.iterdir())


# An absurd step size overflows the parameters within two updates (the SFT schedule warms up from lr 0 at step 0);
# the config check only refuses a step size that is not a positive finite number.
BLOW_UP = "1e30"


def test_nan_loss_stops_before_checkpoint(tmp_path):
  r = _main(tmp_path, f"--config.sft.optimizer.lr={BLOW_UP}", "--config.checkpoint.every=1")
  assert r.returncode != 0
  assert re.search(r"non-finite loss=(nan|inf) at step 2", r.stderr), r.stderr[-2000:]
  ckpts = tmp_path / "checkpoints" / "sft"
  # Steps 0 and 1 were finite and are checkpointed (as 1 and 2); nothing exists for step 2 or after it.
  assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [1, 2]


def test_nan_in_a_resumed_run_keeps_the_good_checkpoints(tmp_path):
  assert _main(tmp_path, "--config.rl.iterations=2", "--config.rl.optimizer.total_steps=2").returncode == 0
  before = _snapshot(tmp_path / "checkpoints")
  r = _main(tmp_path, "--config.rl.iterations=4", f"--config.rl.optimizer.lr={BLOW_UP}")
  assert r.returncode != 0 and "non-finite" in r.stderr
  after = _snapshot(tmp_path / "checkpoints")
  assert all(after.get(p) == b for p, b in before.items())  # nothing written before is damaged
  assert not (tmp_path / "checkpoints" / "rl" / "4").exists()


def test_metrics_loop_names_the_step():
  loop = metrics_lib.MetricsLoop(metrics_lib.Writer("", enabled=False))
  loop.push(0, {"loss": 1.0})
  assert loop.push(1, {"loss": float("nan")}) == {"loss": 1.0}
  with pytest.raises(metrics_lib.NonFiniteError, match="non-finite loss=nan at step 1"):
    loop.flush()
  loop.push(2, {"loss": float("inf")})
  with pytest.raises(metrics_lib.NonFiniteError, match="non-finite loss=inf at step 2"):
    loop.flush()


def test_jsonl_errors_name_file_and_line(tmp_path):
  f = tmp_path / "d.jsonl"
  f.write_bytes(b'{"question": "a", "answer": "1"}\n{"question": "b"}\n')
  with pytest.raises(ValueError, match=r"d.jsonl:2: missing field\(s\) 'answer'"):
    read_jsonl(f, ["question", "answer"])
  f.write_bytes(b'{"question": "a", "answer": "1"}\n\xff\xfe{"q"}\n')
  with pytest.raises(ValueError, match=r"d.jsonl:2: not valid UTF-8"):
    read_jsonl(f, ["question"])
  f.write_bytes(b'{"question": "a"\n')
  with pytest.raises(ValueError, match=r"d.jsonl:1: not valid JSON"):
    read_jsonl(f)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    read_jsonl(tmp_path / "nope.jsonl")


def test_remote_workdir_is_refused(tmp_path):
  r = _main("gs://bucket/run")
  assert r.returncode != 0 and "gs://bucket/run" in r.stderr and "not supported" in r.stderr
  assert not (ROOT / "gs:").exists()
