"""Stage III's run syntax, error classes and report, against hand-made cases."""

import pytest

from sparkjax.data import arith
from sparkjax.pipelines import spark_rl
from sparkjax.spark import error_probe, stage3_report

P = arith.Problem(1, (("+", 2), ("+", 3), ("-", 1)))  # 1 -> 3 -> 6 -> 5


def _think(steps, answer):
  return arith.render_solution([arith.Step(*s) for s in steps], answer, "think")


@pytest.mark.parametrize("steps,answer,kind", [
    ([(1, "+", 2, 3), (3, "+", 3, 6), (6, "-", 1, 5)], 5, "correct"),
    ([(1, "+", 2, 3), (3, "+", 3, 7), (7, "-", 1, 6)], 6, "arithmetic slip"),
    ([(2, "+", 2, 4), (4, "+", 3, 7), (7, "-", 1, 6)], 6, "wrong start value"),
    ([(1, "+", 2, 3), (3, "-", 3, 0), (0, "+", 1, 1)], 1, "another operation"),
    ([(1, "+", 2, 3), (3, "+", 3, 6)], 6, "operation skipped"),
    ([(1, "+", 2, 3), (3, "+", 3, 6), (6, "-", 1, 5), (5, "+", 1, 6)], 6, "extra step"),
    ([(1, "+", 2, 3), (3, "+", 3, 6), (6, "-", 1, 5)], 4, "answer differs from the steps"),
])
def test_classify(steps, answer, kind):
  assert error_probe.classify(P, _think(steps, answer), True) == kind
  assert error_probe.classify(P, _think(steps, answer), False) == "format broken"


def test_run_syntax():
  r = spark_rl.parse_run("step_consistency_prm_cot/selective_advantage/format_off")
  assert (r.reward, r.design, r.enforce_format) == ("step_consistency_prm_cot", "selective_advantage", False)
  assert r.slug == "step_consistency_prm_cot+selective_advantage+format_off"
  assert spark_rl.parse_run("rlvr").name == "rlvr"
  assert spark_rl.parse_run("x_prm").name == "x_prm/process_outcome"
  for bad, msg in (("rlvr/step_augmented", "only for PRM"), ("x_prm/nope", "unknown reward design"),
                   ("x_prm/step_augmented/global_step", "REWARD"), ("", "REWARD")):
    with pytest.raises(ValueError, match=msg):
      spark_rl.parse_run(bad)


def _run(reward, fmt, design, greedy, sampled, enforce=True, hacks=0.0, hacks_start=0.0):
  train = {f"score_{h}": dict(start=hacks_start, end=hacks) for h in stage3_report.HACKS}
  return dict(reward=reward, prm_format=fmt, design=design, format_constraint=enforce, seconds=1.0, train=train,
              history={"0": dict(greedy_accuracy=0.5, accuracy=0.3), "10": dict(greedy_accuracy=greedy,
                                                                                accuracy=sampled)})


def test_claims_on_a_hand_made_report():
  runs = {"rlvr": _run("rlvr", None, None, 0.60, 0.50),
          "c/process_outcome": _run("c_prm_cot", "prm_cot", "process_outcome", 0.62, 0.45, hacks=0.01),
          "p/process_outcome": _run("p_prm", "prm", "process_outcome", 0.55, 0.46),
          "o/process_outcome": _run("o_orm", "orm", "process_outcome", 0.56, 0.40),
          "c/selective_advantage": _run("c_prm_cot", "prm_cot", "selective_advantage", 0.70, 0.44),
          "c/process_outcome/format_off": _run("c_prm_cot", "prm_cot", "process_outcome", 0.3, 0.2, False, 0.02)}
  report = dict(sft=dict(greedy_accuracy=0.5, accuracy=0.3), heldout=dict(problems=100, samples_per_problem=8),
                iterations=10, runs=runs)
  got = {c["claim"]: c["holds"] for c in stage3_report.claims(report)}
  assert got["PRM-CoT reward >= RLVR (greedy_accuracy)"] is True
  assert got["PRM-CoT reward >= RLVR (accuracy)"] is False
  assert got["PRM-CoT > PRM (greedy_accuracy)"] is True and got["PRM > ORM (greedy_accuracy)"] is False
  assert got["PRM > ORM (accuracy)"] is True
  assert got["selective advantage best of the PRM-CoT designs (greedy_accuracy)"] is True
  assert got["selective advantage best of the PRM-CoT designs (accuracy)"] is False
  hack = next(c for c in stage3_report.claims(report) if "format constraint" in c["claim"])
  assert hack["holds"] is True
  assert hack["measured"] == {"c/process_outcome/format_off": pytest.approx(0.10),
                              "c/process_outcome/format_off (first fifth)": 0.0,
                              "c/process_outcome": pytest.approx(0.05)}
  # No hack to stop: the rate without the constraint did not grow over the run.
  runs["c/process_outcome/format_off"] = _run("c_prm_cot", "prm_cot", "process_outcome", 0.3, 0.2, False, 0.02,
                                              0.02)
  hack = next(c for c in stage3_report.claims(report) if "format constraint" in c["claim"])
  assert hack["holds"] is None and hack["hack_appeared_without"] is False
  assert "not testable: no format hack appeared" in stage3_report.table_markdown(report)
  # Noise: greedy 0.62 vs 0.60 on 100 problems is within twice the standard error of the difference (~0.137).
  c = next(c for c in stage3_report.claims(report) if c["claim"] == "PRM-CoT reward >= RLVR (greedy_accuracy)")
  assert c["within_noise"] is True
  md = stage3_report.table_markdown(report)
  assert "| c/selective_advantage | 70.0 | 44.0 |" in md


def test_replicates_combine(tmp_path):
  import json

  def rep(g):
    return dict(sft=dict(greedy_accuracy=0.5, accuracy=0.3), heldout=dict(problems=100, samples_per_problem=8),
                iterations=10, runs={"rlvr": _run("rlvr", None, None, g, g / 2)})

  dirs = []
  for i, g in enumerate((0.6, 0.7, 0.8)):
    d = tmp_path / f"r{i}" / "stage3"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(rep(g)))
    dirs.append(str(d.parent))
  c = stage3_report.combine([rep(0.6), rep(0.7), rep(0.8)])
  g = c["runs"]["rlvr"]["greedy_accuracy"]
  assert g["mean"] == pytest.approx(0.7) and g["sd"] == pytest.approx(0.1) and c["replicates"] == 3
  assert stage3_report.main(dirs) == 0
  assert stage3_report.main([str(tmp_path / "missing")]) == 2
