"""Kill -9 at an arbitrary moment and restart: bitwise the same parameters and metrics as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from sparkjax.train.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/arith.py:runlocal", "--config.rl.iterations=6", "--config.rl.optimizer.total_steps=6"]


def _cmd(workdir):
  return [sys.executable, "-m", "sparkjax.main", *ARGS, f"--workdir={workdir}"]


def _final_state(workdir):
  ckpt = ocp.StandardCheckpointer()
  return ckpt.restore(Path(workdir).absolute() / "checkpoints" / "rl" / "6" / "state")


def test_kill_and_resume_is_bitwise_identical(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  straight = tmp_path / "straight"
  r = subprocess.run(_cmd(straight), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]

  killed = tmp_path / "killed"
  for marker in (killed / "checkpoints" / "sft" / "2", killed / "checkpoints" / "rl" / "2"):
    p = subprocess.Popen(_cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not marker.exists() and p.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
  r = subprocess.run(_cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed" in r.stderr

  a, b = _final_state(straight), _final_state(killed)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  sa = json.loads((straight / "summary.json").read_text())
  sb = json.loads((killed / "summary.json").read_text())
  assert sa["history"] == sb["history"] and sa["sft_accuracy"] == sb["sft_accuracy"]
  for k in ("reward_mean", "loss", "kl", "grad_norm"):
    assert sa["final_metrics"][k] == sb["final_metrics"][k]


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
  ckpt = Checkpointer(tmp_path / "c")
  state = {"w": np.arange(4.0)}
  ckpt.save(1, state, {"next_index": 3})
  ckpt.close()
  # What a kill during a save leaves behind: orbax's temporary directory for the next step.
  (tmp_path / "c" / "2.orbax-checkpoint-tmp-1234").mkdir()
  ckpt = Checkpointer(tmp_path / "c")
  assert ckpt.latest_step() == 1
  restored, data, _ = ckpt.restore(state)
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert data == {"next_index": 3}
