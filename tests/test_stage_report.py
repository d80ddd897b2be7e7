"""The Stage I/II report: sampled-verifier diagnostics against hand-computed values, the claims, the table and the
F1-against-N picture."""

import pytest

from sparkjax.spark import stage_report
from sparkjax.spark import verdicts as vd
from sparkjax.spark.verify import Item


def _v(steps, final=True):
  return vd.Verification(None if steps is None else tuple(steps), final, "ok" if steps is not None else "unparseable",
                         "")


def _items():
  a = Item("a", "P", ("1 + 2 = 3", "3 + 1 = 4"), "4", gold_verdicts=(True, True), gold_final=True)
  b = Item("b", "P", ("2 + 2 = 5", "5 - 1 = 4"), "4", gold_verdicts=(False, False), gold_final=False)
  return [a, b]


def test_sampled_diagnostics_hand_computed():
  items = _items()
  text_a = "Step 1: 1 + 2 = 3 , 1 + 2 = 3. The step is correct.\nStep 2: 3 + 1 = 4 , 3 + 1 = 4. The step is correct."
  # b: the first sample restates the student's wrong step, the second restates the correct step instead.
  text_b1 = "Step 1: 2 + 2 = 5 , 2 + 2 = 4. The step is incorrect.\nStep 2: 5 - 1 = 4. The step is incorrect."
  text_b2 = "Step 1: 2 + 2 = 4 , 2 + 2 = 4. The step is correct.\nStep 2: 5 - 1 = 4. The step is incorrect."
  samples = [[(text_a, _v([True, True])), (text_a, _v([True, False]))],
             [(text_b1, _v([False, False])), (text_b2, _v([True, False]))]]
  d = stage_report.sampled_diagnostics(items, samples)
  # sample 0: 4 of 4 steps right; sample 1: a = (T, F) -> 1 right, b = (T, F) -> 1 right: 2 of 4.
  assert d["step_accuracy_per_sample"] == [1.0, 0.5]
  assert d["step_accuracy"] == 0.75
  # a: first errors {-1, 1} differ; b: {0, 1} differ.
  assert d["disagreement"] == 1.0
  # 8 analyses; all copy the student's step except b2's step 1 (the correct step written instead).
  assert d["copy_accuracy"] == 7 / 8
  # b's steps are both incorrect: 4 analyses of incorrect steps, 3 copied.
  assert d["copy_accuracy_wrong_steps"] == 3 / 4


def test_sampled_diagnostics_unreadable_and_agreement():
  items = _items()
  samples = [[("garbage", _v(None)), ("x", _v([True, True]))], [("y", _v([False])), ("z", _v([False]))]]
  d = stage_report.sampled_diagnostics(items, samples)
  # An unreadable sample or one with the wrong step count is wrong on every step: sample 0 gets 0 of 4; sample 1
  # gets a's 2 steps right and none of b's.
  assert d["step_accuracy_per_sample"] == [0.0, 0.5]
  # No item has two readable samples of the right length: disagreement is undefined, not 0.
  assert d["disagreement"] is None and d["copy_accuracy"] is None


def _table(single, step4, outcome4, ref):
  row = lambda f1: dict(step=dict(f1=f1 / 100), outcome=dict(f1=0.5), processbench=dict(f1=f1, acc_err=f1,
                                                                                        acc_cor=f1))
  return {"single": row(single), "step_consensus@1": row(single), "step_consensus@4": row(step4),
          "outcome_consensus@1": row(single), "outcome_consensus@4": row(outcome4), "reference_guided": row(ref),
          "sampled": dict(step_accuracy=0.8, disagreement=0.3, copy_accuracy=0.9, copy_accuracy_wrong_steps=0.7)}


def test_claims_headline_and_table():
  table = _table(single=40.0, step4=55.0, outcome4=60.0, ref=30.0)
  stage2 = {"step_consistency:prm": dict(f1=50.0, outcome=dict(f1=0.6)),
            "reference_guided:prm": dict(f1=50.0, outcome=dict(f1=0.6)),
            "step_consistency:prm_cot": dict(f1=45.0, outcome=dict(f1=0.6)),
            "gold:prm": dict(f1=92.0, outcome=dict(f1=0.9))}
  claims = {c["name"]: c for c in stage_report.claims(table, stage2, [1, 4])}
  assert claims["consensus_beats_single"]["holds"] is True
  assert claims["step_beats_outcome"]["holds"] is False  # 55 < 60: reported as not holding, with the figures
  assert claims["step_beats_outcome"]["measured"] == {"step_consensus@4": 55.0, "outcome_consensus@4": 60.0}
  assert claims["step_prm_vs_reference_prm"]["holds"] is True  # >=: a tie holds
  assert claims["prm_cot_beats_prm"]["holds"] is False
  # The reference comparison in another format only where both runs exist (prm_cot here, not disc).
  assert "step_prm_cot_vs_reference_prm_cot" not in claims and "step_disc_vs_reference_disc" not in claims
  stage2["reference_guided:disc"] = dict(f1=60.0, outcome=dict(f1=0.6))
  stage2["step_consistency:disc"] = dict(f1=70.0, outcome=dict(f1=0.6))
  more = {c["name"]: c for c in stage_report.claims(table, stage2, [1, 4])}
  assert more["step_disc_vs_reference_disc"]["holds"] is True
  assert more["step_disc_vs_reference_disc"]["measured"] == {"step_consistency:disc": 70.0,
                                                             "reference_guided:disc": 60.0}
  head = stage_report.headline(table, stage2, [1, 4])
  assert head["exact_label_prm_processbench_f1"] == 92.0 and head["exact_label_disc_prm_processbench_f1"] is None
  assert head["verifier_sampled_step_accuracy"] == 0.8 and head["step_consensus@4_processbench_f1"] == 55.0
  md = stage_report.table_markdown(table, stage2, list(claims.values()))
  assert "| step_consensus@4 > outcome_consensus@4 | no | step_consensus@4 55.0, outcome_consensus@4 60.0 |" in md
  assert "step accuracy 0.800" in md


def test_claim_with_a_missing_figure_is_not_measured():
  table = _table(40.0, 55.0, 50.0, 30.0)
  claims = {c["name"]: c for c in stage_report.claims(table, {}, [1, 4])}
  assert claims["prm_cot_beats_prm"]["holds"] is None
  assert "not measured" in stage_report.table_markdown(table, {}, list(claims.values()))


def test_plot_writes_a_png(tmp_path):
  path = stage_report.plot_f1_vs_n(_table(40.0, 55.0, 60.0, 30.0), [1, 4], tmp_path / "f1.png")
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


if __name__ == "__main__":
  pytest.main([__file__])
