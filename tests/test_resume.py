"""Kill -9 at an arbitrary moment, or damage the newest checkpoint, and restart: bitwise the same parameters and
metrics as an uninterrupted run. A finished run restarted keeps its results; another model in the workdir is named."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sparkjax.train.checkpoint import Checkpointer

from conftest import kill_when, main_cmd, run_main

ROOT = Path(__file__).resolve().parents[1]
# The smoke config with a short SFT phase (resume is about state, not about learning).
ARGS = ["--config=configs/arith.py:runlocal", "--config.sft.steps=10", "--config.sft.optimizer.total_steps=10",
        "--config.rl.iterations=6", "--config.rl.optimizer.total_steps=6"]


def _run(workdir, *extra):
  return run_main([*ARGS, *extra], workdir, timeout=600)


def _final_state(workdir):
  ckpt = ocp.StandardCheckpointer()
  return ckpt.restore(Path(workdir).absolute() / "checkpoints" / "rl" / "6" / "state")


def _assert_same_state(a_dir, b_dir):
  a, b = jax.tree.leaves(_final_state(a_dir)), jax.tree.leaves(_final_state(b_dir))
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run of 6 GRPO iterations (checkpoints every 2)."""
  d = tmp_path_factory.mktemp("straight") / "run"
  _run(d)
  return d


def test_kill_and_resume_is_bitwise_identical(straight, tmp_path):
  killed = tmp_path / "killed"
  for marker in (killed / "checkpoints" / "sft" / "2", killed / "checkpoints" / "rl" / "2"):
    kill_when(ARGS, killed, marker, timeout=300)
  r = _run(killed)
  assert "resumed" in r.stderr
  _assert_same_state(straight, killed)
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


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
  """The same run stopped after 4 of its 6 iterations (checkpoints 2 and 4)."""
  d = tmp_path_factory.mktemp("partial") / "run"
  _run(d, "--config.rl.iterations=4")
  return d


def _truncate_largest_state_file(step_dir: Path):
  f = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(f, "r+b") as fh:
    fh.truncate(f.stat().st_size // 2)


def _corrupt_data_state(step_dir: Path):
  (step_dir / "data" / "metadata").write_text('{"next_index": ')


@pytest.mark.parametrize("damage", [_truncate_largest_state_file, _corrupt_data_state])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_step(straight, partial, tmp_path, damage):
  """The newest RL step is damaged after it was written; the restarted run says which step it skipped and why,
  resumes from the step before, keeps the damaged files aside, and ends with the uninterrupted run's state."""
  run = tmp_path / "run"
  shutil.copytree(partial, run)
  damage(run / "checkpoints" / "rl" / "4")
  r = _run(run)
  assert "checkpoint step 4" in r.stderr and "cannot be read" in r.stderr and "rl: resumed from iteration 2" in r.stderr
  assert (run / "checkpoints" / "rl" / "4.unreadable").is_dir()
  _assert_same_state(straight, run)


def test_rerun_of_a_finished_run_keeps_its_results(straight):
  before = (straight / "summary.json").read_bytes()
  _run(straight)
  assert (straight / "summary.json").read_bytes() == before
  assert json.loads(before)["final_metrics"]["loss"] is not None


def test_other_model_in_the_workdir_is_named(straight):
  r = subprocess.run(main_cmd([*ARGS, "--config.model.hidden_size=32"], straight), cwd=ROOT,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "holds a different model" in r.stderr and "params/embed" in r.stderr and "new --workdir" in r.stderr
