"""SPARK-CoEvolve's host pieces against hand-computed expectations: the judge output parser (every spelling it must
accept and refuse), the recycling rules (group compositions -> example kinds, labels, shuffling, caps, the
full/answer-only split of reflections) and the FIFO cache (order, reset, checkpoint round trip)."""

import json

import numpy as np
import pytest

from sparkjax.coevolve import judge_format as jf
from sparkjax.coevolve import recycle as R


@pytest.mark.parametrize("text,kind,label,want", [
    ("The answer is correct. \\boxed{Yes}", "pointwise", "Yes", (1.0, "ok")),
    ("\\boxed{ yes. }", "pointwise", "Yes", (1.0, "ok")),
    ("\\boxed{\\text{No}}", "pointwise", "No", (1.0, "ok")),
    ("\\boxed{No}", "pointwise", "Yes", (0.0, "ok")),
    ("\\boxed{(b)}", "pairwise", "B", (1.0, "ok")),
    ("\\boxed{A}", "pairwise", "B", (0.0, "ok")),
    ("\\boxed{C}", "pairwise", "A", (0.0, "not a verdict")),  # an unknown letter
    ("\\boxed{A}", "pointwise", "Yes", (0.0, "not a verdict")),  # a letter where Yes/No is asked
    ("Yes", "pointwise", "Yes", (0.0, "no box")),
    ("\\box{Yes}", "pointwise", "Yes", (0.0, "\\box{} instead of \\boxed{}")),  # the original's template bug
    ("\\boxed{Yes} ... \\boxed{No}", "pointwise", "Yes", (0.0, "several boxes")),
    ("\\boxed{Yes} \\boxed{Yes}", "pointwise", "Yes", (0.0, "several boxes")),  # refused, not resolved
    ("\\boxed{Yes", "pointwise", "Yes", (0.0, "unbalanced braces")),
    ("so x = \\boxed{\\frac{1}{2}}", "reflection", "\\frac{1}{2}", (1.0, "ok")),
    ("\\boxed{ 12 }", "reflection", "12", (1.0, "ok")),
    ("\\boxed{13}", "reflection", "12", (0.0, "ok")),
])
def test_judge_reward(text, kind, label, want):
  assert jf.judge_reward(text, kind, label) == want


def test_prompts_ask_for_the_format_the_parser_reads():
  rng = np.random.default_rng(0)
  for kind in jf.KINDS:
    for phrasing in jf.PHRASINGS[kind]:
      assert "\\boxed{}" in phrasing.replace("{{}}", "{}") and "\\box{" not in phrasing.replace("\\boxed{", "")
    texts = {jf.render(kind, rng, "Q?", "x", "a", "b") for _ in range(50)}
    assert len(texts) == len(jf.PHRASINGS[kind])  # every phrasing is drawn
  assert "Yes or No" in jf.render("pointwise", rng, "Q", "1") and "A or B" in jf.render("pairwise", rng, "Q", "", "1",
                                                                                         "2")
  with pytest.raises(ValueError, match="unknown judge example kind 'score'"):
    jf.judge_reward("\\boxed{Yes}", "score", "Yes")


def _group(correct, gold="7"):
  n = len(correct)
  return R.Group(f"q{n}{correct}", gold, tuple(f"reasoning {i} so \\boxed{{{i}}}" for i in range(n)),
                 tuple(str(i) for i in range(n)), tuple(correct))


def test_group_compositions_become_their_example_kinds():
  cfg = R.RecycleConfig(pointwise_in_mixed=0.0)  # mixed groups -> pairwise only
  judge, refl = R.recycle([_group([True] * 4), _group([False] * 4), _group([True, False, False, False])], cfg,
                          np.random.default_rng(0))
  assert [(e.kind, e.label, e.source) for e in judge][:2] == [("pointwise", "Yes", "all_correct"),
                                                              ("pointwise", "No", "all_wrong")]
  pair = judge[2]
  assert pair.kind == "pairwise" and pair.source == "mixed" and pair.label in ("A", "B")
  # Reflections: from the two groups with a wrong answer, targets the ground truth.
  assert [(e.kind, e.label, e.source) for e in refl] == [("reflection", "7", "wrong")] * 2


def test_pairwise_order_is_shuffled_and_labelled():
  cfg = R.RecycleConfig(pointwise_in_mixed=0.0, max_judge=1000)
  g = R.Group("Which?", "5", ("right work", "wrong work"), ("RIGHT", "WRONG"), (True, False))
  judge, _ = R.recycle([g] * 400, cfg, np.random.default_rng(1))
  labels = [e.label for e in judge]
  assert 150 < labels.count("A") < 250  # ~half each
  for e in judge:  # the correct answer appears before the wrong one exactly when the label is A
    assert (e.prompt.index("RIGHT") < e.prompt.index("WRONG")) == (e.label == "A")


def test_mixed_groups_split_pointwise_and_pairwise():
  cfg = R.RecycleConfig(pointwise_in_mixed=0.3, max_judge=10_000)
  judge, _ = R.recycle([_group([True, False])] * 2000, cfg, np.random.default_rng(2))
  point = [e for e in judge if e.kind == "pointwise"]
  assert 0.26 < len(point) / len(judge) < 0.34
  assert 0.4 < sum(e.label == "Yes" for e in point) / len(point) < 0.6  # a correct or an incorrect answer, 50/50


def test_caps_reasoning_and_confirm():
  groups = [_group([True, False])] * 50
  judge, refl = R.recycle(groups, R.RecycleConfig(max_judge=32, max_reflection=32), np.random.default_rng(3))
  assert len(judge) == 32 and len(refl) == 32
  # Exactly half of the reflections show the full response, the other half only its final answer.
  assert sum("reasoning" in e.prompt for e in refl) == 16
  # Judge prompts show only the final answer by default, the reasoning with show_reasoning.
  assert not any("reasoning" in e.prompt for e in judge)
  shown, _ = R.recycle(groups[:4], R.RecycleConfig(show_reasoning=True, pointwise_in_mixed=1.0),
                       np.random.default_rng(3))
  assert all("reasoning" in e.prompt for e in shown)
  # confirm_share 1: every group with a correct answer also gives a reflection on a correct one.
  _, refl = R.recycle([_group([True, True])] * 3, R.RecycleConfig(confirm_share=1.0), np.random.default_rng(4))
  assert [e.source for e in refl] == ["confirm"] * 3
  _, none = R.recycle([_group([True, True])] * 3, R.RecycleConfig(), np.random.default_rng(4))
  assert none == []  # the spec's default: reflections only on wrong answers


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="max_judge=-1"):
    R.RecycleConfig(max_judge=-1)
  with pytest.raises(ValueError, match="pointwise_in_mixed=1.5"):
    R.RecycleConfig(pointwise_in_mixed=1.5)
  with pytest.raises(ValueError, match="2 responses, 1 answers"):
    R.Group("q", "1", ("a", "b"), ("a",), (True, False))


def test_cache_fifo_reset_and_round_trip():
  ex = [R.Example("pointwise", f"p{i}", "Yes", "all_correct") for i in range(5)]
  c = R.JudgeCache()
  c.add(ex[:3])
  c.add(ex[3:])
  assert [e.prompt for e in c.take(2)] == ["p0", "p1"] and len(c) == 3
  back = R.JudgeCache.from_state(json.loads(json.dumps(c.state())))
  assert [e.prompt for e in back.take(3)] == ["p2", "p3", "p4"]
  with pytest.raises(ValueError, match="holds 0 examples, 1 were asked for"):
    back.take(1)
  c.reset()
  assert len(c) == 0
  with pytest.raises(ValueError, match="does not have the fields"):
    R.JudgeCache.from_state(dict(examples=[dict(kind="pointwise")]))


def test_self_judge_loop_and_its_scores():
  """A scripted model: question 0 is answered right and judged Yes (no reflection); question 1 is answered wrong,
  judged No, fixed by the first reflection, then judged Yes; question 2 is right but judged No twice (the weak
  judge breaks it: each reflection writes a wrong answer), and after `rounds` = 2 reflections the loop stops."""
  import re

  from sparkjax.coevolve import self_judge as SJ

  def generate(prompts):
    out = []
    for p in prompts:
      q = re.search(r"Q(\d)", p).group(1)
      if "Yes or No" in p:  # the judge: right answers are approved, except question 2's
        out.append("\\boxed{Yes}" if "ANS_OK" in p and q != "2" else "\\boxed{No}")
      elif p.startswith("Solve"):
        out.append({"0": "ANS_OK", "1": "ANS_BAD", "2": "ANS_OK"}[q])
      else:  # a reflection
        out.append("ANS_OK" if q == "1" else "ANS_BAD")
    return out

  traces = SJ.self_judge(generate, ["Q0", "Q1", "Q2"], lambda q: f"Solve {q}", rounds=2)
  assert [t.answers for t in traces] == [["ANS_OK"], ["ANS_BAD", "ANS_OK"], ["ANS_OK", "ANS_BAD", "ANS_BAD"]]
  assert [t.verdicts for t in traces] == [["Yes"], ["No", "Yes"], ["No", "No"]]
  s = SJ.score(traces, lambda answer, i: answer == "ANS_OK")
  assert s == dict(questions=3, accuracy_without=2 / 3, accuracy_with=2 / 3, judge_accuracy=2 / 3,
                   judge_false_positive=0.0, judge_unreadable=0, fixed=1, broken=1, reflections=3)
  assert [t.answers for t in SJ.self_judge(generate, ["Q1"], lambda q: f"Solve {q}", rounds=0)] == [["ANS_BAD"]]
  with pytest.raises(ValueError, match="rounds=-1"):
    SJ.self_judge(generate, ["Q1"], lambda q: q, rounds=-1)
