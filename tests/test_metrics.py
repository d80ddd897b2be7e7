"""TensorBoard event files written by the main job, read back with TensorBoard's own reader."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sparkjax.train.metrics import Writer

ROOT = Path(__file__).resolve().parents[1]


def _read(logdir):
  acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  return acc


def test_writer_roundtrip(tmp_path):
  w = Writer(tmp_path)
  for step in range(3):
    w.scalars(step, {"loss": 1.0 / (step + 1), "reward": 0.5}, "rl/")
  w.text(2, "samples", "Step 1: 1 + 1 = 2")
  w.close()
  acc = _read(tmp_path)
  assert [e.value for e in acc.Scalars("rl/loss")] == pytest.approx([1.0, 0.5, 1 / 3])
  assert [e.step for e in acc.Scalars("rl/reward")] == [0, 1, 2]
  assert "samples/text_summary" in acc.Tags()["tensors"]


def test_main_job_writes_the_promised_curves(tmp_path):
  """The smoke run: its curves are in TensorBoard, its log is readable when redirected to a file (no carriage-return
  progress updates, no PyTorch notice: torch is hidden, as on a machine without it), and its policy earns reward."""
  code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['sparkjax.main'] + sys.argv[1:]; "
          "runpy.run_module('sparkjax.main', run_name='__main__')")
  r = subprocess.run([sys.executable, "-c", code, "--config=configs/arith.py:runlocal", f"--workdir={tmp_path}"],
                     capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "held-out accuracy (T=1 samples): after SFT" in r.stdout
  assert "PyTorch" not in r.stderr and "\r" not in r.stderr and "grpo: 4/4" in r.stderr, r.stderr[:3000]
  summary = json.loads((tmp_path / "summary.json").read_text())
  acc = _read(tmp_path / "tensorboard")
  tags = set(acc.Tags()["scalars"])
  for name in ("reward_mean", "reward_std", "accuracy", "zero_variance_groups", "response_length",
               "clip_fraction", "kl", "entropy", "grad_norm", "learning_rate", "samples_per_second",
               "tokens_per_second", "loss"):
    assert f"rl/{name}" in tags, name
  for name in ("loss", "token_accuracy", "grad_norm", "learning_rate", "tokens_per_second"):
    assert f"sft/{name}" in tags, name
  held = acc.Scalars("eval/heldout_accuracy")
  assert held[0].step == 0 and held[0].value == pytest.approx(summary["sft_accuracy"])
  assert held[-1].value == pytest.approx(summary["rl_accuracy"])
  assert "eval/samples/text_summary" in acc.Tags()["tensors"]
  # The SFT policy solves ~1 in 8 problems, so 4 x 32 samples without a reward would be a ~1e-7 event.
  assert max(e.value for e in acc.Scalars("rl/reward_mean")) > 0 and acc.Scalars("rl/kl")[-1].value > 0
