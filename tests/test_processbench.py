"""ProcessBench: reader validation, the official metric, the evaluator's outputs, the critique prompt/parser, and the
generative critic end to end with the real SmolLM2 through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparkjax.eval import processbench as pb
from sparkjax.spark import prm_scorers

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "processbench"
SIZES = {"gsm8k": 400, "math": 1000, "olympiadbench": 1000, "omnimath": 1000}
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared ProcessBench data not found at {DATA}")


def _rec(rid, label, steps=("a", "b", "c"), problem="p"):
  return dict(id=rid, generator="g", problem=problem, steps=list(steps), final_answer_correct=label == -1,
              label=label)


# ----------------------------------------------------------------------------------------------------------- metric
def test_score_mixed_subset():
  # Erroneous: labels 2, 0, 1 -> hits at 2 and 1 (None never matches): 2/3. Correct: -1, -1 -> one hit: 1/2.
  m = pb.score([-1, -1, 2, 0, 1], [-1, 0, 2, None, 1])
  assert m["n"] == 5 and m["n_err"] == 3 and m["n_cor"] == 2 and m["unparseable"] == 1
  assert m["acc_err"] == pytest.approx(200 / 3) and m["acc_cor"] == pytest.approx(50.0)
  assert m["f1"] == pytest.approx(2 * (200 / 3) * 50 / (200 / 3 + 50))  # 57.142857...
  assert m["f1"] == pytest.approx(400 / 7)


def test_score_one_kind_only_is_undefined_not_zero():
  all_cor = pb.score([-1, -1, -1, -1], [-1, 3, -1, None])
  assert all_cor["acc_cor"] == pytest.approx(50.0) and all_cor["acc_err"] is None and all_cor["f1"] is None
  assert all_cor["n_err"] == 0 and all_cor["unparseable"] == 1
  all_err = pb.score([0, 1, 4], [0, -1, 4])
  assert all_err["acc_err"] == pytest.approx(200 / 3) and all_err["acc_cor"] is None and all_err["f1"] is None


def test_score_none_predictions_are_wrong_for_both_kinds():
  m = pb.score([-1, 1, -1, 0], [None, None, None, None])
  assert m["acc_err"] == 0.0 and m["acc_cor"] == 0.0 and m["f1"] == 0.0 and m["unparseable"] == 4


def test_score_f1_is_zero_when_one_side_is_zero():
  always_ok = pb.score([-1, 2, -1, 0], [-1, -1, -1, -1])
  assert always_ok["acc_cor"] == 100.0 and always_ok["acc_err"] == 0.0 and always_ok["f1"] == 0.0
  never_ok = pb.score([-1, 2, -1, 0], [0, 2, 1, 0])
  assert never_ok["acc_cor"] == 0.0 and never_ok["acc_err"] == 100.0 and never_ok["f1"] == 0.0
  # Both sides positive: harmonic mean 2 * 50 * 100 / 150.
  assert pb.score([-1, 2, 0], [-1, 2, 1])["f1"] == pytest.approx(200 / 3)


def test_score_rejects_mismatched_lengths_and_mean_f1():
  with pytest.raises(ValueError, match="3 labels but 2 predictions"):
    pb.score([-1, 0, 1], [0, 1])
  assert pb.mean_f1([10.0, 20.0, 60.0]) == pytest.approx(30.0)
  assert pb.mean_f1([10.0, None]) is None and pb.mean_f1([]) is None


# --------------------------------------------------------------------------------------------------------- real data
@needs_data
def test_real_data_loads_without_bad_records():
  for subset, size in SIZES.items():
    records, bad = pb.load_subset(DATA, subset)
    assert len(records) == size and bad == [], (subset, bad[:3])
    assert all(-1 <= r.label < len(r.steps) for r in records)
    assert len({r.id for r in records}) == size
  head, _ = pb.load_subset(DATA, "math", limit=7)
  full, _ = pb.load_subset(DATA, "math")
  assert head == full[:7]  # limit is a prefix


@needs_data
@pytest.mark.parametrize("oracle", ["gold", "always_minus_one"])
def test_real_data_trivial_predictors(tmp_path, oracle):
  def predict(batch):
    return [pb.Prediction(r.label if oracle == "gold" else -1, raw="") for r in batch]

  res = pb.evaluate(DATA, list(SIZES), predict, tmp_path, batch_size=256, progress=False)
  for subset, size in SIZES.items():
    m = res["subsets"][subset]
    assert m["n"] == size and m["n_bad"] == 0 and m["unparseable"] == 0
    if oracle == "gold":
      assert m["acc_err"] == m["acc_cor"] == m["f1"] == 100.0
    else:
      assert m["acc_err"] == 0.0 and m["acc_cor"] == 100.0 and m["f1"] == 0.0
  assert res["mean_f1"] == (100.0 if oracle == "gold" else 0.0) and res["complete"]
  assert json.loads((tmp_path / "results.json").read_text()) == res
  lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
  assert len(lines) == sum(SIZES.values())


# --------------------------------------------------------------------------------------------------------- bad input
def test_bad_records_are_reported_and_good_ones_scored(tmp_path):
  raws = [
      _rec("good-err", 1),
      _rec("no-steps", -1, steps=()),
      _rec("label-high", 3),
      {k: v for k, v in _rec("no-problem", 0).items() if k != "problem"},
      _rec("good-cor", -1),
      dict(_rec("steps-not-str", 0), steps=["a", 2]),
      dict(_rec("steps-str", 0), steps="a b c"),
      dict(_rec("label-str", 0), label="1"),
      dict(_rec("label-bool", 0), label=True),
      ["not", "an", "object"],
      _rec("good-err", 0),  # duplicate id
  ]
  (tmp_path / "gsm8k.json").write_text(json.dumps(raws))
  records, bad = pb.load_subset(tmp_path, "gsm8k")
  assert [r.id for r in records] == ["good-err", "good-cor"]
  reasons = {(b.index, b.id): b.reason for b in bad}
  assert set(reasons) == {(1, "no-steps"), (2, "label-high"), (3, "no-problem"), (5, "steps-not-str"),
                          (6, "steps-str"), (7, "label-str"), (8, "label-bool"), (9, None), (10, "good-err")}
  assert "non-empty list" in reasons[(1, "no-steps")]
  assert "label 3 outside [-1, 2]" in reasons[(2, "label-high")]
  assert "missing field(s) problem" in reasons[(3, "no-problem")]
  assert "step 1 is int" in reasons[(5, "steps-not-str")]
  assert "got str" in reasons[(6, "steps-str")]
  assert "label must be an integer" in reasons[(7, "label-str")] and "integer" in reasons[(8, "label-bool")]
  assert "JSON object" in reasons[(9, None)]
  assert "duplicate id" in reasons[(10, "good-err")]

  res = pb.evaluate(tmp_path, ["gsm8k"], lambda b: [pb.Prediction(r.label) for r in b], tmp_path / "out",
                    progress=False)
  m = res["subsets"]["gsm8k"]
  assert m["n"] == 2 and m["f1"] == 100.0 and m["n_bad"] == 9
  on_disk = json.loads((tmp_path / "out" / "results.json").read_text())["subsets"]["gsm8k"]["bad_records"]
  assert {(b["index"], b["id"]) for b in on_disk} == set(reasons) and all(b["reason"] for b in on_disk)
  assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 2

  # The limit is a prefix of the raw file, taken before validation: bad records inside it are still reported.
  records, bad = pb.load_subset(tmp_path, "gsm8k", limit=3)
  assert [r.id for r in records] == ["good-err"] and [b.id for b in bad] == ["no-steps", "label-high"]


def test_limit_modes_keep_file_positions(tmp_path):
  raws = [_rec(f"r{i}", -1 if i >= 6 else 0) for i in range(10)]
  raws[3] = _rec("bad", 9)
  (tmp_path / "math.json").write_text(json.dumps(raws))
  records, bad = pb.load_subset(tmp_path, "math", limit=3)
  assert [r.index for r in records] == [0, 1, 2] and bad == []
  records, bad = pb.load_subset(tmp_path, "math", limit=3, limit_mode="spread")  # floor(i * 10 / 3)
  assert [r.index for r in records] == [0, 6] and [(b.index, b.id) for b in bad] == [(3, "bad")]
  assert [r.id for r in records] == ["r0", "r6"]
  assert len(pb.load_subset(tmp_path, "math", limit=50, limit_mode="spread")[0]) == 9
  with pytest.raises(ValueError, match="limit_mode='random'"):
    pb.load_subset(tmp_path, "math", limit=3, limit_mode="random")


@needs_data
def test_real_prefix_has_no_correct_records_and_says_so(tmp_path, capsys):
  # The shared files put erroneous records first: a 50-record prefix cannot measure acc_cor, a spread one can.
  def gold(batch):
    return [pb.Prediction(r.label) for r in batch]

  res = pb.evaluate(DATA, list(SIZES), gold, tmp_path / "prefix", limit=50, progress=False)
  for subset in SIZES:
    m = res["subsets"][subset]
    assert m["n_cor"] == 0 and m["acc_cor"] is None and m["f1"] is None and "limit_mode='spread'" in m["warning"]
  assert res["mean_f1"] is None and "warning: processbench gsm8k: no correct" in capsys.readouterr().err
  res = pb.evaluate(DATA, list(SIZES), gold, tmp_path / "spread", limit=50, limit_mode="spread", progress=False)
  for subset in SIZES:
    m = res["subsets"][subset]
    assert m["n"] == 50 and m["n_cor"] >= 10 and m["n_err"] >= 10 and m["f1"] == 100.0 and "warning" not in m
  assert res["config"]["limit_mode"] == "spread" and res["mean_f1"] == 100.0
  # A spread too small to hold both kinds asks for more records (it is spread already).
  res = pb.evaluate(DATA, ["olympiadbench"], gold, tmp_path / "spread2", limit=2, limit_mode="spread", progress=False)
  assert "try a larger limit" in res["subsets"]["olympiadbench"]["warning"]


@pytest.mark.parametrize("content,match", [
    ('{"id": "x", "steps": ["a"], "label": -1}', "top-level JSON is a dict; expected a JSON list"),
    ("[{\"id\": ", "not valid JSON"),
    ('"just a string"', "top-level JSON is a str"),
])
def test_wrong_file_schema_names_the_file(tmp_path, content, match):
  path = tmp_path / "math.json"
  path.write_text(content)
  with pytest.raises(ValueError, match=match) as e:
    pb.load_subset(tmp_path, "math")
  assert str(path) in str(e.value)


def test_missing_files_and_directories(tmp_path):
  (tmp_path / "gsm8k.json").write_text("[]")
  with pytest.raises(FileNotFoundError, match="omnimath.json: no such ProcessBench subset file.*gsm8k"):
    pb.load_subset(tmp_path, "omnimath")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pb.load_subset(tmp_path / "nope", "gsm8k")
  with pytest.raises(ValueError, match="limit=0"):
    pb.load_subset(tmp_path, "gsm8k", limit=0)


def test_hub_name_goes_through_datasets(monkeypatch):
  import datasets

  calls = []

  def fake_load_dataset(name, split):
    calls.append((name, split))
    return datasets.Dataset.from_list([_rec("h0", 0), _rec("h1", -1), _rec("h2", 5)])

  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  records, bad = pb.load_subset("Qwen/ProcessBench", "olympiadbench")
  assert calls == [("Qwen/ProcessBench", "olympiadbench")]
  assert [r.id for r in records] == ["h0", "h1"] and [(b.id, b.index) for b in bad] == [("h2", 2)]
  records, bad = pb.load_subset("Qwen/ProcessBench", "olympiadbench", limit=1)
  assert [r.id for r in records] == ["h0"] and bad == []


def test_evaluator_enforces_the_prediction_contract(tmp_path):
  (tmp_path / "math.json").write_text(json.dumps([_rec("a", 1), _rec("b", -1), _rec("c", 2)]))
  preds = {"a": pb.Prediction(7, raw="\\boxed{7}"), "b": pb.Prediction(-1),
           "c": pb.Prediction(None, status="too_long", reason="prompt too long")}
  res = pb.evaluate(tmp_path, ["math"], lambda b: [preds[r.id] for r in b], tmp_path / "o", progress=False)
  m = res["subsets"]["math"]
  assert m["unparseable"] == 1 and m["too_long"] == 1 and m["acc_cor"] == 100.0 and m["acc_err"] == 0.0
  lines = {d["id"]: d for d in map(json.loads, (tmp_path / "o" / "predictions.jsonl").read_text().splitlines())}
  assert lines["a"]["pred"] is None and lines["a"]["status"] == "unparseable" and "outside" in lines["a"]["reason"]
  assert lines["c"]["status"] == "too_long" and lines["b"]["pred"] == -1
  with pytest.raises(ValueError, match="returned 1 predictions for a batch of 3"):
    pb.evaluate(tmp_path, ["math"], lambda b: [pb.Prediction(0)], tmp_path / "o", progress=False)
  with pytest.raises(TypeError, match="expected a Prediction"):
    pb.evaluate(tmp_path, ["math"], lambda b: [0] * len(b), tmp_path / "o", progress=False)


# ---------------------------------------------------------------------------------------------- prompt and parser
def test_prompt_follows_the_official_template():
  rec = pb.parse_records([_rec("x", 0, steps=["Add 2 and 2.", "So 5."], problem="What is 2+2?")], "gsm8k")[0][0]
  assert pb.build_prompt(rec) == (
      "The following is a math problem and a solution (split into paragraphs, enclosed with tags and indexed from "
      "0):\n\n[Math Problem]\n\nWhat is 2+2?\n\n[Solution]\n\n<paragraph_0>\nAdd 2 and 2.\n</paragraph_0>\n\n"
      "<paragraph_1>\nSo 5.\n</paragraph_1>\n\nYour task is to review and critique the solution paragraph by "
      "paragraph. Once you identify an error in a paragraph, return the index of the paragraph where the earliest "
      "error occurs. Otherwise, return the index of -1 (which typically denotes \"not found\").\n\nPlease put your "
      "final answer (i.e., the index) in \\boxed{}.")


@pytest.mark.parametrize("text,expected", [
    ("The error is in paragraph 2. \\boxed{2}", 2),
    ("All steps are right: \\boxed{-1}", -1),
    ("\\boxed{ 3 }", 3),
    ("first \\boxed{1} then \\boxed{0}", 0),  # the last box counts
    ("\\boxed{1} and a cut-off \\boxed{", 1),  # an unclosed box at the end leaves the earlier one
    ("I think paragraph 2 is wrong.", None),
    ("\\boxed{two}", None),
    ("\\boxed{2.5}", None),
    ("\\boxed{4}", None),  # 4 steps -> valid indices are -1..3
    ("\\boxed{-2}", None),
])
def test_parse_critique(text, expected):
  idx, reason = pb.parse_critique(text, n_steps=4)
  assert idx == expected
  assert (reason == "") == (expected is not None)


def test_parse_critique_reasons():
  assert pb.parse_critique("none", 3)[1] == "no \\boxed{}"
  assert "not an integer" in pb.parse_critique("\\boxed{two}", 3)[1]
  assert pb.parse_critique("\\boxed{3}", 3)[1] == "index 3 outside [-1, 2]"


def test_prompt_bucket():
  assert [pb.prompt_bucket(n) for n in (1, 16, 17, 300, 385, 768, 769, 1024, 1025, 3000)] == \
      [16, 16, 24, 384, 512, 768, 1024, 1024, 1536, 3072]


# ------------------------------------------------------------------------------------------------- real model
def test_critic_counts_prompts_over_the_context_budget(smollm2_dir):
  records, _ = pb.parse_records([_rec("tiny", -1, steps=["1+1=2."], problem="1+1?"),
                                 _rec("huge", 0, steps=["word " * 400])], "gsm8k")
  critic = pb.GenerativeCritic(smollm2_dir, max_new_tokens=4, max_len=260)
  assert len(critic.prompt_ids(records[0])) <= 256 < len(critic.prompt_ids(records[1]))
  tiny, huge = critic(records)
  assert huge.index is None and huge.status == "too_long" and "exceeds max_len=260" in huge.reason
  assert huge.raw == "" and huge.finished is None
  assert tiny.status in ("ok", "unparseable") and tiny.finished is not None and tiny.raw


@needs_data
def test_cli_end_to_end_with_smollm2(smollm2_dir, tmp_path):
  # Two real records per subset (the shortest erroneous and shortest correct one, so both accuracies are defined),
  # then a third that --limit 2 must leave out.
  data = tmp_path / "data"
  data.mkdir()
  steps_of = {}
  for subset in SIZES:
    raws = json.loads((DATA / f"{subset}.json").read_text())
    size = lambda r: len(r["problem"]) + sum(map(len, r["steps"]))  # noqa: E731
    err = min((r for r in raws if r["label"] != -1), key=size)
    cor = min((r for r in raws if r["label"] == -1), key=size)
    extra = next(r for r in raws if r["id"] not in (err["id"], cor["id"]))
    (data / f"{subset}.json").write_text(json.dumps([err, cor, extra]))
    steps_of.update({(subset, r["id"]): len(r["steps"]) for r in (err, cor)})

  out = tmp_path / "out"
  r = subprocess.run([sys.executable, "-m", "sparkjax.eval.processbench", f"--model={smollm2_dir}", f"--out={out}",
                      f"--data={data}", "--limit=2", "--batch_size=2", "--max_new_tokens=8"],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mean F1" in r.stdout and "processbench omnimath: 2/2" in r.stderr

  res = json.loads((out / "results.json").read_text())
  preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
  assert res["complete"] and res["config"]["limit"] == 2 and res["config"]["max_new_tokens"] == 8
  assert len(preds) == 8 and {(p["subset"], p["id"]) for p in preds} == set(steps_of)
  for p in preds:
    assert p["pred"] is None or -1 <= p["pred"] < steps_of[(p["subset"], p["id"])]
    assert (p["pred"] is None) == (p["status"] != "ok") and p["status"] in ("ok", "unparseable")
    assert isinstance(p["raw"], str) and isinstance(p["finished"], bool)
  f1s = []
  for subset in SIZES:
    rows = [p for p in preds if p["subset"] == subset]
    again = pb.score([p["label"] for p in rows], [p["pred"] for p in rows])
    m = res["subsets"][subset]
    assert m["n"] == 2 and m["n_err"] == 1 and m["n_cor"] == 1 and m["n_bad"] == 0
    for k in ("acc_err", "acc_cor", "f1"):
      assert m[k] == pytest.approx(again[k])
    assert m["unparseable"] == sum(p["status"] == "unparseable" for p in rows)
    assert m["unfinished"] == sum(not p["finished"] for p in rows)
    f1s.append(again["f1"])
  assert res["mean_f1"] == pytest.approx(sum(f1s) / 4)


def test_cli_bad_data_fails_before_loading_the_model(tmp_path):
  r = subprocess.run([sys.executable, "-m", "sparkjax.eval.processbench", f"--model={tmp_path / 'no_model'}",
                      f"--out={tmp_path / 'out'}", f"--data={tmp_path / 'missing'}"],
                     capture_output=True, text=True, cwd=REPO, timeout=120)
  assert r.returncode == 2 and "ProcessBench data directory" in r.stderr and "missing" in r.stderr
  assert not (tmp_path / "out").exists()


def test_prm_critic_formats_steps_for_the_prm(smollm2_dir):
  """A PRM-format critic (the steps in the PRM's own input format, verdicts read by the shared parser) runs on real
  records; an untrained PRM's unreadable output is counted as unparseable, never as a prediction."""
  from sparkjax.eval.processbench import PRMCritic

  recs, _ = pb.load_subset(DATA, "gsm8k", limit=2)
  critic = PRMCritic(smollm2_dir, "prm", max_new_tokens=24)
  preds = critic(recs)
  assert len(preds) == 2
  for p, r in zip(preds, recs):
    assert (p.status == "ok" and -1 <= p.index < len(r.steps)) or (p.status == "unparseable" and p.index is None)
    # The PRM's own output is kept for predictions.jsonl, and the verdicts read from it are the prediction's.
    assert isinstance(p.finished, bool) and isinstance(p.raw, str)
    assert prm_scorers.first_error_predictions(prm_scorers.score_texts([p.raw], [len(r.steps)]), [len(r.steps)]) == [
        p.index]
  assert critic.config["format"] == "prm"


def test_a_killed_run_resumes_from_its_finished_batches(tmp_path, capsys):
  """A run that dies after two batches keeps them in partial.jsonl; started again with the same settings it predicts
  only the other records and ends with the results of an unbroken run; other settings start afresh."""
  raws = [_rec(f"r{i}", -1 if i % 3 == 0 else i % 3 - 1) for i in range(10)]
  (tmp_path / "gsm8k.json").write_text(json.dumps(raws))
  seen = []

  def predict(batch, die_after=None):
    if die_after is not None and len(seen) >= die_after:
      raise RuntimeError("killed")
    seen.append([r.index for r in batch])
    return [pb.Prediction(r.label if r.index % 2 else -1, raw=f"out {r.index}", finished=True) for r in batch]

  full = pb.evaluate(tmp_path, ["gsm8k"], predict, tmp_path / "ref", batch_size=3, progress=False)
  seen.clear()
  out = tmp_path / "out"
  with pytest.raises(RuntimeError, match="killed"):
    pb.evaluate(tmp_path, ["gsm8k"], lambda b: predict(b, die_after=2), out, batch_size=3, progress=False,
                config=dict(model="m"))
  first = [i for b in seen for i in b]
  assert len(first) == 6 and (out / pb.PARTIAL_FILE).exists()
  with open(out / pb.PARTIAL_FILE, "a") as f:
    f.write('{"subset": "gsm8k", "rec')  # a kill during an append leaves a torn line
  seen.clear()
  res = pb.evaluate(tmp_path, ["gsm8k"], predict, out, batch_size=3, progress=False, config=dict(model="m"))
  assert sorted(i for b in seen for i in b) == sorted(set(range(10)) - set(first))
  assert "resuming, 6 of 10 records" in capsys.readouterr().err
  assert res["resumed_records"] == 6 and res["complete"] and not (out / pb.PARTIAL_FILE).exists()
  assert res["subsets"] == full["subsets"]
  assert (out / "predictions.jsonl").read_text() == (tmp_path / "ref" / "predictions.jsonl").read_text()

  # Other settings: the kept predictions are not used.
  seen.clear()
  with pytest.raises(RuntimeError, match="killed"):
    pb.evaluate(tmp_path, ["gsm8k"], lambda b: predict(b, die_after=1), out, batch_size=3, progress=False,
                config=dict(model="m"))
  seen.clear()
  res = pb.evaluate(tmp_path, ["gsm8k"], predict, out, batch_size=3, progress=False, config=dict(model="other"))
  assert sum(len(b) for b in seen) == 10 and res["resumed_records"] == 0
  assert "other settings (differing: model)" in capsys.readouterr().err
