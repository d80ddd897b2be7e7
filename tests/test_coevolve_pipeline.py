"""The `coevolve` pipeline end to end at smoke size: its report, and kill -9 during a CoEvolve run then restart gives
bitwise the same final state (parameters, optimizer, judge cache and counters) as an uninterrupted run."""

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import kill_when, run_main

ITERATIONS = 4
ARGS = ["--config=configs/coevolve.py:runlocal", "--config.coevolve.runs=('coevolve',)",
        "--config.policy.sft.steps=4", "--config.policy.sft.optimizer.total_steps=4",
        f"--config.rl.iterations={ITERATIONS}", f"--config.rl.eval_every={ITERATIONS}"]


def _final_state(workdir):
  path = Path(workdir).absolute() / "coevolve" / "runs" / "coevolve" / "checkpoints" / str(ITERATIONS) / "state"
  return ocp.StandardCheckpointer().restore(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  d = tmp_path_factory.mktemp("coevolve") / "run"
  run_main(ARGS, d)
  return d


def test_report_and_counters(straight):
  report = json.loads((straight / "coevolve" / "results.json").read_text())
  run = report["runs"]["coevolve"]
  # 8 prompts per iteration, at most 4 judge + 4 reflection examples, a batch of 8: every iteration that recycles 8
  # examples updates the judge; the optimizer counts both kinds of update.
  c = run["counters"]
  assert c["iterations"] == ITERATIONS and 1 <= c["judge_updates"] <= ITERATIONS
  assert c["optimizer_steps"] == ITERATIONS + c["judge_updates"]
  final = run["history"][str(ITERATIONS)]
  for k in ("greedy_accuracy", "accuracy", "pointwise_accuracy", "pairwise_accuracy", "false_positive_rate",
            "reflection_success"):
    assert 0.0 <= final[k] <= 1.0
  assert {"accuracy_without", "accuracy_with", "judge_accuracy"} <= set(run["self_judge"])
  assert len(run["curves"]["judge_update"]) == ITERATIONS
  # One run (no policy-only beside it): the claims that need only it.
  assert [c["claim"].split(" (")[0] for c in report["claims"]] == ["the judge improves as the policy trains",
                                                                   "a weak judge hurts at test time"]
  assert (straight / "coevolve" / "curves.png").stat().st_size > 0
  assert "| coevolve |" in (straight / "coevolve" / "results.md").read_text()


def test_kill_and_resume_is_bitwise_identical(straight, tmp_path):
  killed = tmp_path / "killed"
  marker = killed / "coevolve" / "runs" / "coevolve" / "checkpoints" / "2"
  kill_when(ARGS, killed, marker)
  assert marker.exists()
  r = run_main(ARGS, killed)
  assert "rl: resumed from iteration" in r.stderr
  a, b = _final_state(straight), _final_state(killed)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ra = json.loads((straight / "coevolve" / "results.json").read_text())["runs"]["coevolve"]
  rb = json.loads((killed / "coevolve" / "results.json").read_text())["runs"]["coevolve"]
  assert ra["history"] == rb["history"] and ra["counters"] == rb["counters"] and ra["curves"] == rb["curves"]
