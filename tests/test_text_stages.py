"""SPARK-PRM Stages I and II on real text (`sparkjax.spark.text_stages`): step splitting of generated solutions,
Stage I with scripted models (prompts, parsing, the five variants, the answer check, resume of finished phases), and
Stage II from a tiny real-tokenizer model through saving and ProcessBench scoring."""

import json

import pytest

from sparkjax.data.math import MathRecord
from sparkjax.spark import text_stages as ts
from sparkjax.spark import verdicts as vd
from sparkjax.spark import verify as verify_lib


def test_split_solution_headers_paragraphs_lines():
  text = ("Let me solve it.\nStep 1: Tom has 3 apples\nand buys 2, so 3 + 2 = 5.\n**Step 2:** He eats one: 5 - 1 = 4.\n"
          "### Step 3) The answer is \\boxed{4}.")
  assert ts.split_solution(text) == (("Tom has 3 apples and buys 2, so 3 + 2 = 5.", "He eats one: 5 - 1 = 4.",
                                      "The answer is \\boxed{4}."), "4")
  # No headers: blank-line paragraphs, then lines.
  assert ts.split_solution("3 + 2 = 5\n\n5 - 1 = 4\nso \\boxed{4}") == (("3 + 2 = 5", "5 - 1 = 4 so \\boxed{4}"), "4")
  assert ts.split_solution("3 + 2 = 5\n5 - 1 = 4, \\boxed{4}") == (("3 + 2 = 5", "5 - 1 = 4, \\boxed{4}"), "4")
  # "step 2" inside a sentence is not a header; no box: no answer.
  steps, answer = ts.split_solution("Step 1: as in step 2 we add.\nStep 2: done")
  assert steps == ("as in step 2 we add.", "done") and answer is None


PROBLEMS = [MathRecord("Ann has 2 cats and gets 3 more. How many cats?", "5", "p0"),
            MathRecord("Bob has 4 pens and loses 1. How many pens?", "3", "p1"),
            MathRecord("Cid has 9 eggs. How many eggs?", "9", "p2")]
SOLUTIONS = {"Ann": "Step 1: 2 + 3 = 5\nStep 2: Ann has 5 cats, \\boxed{5}",
             "Bob": "Step 1: 4 - 1 = 2\nStep 2: Bob has \\boxed{2} pens",  # wrong at step 1
             "Cid": "Cid has 9 eggs."}  # no box: unreadable


class FakeModel:
  """Scripted text model: the generator answers from SOLUTIONS; the verifier judges by the solution's answer line
  (right for 5, else step 1 wrong), one of every n samples dissenting; critiques agree; merges restate."""

  def __init__(self, calls, fail_on=None):
    self.calls, self.fail_on = calls, fail_on

  def sample_texts(self, prompts, n, max_new_tokens, temperature, key, top_p=1.0, desc=None):
    self.calls.append(desc)
    if desc == self.fail_on:
      raise KeyboardInterrupt(f"killed during {desc}")
    out = []
    for p in prompts:
      if desc == "generate":
        assert "\\boxed{}" in p and "Step 1:" in p
        out.append([SOLUTIONS[p.split()[0]]] * n)
        continue
      assert "Student Solution:" in p and ("Expected answer: 3" in p or "Expected answer: 5" in p) == (
          desc == "verify (reference)")
      if desc == "critique":
        out.append(["The verification is right."] * n)
        continue
      right = "Answer: 5" in p
      good = vd.render_verification(["ok", "ok"], [True, True], True)
      bad = vd.render_verification(["4 - 1 is 3, not 2", "follows"], [False, False], False)
      out.append([(good if right else bad) if k < n - 1 or n == 1 else (bad if right else good) for k in range(n)])
    return out


def _fake_from_dir(monkeypatch, model, groups_seen=None):
  """TextModel.from_dir replaced by `model`; the prompt groups each load asked for go to `groups_seen`."""
  def from_dir(cls, d, rows, chat, prefill_groups):
    (groups_seen if groups_seen is not None else []).append(prefill_groups)
    return model
  monkeypatch.setattr(ts.TextModel, "from_dir", classmethod(from_dir))


def _run(tmp_path, monkeypatch, calls, fail_on=None, rows=4, prefill_groups=3):
  groups_seen = []
  _fake_from_dir(monkeypatch, FakeModel(calls, fail_on), groups_seen)
  s = ts.Stage1Settings(problems=3, m=2, n=3, rows=rows, prefill_groups=prefill_groups)
  table = ts.stage1("gen", "ver", PROBLEMS, s, tmp_path)
  assert set(groups_seen) <= {prefill_groups}  # the setting reaches every model loaded
  return table


def test_stage1_variants_checks_and_resume(tmp_path, monkeypatch):
  calls = []
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, monkeypatch, calls, fail_on="merge")
  assert calls == ["generate", "verify", "critique", "merge"]
  # The kept phases belong to these settings: other settings are refused, other rows and prompt groups are not.
  with pytest.raises(ValueError, match=r"other settings \(n: kept 3, now 2\)"):
    ts.stage1("gen", "ver", PROBLEMS, ts.Stage1Settings(problems=3, m=2, n=2, rows=4), tmp_path)
  calls.clear()
  table = _run(tmp_path, monkeypatch, calls, rows=8, prefill_groups=1)
  # Generation and verification were kept; only the unfinished phases ran again.
  assert calls == ["critique", "merge", "critique", "merge", "verify (reference)"]
  assert table["solutions"] == 6 and table["readable"] == 4 and table["answers_correct"] == 2
  assert table["verifications"] == 12 and table["verification_status"] == {"ok": 12}
  assert table["records"] == {v: 4 for v in verify_lib.VARIANTS}
  # Majority of 3 (2 agree): the wrong answers are caught, the right ones passed.
  sc = table["outcome_vs_answer"]["step_consistency"]
  assert (sc["tp"], sc["fp"], sc["fn"], sc["tn"]) == (2, 0, 0, 2)
  # The base meta-critique restates the first sample, which is right for every solution here.
  assert table["outcome_vs_answer"]["meta_critique_base"]["f1"] == 1.0
  recs = [json.loads(line) for line in (tmp_path / "step_consistency.jsonl").read_text().splitlines()]
  bob = [r for r in recs if r["problem"].startswith("Bob")]
  assert len(bob) == 2 and all(r["verdicts"] == [False, False] and r["final"] is False for r in bob)
  sols = [json.loads(line) for line in (tmp_path / "solutions.jsonl").read_text().splitlines()]
  assert [s["readable"] for s in sols] == [True, True, True, True, False, False]
  assert not (tmp_path / "partial").exists()
  calls.clear()
  assert _run(tmp_path, monkeypatch, calls) == table and calls == []  # a finished Stage I is read back


def test_stage1_nothing_readable(tmp_path, monkeypatch):
  _fake_from_dir(monkeypatch, FakeModel([]))
  with pytest.raises(ValueError, match="none of the generator's 2 solutions"):
    ts.stage1("gen", "ver", PROBLEMS[2:], ts.Stage1Settings(problems=1, m=2, n=2), tmp_path)
  assert (tmp_path / "solutions.jsonl").is_file()


def test_stage2_trains_saves_and_scores(tmp_path, monkeypatch, tiny_qwen_dir):
  from sparkjax.eval import processbench

  _run(tmp_path, monkeypatch, [])
  res = ts.stage2(str(tiny_qwen_dir), tmp_path / "step_consistency.jsonl", "prm_cot", steps=2, lr=1e-3, batch_size=2,
                  max_len=512, out=tmp_path)
  assert res["encoded"] == 4 and len(res["loss"]) == 2 and all(l > 0 for l in res["loss"])
  assert json.loads((tmp_path / "prm" / "prm.json").read_text())["format"] == "prm_cot"
  again = ts.stage2(str(tiny_qwen_dir), tmp_path / "step_consistency.jsonl", "prm_cot", steps=2, lr=1e-3,
                    batch_size=2, max_len=512, out=tmp_path)
  assert again == res  # a saved PRM is not trained again
  critic = processbench.PRMCritic(res["prm_dir"], "prm_cot", max_new_tokens=8)
  pb = processbench.evaluate(processbench.DEFAULT_DATA, ["gsm8k"], critic, tmp_path / "pb", limit=2,
                             limit_mode="spread", batch_size=2, progress=False)
  assert pb["subsets"]["gsm8k"]["n"] == 2
