"""SPARK-PRM Stage II: example builders, record validation, the on-device verdict parser (against the host parser),
the discriminative loss (against numpy), and a trained generative PRM scored on device and on the host."""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax.config_args import optimizer_config
from sparkjax.data import arith
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.spark import prm_examples, prm_scorers, prm_train
from sparkjax.spark import verdicts as V

T, F = True, False
WORLD = arith.WorldConfig(min_ops=2, max_ops=4)


@pytest.fixture(scope="module")
def tok():
  return arith.build_tokenizer(WORLD.max_value)


@pytest.fixture(scope="module")
def ids(tok):
  return prm_scorers.WorldVerdictTokens.from_tokenizer(tok)


def world_records(seed: int, n: int, p_error: float = 0.5) -> list[dict]:
  """Stage-I-shaped records with the world's ground-truth labels; the rationale analyses are the step texts."""
  out = []
  for i in range(n):
    p = arith.problem_at(seed, i, WORLD)
    # Not default_rng([seed, i]): that is the stream problem_at drew the problem from, so the corruption draw would
    # replay the op-count draw (every 2-op solution wrong, every 4-op one right) and a PRM could read the label
    # off the problem's length.
    sol = arith.sample_solution(p, np.random.default_rng([seed, i, 1]), WORLD, p_error)
    labels = arith.process_labels(p, sol.steps, sol.answer)
    final = arith.first_error(p, sol.steps, sol.answer) == -1
    texts = [s.text() for s in sol.steps]
    out.append(dict(id=f"w{seed}-{i}", problem=p.text(), steps=texts, answer=str(sol.answer), verdicts=labels,
                    final=final, rationale=V.render_verification(texts, labels, final), variant="gold"))
  return out


def test_world_records_labels_do_not_follow_the_problem_length():
  """The learning checks below are only as good as their data: a solution's correctness must not be readable off
  the problem (it was, through a shared random stream, until this test existed)."""
  recs = world_records(0, 600)
  for n in range(WORLD.min_ops, WORLD.max_ops + 1):
    finals = [r["final"] for r in recs if r["problem"].count("then") == n]
    assert len(finals) > 100 and 0.3 < np.mean(finals) < 0.7, (n, np.mean(finals))


def tiny_cfg(tok, **kw) -> ModelConfig:
  return ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512, **kw)


HAND = dict(id="h1", problem="Start with 7, then + 5, then * 3.", steps=["7 + 5 = 12", "12 * 3 = 35"], answer="35",
            verdicts=[T, F], final=F, rationale=V.render_verification(["7 + 5 = 12", "12 * 3 = 35"], [T, F], F),
            variant="step")


# ---- examples ----------------------------------------------------------------------------------------------------


def test_example_builders_exact_strings():
  solution = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 35\nAnswer: 35\n"
  assert prm_examples.build_example(HAND, "orm") == (
      "Problem: Start with 7, then + 5, then * 3.\nSolution:\n" + solution + "Is the answer correct (Yes/No)?\n",
      "No")
  verify = "Problem: Start with 7, then + 5, then * 3.\nStudent Solution:\n" + solution + "Let's verify step by step.\n"
  assert prm_examples.build_example(HAND, "prm") == (
      verify, "Step 1: Correct\nStep 2: Incorrect\nIs the answer correct (Yes/No)? No")
  assert prm_examples.build_example(HAND, "prm_cot") == (
      verify, "Step 1: 7 + 5 = 12. The step is correct.\nStep 2: 12 * 3 = 35. The step is incorrect.\n"
      "Is the answer correct (Yes/No)? No")
  assert prm_examples.build_prompt(HAND, "prm_cot") == verify
  assert prm_examples.build_example(HAND, "prm", style="llm")[0].startswith("Below are a math problem")
  with pytest.raises(ValueError, match="unknown generative format"):
    prm_examples.build_example(HAND, "disc")


@pytest.mark.parametrize("fmt", prm_examples.GENERATIVE_FORMATS)
def test_encode_examples_world(tok, fmt):
  records = world_records(7, 30)
  batch = prm_examples.encode_examples(tok, records, fmt)
  tokens, loss_mask, mask = batch["tokens"], batch["loss_mask"], batch["mask"]
  assert tokens.dtype == np.int32 and loss_mask.dtype == np.float32 and mask.dtype == bool
  assert batch["skipped"] == [] and batch["rows"].tolist() == list(range(30))
  assert not (tokens == tok.unk_token_id).any()
  for b, rec in enumerate(records):
    prompt, target = prm_examples.build_example(rec, fmt)
    p, t = tok.encode(prompt), tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
    n = len(p) + len(t)
    assert tokens[b, :n].tolist() == p + t and mask[b].tolist() == [True] * n + [False] * (tokens.shape[1] - n)
    assert loss_mask[b].tolist() == [0.0] * len(p) + [1.0] * len(t) + [0.0] * (tokens.shape[1] - n)
    assert (tokens[b, n:] == tok.pad_token_id).all()
  # Too long: reported with the record's id, never cut.
  lengths = mask.sum(1)
  limit = int(lengths.max()) - 1  # the longest examples no longer fit
  short = prm_examples.encode_examples(tok, records, fmt, length=limit)
  too_long = [i for i in range(30) if lengths[i] > limit]
  assert [s["index"] for s in short["skipped"]] == too_long and too_long
  assert all(s["id"] == records[s["index"]]["id"] and f"> length {limit}" in s["reason"] for s in short["skipped"])
  assert short["rows"].tolist() == [i for i in range(30) if i not in too_long]
  assert short["tokens"].shape == (30 - len(too_long), limit)


def test_repeat_correct_reaches_the_share_and_keeps_every_record():
  rec = lambda i, v: dict(id=f"r{i}", verdicts=v)
  records = [rec(0, [True, False]), rec(1, [True, True]), rec(2, [False]), rec(3, [True]), rec(4, [False, False]),
             rec(5, [True, False, False]), rec(6, [False])]
  out = prm_examples.repeat_correct(records, 0.5)  # 2 all-correct of 7: repeated to 5 beside the 5 others
  assert [r["id"] for r in out] == ["r0", "r2", "r4", "r5", "r6", "r1", "r3", "r1", "r3", "r1"]
  assert sum(all(r["verdicts"]) for r in out) / len(out) >= 0.5
  for share in (0.3, 0.45, 0.6, 0.9):
    out = prm_examples.repeat_correct(records, share)
    k = sum(all(r["verdicts"]) for r in out)
    assert k / len(out) >= share and (k - 1) / (len(out) - 1) < share  # the smallest repetition that reaches it
    assert {r["id"] for r in out} == {r["id"] for r in records}
    assert len(out) - k == 5  # the others exactly once
  assert prm_examples.repeat_correct(records, 0.0) == records
  assert prm_examples.repeat_correct(records, 0.2) == records  # already 2 / 7
  assert prm_examples.repeat_correct([rec(0, [False])], 0.5) == [rec(0, [False])]  # nothing to repeat
  with pytest.raises(ValueError, match="share=1.0"):
    prm_examples.repeat_correct(records, 1.0)


def test_bad_records_are_counted_with_reasons(tmp_path):
  good = dict(HAND)
  bad = [
      {k: v for k, v in HAND.items() if k != "rationale"} | dict(id="no-rationale"),
      dict(HAND, id="short", verdicts=[T]),
      dict(HAND, id="str-final", final="No"),
      dict(HAND, id="int-verdict", verdicts=[1, 0]),
      dict(HAND, id="no-steps", steps=[], verdicts=[]),
      dict(HAND, id=7),
  ]
  path = tmp_path / "stage1.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in [good, *bad, good]))
  records, report = prm_examples.load_records(path)
  assert len(records) == 2 and len(report) == 6
  assert [r["index"] for r in report] == [1, 2, 3, 4, 5, 6]
  assert [r["id"] for r in report] == ["no-rationale", "short", "str-final", "int-verdict", "no-steps", None]
  reasons = [r["reason"] for r in report]
  assert reasons[0] == "missing field 'rationale'"
  assert reasons[1] == "1 verdicts for 2 steps"
  assert reasons[2] == "field 'final' is str, expected a boolean"
  assert reasons[3] == "field 'verdicts' holds a non-boolean item"
  assert reasons[4] == "no steps"
  assert reasons[5] == "field 'id' is int, expected a string"
  _, report = prm_examples.check_records(["not a record", dict(HAND, answer=True)])
  assert report[0]["reason"].startswith("expected a JSON object") and "field 'answer' is bool" in report[1]["reason"]
  assert prm_examples.check_records([dict(HAND, answer=35)])[1] == []  # world answers may be JSON numbers


# ---- parsing -----------------------------------------------------------------------------------------------------

COT = V.render_verification(["3 + 4 = 7", "7 * 2 = 15", "15 - 1 = 14"], [T, F, F], F)
# (format, text, solution step count, expected device reading: step verdicts, final (None = not read), first error
# prediction for ProcessBench)
PARSE_CASES = [
    ("prm", V.render_prm([T, F, F], F), 3, [T, F, F], F, 1),
    ("prm", V.render_prm([T, T], T), 2, [T, T], T, -1),
    ("prm", V.render_prm([T, T], T).rsplit("\n", 1)[0], 2, [T, T], None, -1),  # no final line: steps still judged
    ("prm", "Step 1: Correct\nStep 2: Incorrect\n", 3, [T, F], None, None),  # stopped early: step 3 not judged
    ("prm", "", 2, [], None, None),
    ("prm_cot", COT, 3, [T, F, F], F, 1),
    ("prm_cot", V.render_verification(["1 + 1 = 2"], [T], T), 1, [T], T, -1),
    ("prm_cot", COT.split("\nIs")[0], 3, [T, F, F], None, 1),  # no final line
    ("prm_cot", "\n".join(COT.split("\n")[:2]), 3, [T, F], None, None),  # truncated after two step lines
    ("prm_cot", "Step 1: 3 + 4 = 7. The step is correct.\nStep 2: 7 * 2 = 15. The step", 3, [T], None, None),
]


def _generated(tok, texts, width):
  """What the sampler returns for these outputs: tokens + eos, pad after; lengths include the eos."""
  rows = []
  for text in texts:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids, text
    rows.append(ids + [tok.eos_token_id])
  tokens = np.full((len(rows), width), tok.pad_token_id, np.int32)
  for b, r in enumerate(rows):
    tokens[b, :len(r)] = r
  return tokens, np.array([len(r) for r in rows], np.int32)


@pytest.mark.parametrize("fmt", ["prm", "prm_cot"])
def test_device_parser_matches_expectations_and_host_parser(tok, ids, fmt):
  cases = [c for c in PARSE_CASES if c[0] == fmt]
  texts = [c[1] for c in cases]
  n_steps = [c[2] for c in cases]
  tokens, lengths = _generated(tok, texts, 80)
  max_steps = 4
  dev = jax.device_get(jax.jit(lambda t, n: prm_scorers.parse_generated(t, n, ids, fmt, max_steps))(tokens, lengths))
  for b, (_, text, n, steps, final, fe) in enumerate(cases):
    assert dev["num_steps"][b] == len(steps), text
    assert dev["step_correct"][b].tolist() == steps + [F] * (max_steps - len(steps)), text
    assert dev["has_final"][b] == (final is not None) and dev["final"][b] == bool(final), text
    assert dev["first_error"][b] == next((i for i, ok in enumerate(steps) if not ok), -1), text
  expected = [c[5] for c in cases]
  assert prm_scorers.first_error_predictions(dev, n_steps) == expected

  # The host parser reads the same decoded outputs the same way.
  decoded = prm_scorers.decode_outputs(tok, dict(tokens=tokens, lengths=lengths))
  host = prm_scorers.score_texts(decoded, n_steps, fmt=fmt, max_steps=max_steps)
  assert prm_scorers.first_error_predictions(host, n_steps) == expected
  np.testing.assert_array_equal(host["final"], dev["final"])
  np.testing.assert_array_equal(host["has_final"], dev["has_final"])
  for b, status in enumerate(host["status"]):
    if status != "missing_verdict":  # the host reads all steps or none; the device counts what it reads
      np.testing.assert_array_equal(host["step_correct"][b], dev["step_correct"][b])
      assert host["num_steps"][b] == dev["num_steps"][b] and host["first_error"][b] == dev["first_error"][b]
    else:
      assert host["num_steps"][b] == 0 and expected[b] is None


def test_device_parser_reads_an_output_cut_by_max_new_tokens(tok, ids):
  full, _ = _generated(tok, [COT], 80)
  n = tok.encode(COT.split("\nIs")[0] + "\nIs the answer", add_special_tokens=False)
  cut = full[:, :len(n)]  # no eos: the sampler ran out of tokens inside the final line
  dev = prm_scorers.parse_generated(jnp.asarray(cut), jnp.asarray([len(n)]), ids, "prm_cot", 3)
  assert dev["step_correct"][0].tolist() == [T, F, F] and not dev["has_final"][0]
  host = prm_scorers.score_texts([tok.decode(cut[0].tolist())], [3], fmt="prm_cot")
  assert host["step_correct"][0].tolist() == [T, F, F] and not host["has_final"][0]


def test_orm_parsing_and_predictions(tok, ids):
  texts = ["Yes", "No", "Step 1 : Correct"]
  tokens, lengths = _generated(tok, texts, 6)
  dev = jax.device_get(prm_scorers.parse_generated(jnp.asarray(tokens), jnp.asarray(lengths), ids, "orm", 4))
  assert set(dev) == {"final", "has_final"}
  assert dev["final"].tolist() == [T, F, F] and dev["has_final"].tolist() == [T, T, F]
  host = prm_scorers.score_texts(prm_scorers.decode_outputs(tok, dict(tokens=tokens, lengths=lengths)), fmt="orm")
  assert host["final"].tolist() == [T, F, F] and host["has_final"].tolist() == [T, T, F]
  assert prm_scorers.first_error_predictions(dev, [3, 3, 3]) == [-1, 2, None]
  with pytest.raises(ValueError, match="raise the scorer's max_steps"):
    prm_scorers.first_error_predictions(dict(step_correct=np.ones((1, 2), bool), num_steps=np.array([2])), [3])


# ---- discriminative ----------------------------------------------------------------------------------------------


def test_discriminative_encoding(tok):
  rec2 = dict(HAND, id="h2", steps=["7 + 5 = 12", "12 * 3 = 36", "36 - 1 = 35"], verdicts=[T, T, F])
  batch = prm_examples.encode_discriminative(tok, [HAND, rec2], sep="\n")
  nl = tok.convert_tokens_to_ids("\n")
  tokens, sep = batch["tokens"], batch["sep_positions"]
  assert sep.dtype == np.int32 and batch["labels"].dtype == np.float32 and batch["label_mask"].dtype == bool
  prefix = tok.encode("Problem: Start with 7, then + 5, then * 3.\nStudent Solution:\n")
  step = [len(tok.encode(f"Step 1: {s}")) for s in rec2["steps"]]  # every step line is 8 tokens
  p0 = len(prefix) + step[0]
  assert sep.tolist() == [[p0, p0 + 9, -1], [p0, p0 + 9, p0 + 18]]
  assert batch["labels"].tolist() == [[1, 0, 0], [1, 1, 0]]
  assert batch["label_mask"].tolist() == [[T, T, F], [T, T, T]]
  for b in range(2):
    valid = sep[b][sep[b] >= 0]
    assert (tokens[b, valid] == nl).all()
    assert int(batch["mask"][b].sum()) == valid[-1] + 1  # the last separator ends the input
  assert tok.decode(tokens[1, :sep[1, 1] + 1].tolist()) == (
      "Problem : Start with 7 , then + 5 , then * 3 . \n Student Solution : \n Step 1 : 7 + 5 = 12 \n"
      " Step 2 : 12 * 3 = 36 \n")
  short = prm_examples.encode_discriminative(tok, [HAND, rec2], sep="\n", max_steps=2)
  assert short["rows"].tolist() == [0] and short["skipped"][0]["id"] == "h2"
  assert "3 steps > max_steps 2" in short["skipped"][0]["reason"]
  with pytest.raises(ValueError, match="not one known token"):
    prm_examples.encode_discriminative(tok, [HAND], sep="<nope>")
  checked = dict(rec2, step_checks=[T, F, T])  # labels from another field; one it lacks is an error, named
  assert prm_examples.encode_discriminative(tok, [checked], label_field="step_checks")["labels"].tolist() == [[1, 0, 1]]
  with pytest.raises(ValueError, match="'h2'.*no field 'step_checks'"):
    prm_examples.encode_discriminative(tok, [checked, rec2], label_field="step_checks")


def test_discriminative_loss_and_scores_match_numpy(tok):
  cfg = tiny_cfg(tok)
  params = transformer.init_params(cfg, jax.random.key(3), std=0.3)
  records = world_records(11, 5)
  batch = prm_examples.encode_discriminative(tok, records, sep="\n", max_steps=WORLD.max_ops)
  label_ids = prm_examples.label_token_ids(tok)
  logits = np.asarray(transformer.forward(params, cfg, jnp.asarray(batch["tokens"]), None,
                                          jnp.asarray(batch["mask"])), np.float64)
  total, count, p_ref = 0.0, 0, np.zeros(batch["labels"].shape)
  for b in range(len(records)):
    for s, pos in enumerate(batch["sep_positions"][b]):
      if pos < 0:
        continue
      pair = logits[b, pos, list(label_ids)]
      p = np.exp(pair[0]) / np.exp(pair).sum()
      y = batch["labels"][b, s]
      total -= y * np.log(p) + (1 - y) * np.log(1 - p)
      count += 1
      p_ref[b, s] = p
  arrays = {k: jnp.asarray(batch[k]) for k in ("tokens", "mask", "sep_positions", "labels", "label_mask")}
  loss, aux = prm_train.disc_loss(params, cfg, arrays, label_ids)
  np.testing.assert_allclose(float(loss), total / count, rtol=1e-4)
  assert int(aux["steps"]) == count == sum(len(r["steps"]) for r in records)
  assert p_ref[batch["label_mask"]].std() > 0.1  # the probabilities differ per step: not a check of p = 0.5

  ps = np.sort(p_ref[batch["label_mask"]])
  threshold = float(ps[len(ps) // 2 - 1: len(ps) // 2 + 1].mean())  # between two probabilities: no float32 ties
  scorer = prm_scorers.make_discriminative_scorer(cfg, label_ids, threshold=threshold)
  out = jax.device_get(scorer(params, arrays["tokens"], arrays["mask"], arrays["sep_positions"]))
  np.testing.assert_allclose(out["p_correct"], p_ref, atol=1e-5)
  ok = (p_ref >= threshold) & batch["label_mask"]
  fe = [next((s for s in range(m.sum()) if not ok[b, s]), -1) for b, m in enumerate(batch["label_mask"])]
  assert out["first_error"].tolist() == fe and out["num_steps"].tolist() == [len(r["steps"]) for r in records]
  assert prm_scorers.first_error_predictions(out, [len(r["steps"]) for r in records]) == fe
  # 3 calls, the last filled
  preds, finals = prm_scorers.predict(params, cfg, tok, "disc", records, batch=2, threshold=threshold)
  assert preds == fe and finals == [f == -1 for f in fe]



def test_first_error_mask_and_class_weights_match_numpy(tok):
  """The weighted first-error loss against a float64 loop: steps after a row's first incorrect label carry no
  weight, and each class gets the weight that gives both equal totals over the steps trained on."""
  labels = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], np.float32)
  lmask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], bool)
  keep = prm_train.first_error_mask(labels, lmask)
  assert keep.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
  np.testing.assert_array_equal(np.asarray(prm_train.first_error_mask(jnp.asarray(labels), jnp.asarray(lmask))), keep)
  wc, wi = prm_train.class_weights(labels, lmask, until_first_error=True)  # 6 correct, 4 incorrect trained on
  np.testing.assert_allclose([wc, wi], [0.5 * 10 / 6, 0.5 * 10 / 4])
  assert prm_train.class_weights(np.ones((2, 2)), np.ones((2, 2), bool)) == (1.0, 1.0)

  cfg = tiny_cfg(tok)
  params = transformer.init_params(cfg, jax.random.key(3), std=0.3)
  batch = prm_examples.encode_discriminative(tok, world_records(11, 8), sep="\n", max_steps=WORLD.max_ops)
  wrong = (batch["labels"] < 0.5) & batch["label_mask"]
  assert wrong.sum() > wrong.any(1).sum()  # some rows have propagated labels after their first error: the mask cuts
  label_ids = prm_examples.label_token_ids(tok)
  arrays = {k: jnp.asarray(batch[k]) for k in ("tokens", "mask", "sep_positions", "labels", "label_mask")}
  d = np.asarray(prm_scorers.disc_margins(params, cfg, arrays["tokens"], arrays["mask"], arrays["sep_positions"],
                                          label_ids),
                 np.float64)
  w = (1.7, 0.4)
  num = den = 0.0
  for b in range(len(d)):
    seen_bad = False
    for s in range(batch["label_mask"].shape[1]):
      if not batch["label_mask"][b, s] or seen_bad:
        continue
      y = batch["labels"][b, s]
      p = 1 / (1 + np.exp(-d[b, s]))
      ws = w[0] if y > 0.5 else w[1]
      num -= ws * (y * np.log(p) + (1 - y) * np.log(1 - p))
      den += ws
      seen_bad = y < 0.5
  loss, aux = prm_train.disc_loss(params, cfg, arrays, label_ids, weights=w, until_first_error=True)
  np.testing.assert_allclose(float(loss), num / den, rtol=1e-4)
  assert int(aux["steps"]) == prm_train.first_error_mask(batch["labels"], batch["label_mask"]).sum()
  with pytest.raises(ValueError, match="apply to fmt='disc'"):
    prm_train.train_prm(params, cfg, batch, "prm", optimizer_config(1e-3, 1), 1, 2, 0, balance_classes=True)

def test_discriminative_training_lowers_the_loss(tok):
  cfg = tiny_cfg(tok)
  params = transformer.init_params(cfg, jax.random.key(0))
  batch = prm_examples.encode_discriminative(tok, world_records(5, 48), sep="\n")
  opt = optimizer_config(3e-3, 40, warmup_steps=5)
  trained, history = prm_train.train_prm(params, cfg, batch, "disc", opt, steps=40, batch_size=16, seed=0, log_every=10,
                                         label_ids=prm_examples.label_token_ids(tok))
  assert [h["step"] for h in history] == [10, 20, 30, 40]
  arrays = {k: jnp.asarray(batch[k]) for k in ("tokens", "mask", "sep_positions", "labels", "label_mask")}
  label_ids = prm_examples.label_token_ids(tok)
  before = float(prm_train.disc_loss(params, cfg, arrays, label_ids)[0])
  after = float(prm_train.disc_loss(trained, cfg, arrays, label_ids)[0])
  y = batch["labels"][batch["label_mask"]].mean()
  prior = -(y * np.log(y) + (1 - y) * np.log(1 - y))  # the best loss that ignores the input
  print(f"disc loss: init {before:.3f}, label prior {prior:.3f}, after 40 steps {after:.3f}")
  assert after < 0.8 * prior < before
  assert float(jnp.abs(params["embed"]).sum()) > 0  # the caller's params survive the donated state
  assert not np.allclose(trained["embed"], params["embed"])


@pytest.mark.parametrize("fmt", ["disc", "prm"])
def test_prm_training_resumes_bitwise(tok, tmp_path, fmt):
  """Stopped after 4 of 6 steps (its checkpoint every 2) and started again: the same parameters and history as an
  uninterrupted run."""
  from sparkjax.train.checkpoint import Checkpointer

  cfg = tiny_cfg(tok)
  params = transformer.init_params(cfg, jax.random.key(0))
  recs = world_records(5, 24)
  batch = (prm_examples.encode_discriminative(tok, recs, sep="\n") if fmt == "disc" else
           prm_examples.encode_examples(tok, recs, fmt, "world"))
  opt = optimizer_config(3e-3, 6, warmup_steps=1)
  kw = dict(batch_size=8, seed=0, log_every=1, checkpoint_every=2,
            label_ids=prm_examples.label_token_ids(tok) if fmt == "disc" else None)
  straight, h1 = prm_train.train_prm(params, cfg, batch, fmt, opt, steps=6, **kw)
  ckpt = Checkpointer(tmp_path / "c")
  prm_train.train_prm(params, cfg, batch, fmt, opt, steps=4, ckpt=ckpt, **kw)  # a run stopped after step 4
  resumed, h2 = prm_train.train_prm(params, cfg, batch, fmt, opt, steps=6, ckpt=ckpt, **kw)
  ckpt.close()
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), straight, resumed)
  assert [h["step"] for h in h2] == [1, 2, 3, 4, 5, 6] and [h["loss"] for h in h2] == [h["loss"] for h in h1]


def test_length_micro_batches_cover_the_batch_sorted_and_padded_to_their_own_length():
  lengths = np.array([40, 7, 33, 18, 59, 17, 3, 60, 21])
  parts = prm_train.length_micro_batches(lengths, 3, multiple=16, max_len=60)
  assert sorted(np.concatenate([r for r, _ in parts]).tolist()) == list(range(9))
  assert [sorted(lengths[r].tolist()) for r, _ in parts] == [[3, 7, 17], [18, 21, 33], [40, 59, 60]]
  assert [T for _, T in parts] == [32, 48, 60]  # rounded up to 16, the last capped at the set's length


@pytest.mark.parametrize("fmt", ["disc", "prm"])
def test_length_bucketed_training_is_the_same_update(tok, fmt):
  """Each batch cut into length-sorted micro-batches padded to their own length: the same parameters and losses
  as one step on the batch padded to the set's longest example (up to float summation order), in fewer tokens."""
  cfg = tiny_cfg(tok)
  params = transformer.init_params(cfg, jax.random.key(0))
  recs = world_records(7, 40)
  batch = (prm_examples.encode_discriminative(tok, recs, sep="\n") if fmt == "disc" else
           prm_examples.encode_examples(tok, recs, fmt, "world"))
  lengths = batch["mask"].sum(1)
  assert lengths.min() < batch["tokens"].shape[1] - 8  # rows of several lengths: the micro-batches are shorter
  opt = optimizer_config(3e-3, 5, warmup_steps=1)
  kw = dict(batch_size=16, seed=0, log_every=1, label_ids=prm_examples.label_token_ids(tok) if fmt == "disc" else None,
            balance_classes=fmt == "disc")
  whole, h1 = prm_train.train_prm(params, cfg, batch, fmt, opt, steps=5, **kw)
  parts, h2 = prm_train.train_prm(params, cfg, batch, fmt, opt, steps=5, length_buckets=4, **kw)
  # The two paths differ only in float32 summation order (~1e-7 relative per gradient); AdamW's update m/sqrt(v) is
  # scale-free, so after 5 steps of lr 3e-3 parameters differ by ~1e-8 absolute. The tolerances leave 100x room and
  # still fail on any real difference (a mean of per-micro-batch means instead of one mean, a dropped micro-batch).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6), whole,
               parts)
  for a, b in zip(h1, h2):
    assert a.keys() == b.keys()
    for k in set(a) - {"elapsed_seconds"}:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, err_msg=k)
  assert not np.allclose(whole["embed"], params["embed"])  # it trained
  with pytest.raises(ValueError, match="accum=1"):
    prm_train.train_prm(params, cfg, batch, fmt, opt, steps=1, length_buckets=2, accum=2, **kw)


# ---- a trained generative PRM, scored on device and on the host -------------------------------------------------


def test_generative_prm_trains_and_scores_on_device_without_retracing(tok, ids, monkeypatch):
  """A tiny generative PRM trained on 200 exactly labelled world records writes parseable verdicts, scored on
  device in one compiled call that matches the host parser and the evaluation helper.

  It does not learn to judge in this budget: measured held-out F1 0.0 (it says "all correct"), loss 0.31 -> 0.07
  over 200 steps (~20 s). An earlier version of this test measured F1 0.69-0.76 because its solutions reused the
  problem's random stream, which made every 2-op solution wrong and every 4-op one right (see
  test_world_records_labels_do_not_follow_the_problem_length); what a world PRM learns within a test's budget is
  checked in tests/test_world_learning.py.
  """
  cfg = tiny_cfg(tok)
  train, test = world_records(0, 200), world_records(1, 128)
  examples = prm_examples.encode_examples(tok, train, "prm")
  steps = 200
  opt = optimizer_config(3e-3, steps, warmup_steps=20, schedule="cosine")
  t0 = time.time()
  params, history = prm_train.train_prm(transformer.init_params(cfg, jax.random.key(0)), cfg, examples, "prm", opt,
                                        steps, batch_size=32, seed=0, log_every=50)
  print(f"prm training: {steps} steps in {time.time() - t0:.1f}s, final loss {history[-1]['loss']:.4f}")
  assert history[-1]["loss"] < 0.4 * history[0]["loss"]  # the verdict format is learnt (the verdicts are not)

  traces = []
  real_parse = prm_scorers.parse_generated
  monkeypatch.setattr(prm_scorers, "parse_generated", lambda *a: (traces.append(1), real_parse(*a))[1])
  scorer = prm_scorers.make_generative_scorer(cfg, "prm", ids, max_new_tokens=5 * WORLD.max_ops + 13,
                                              max_steps=WORLD.max_ops)
  prompts = prm_examples.encode_prompts(tok, test, "prm")
  scores = jax.device_get(scorer(params, prompts["prompt"], prompts["prompt_mask"]))
  scorer(params, prompts["prompt"], prompts["prompt_mask"])
  assert len(traces) == 1

  n_steps = [len(r["steps"]) for r in test]
  preds = prm_scorers.first_error_predictions(scores, n_steps)
  labels = [next((i for i, ok in enumerate(r["verdicts"]) if not ok), -1) for r in test]
  acc_err = np.mean([p == y for p, y in zip(preds, labels) if y != -1])
  acc_cor = np.mean([p == y for p, y in zip(preds, labels) if y == -1])
  f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor)
  pred_steps = [None if p is None else scores["step_correct"][b, :n].tolist()
                for b, (p, n) in enumerate(zip(preds, n_steps))]
  step = V.step_f1(pred_steps, [r["verdicts"] for r in test])
  print(f"held-out: acc_err {acc_err:.3f} acc_cor {acc_cor:.3f} f1 {f1:.3f} step f1 {step['f1']:.3f}")
  assert sum(p is None for p in preds) <= 5
  # The decoded outputs the device parsed read the same on the host.
  host = prm_scorers.score_texts(prm_scorers.decode_outputs(tok, scores), n_steps, fmt="prm", max_steps=WORLD.max_ops)
  assert prm_scorers.first_error_predictions(host, n_steps) == preds
  # The evaluation helper (fixed-shape batches, the last one filled up) predicts the same.
  kw = dict(max_new_tokens=5 * WORLD.max_ops + 13, batch=48)
  assert prm_scorers.predict(params, cfg, tok, "prm", test, **kw)[0] == preds
  # ... and so does its host-parsing path (taken for tokenizers whose verdicts are not single tokens).
  def multi_token(cls, tokenizer):
    raise ValueError("verdicts are not single tokens")

  monkeypatch.setattr(prm_scorers.WorldVerdictTokens, "from_tokenizer", classmethod(multi_token))
  assert prm_scorers.predict(params, cfg, tok, "prm", test, **kw)[0] == preds


def test_bpe_tokenizer_verdicts_are_read_on_the_host(tiny_qwen_dir):
  """A byte-level BPE (Qwen's) has one token for "correct" alone and another for the " correct" of running text, so
  reading verdicts by token id would find none: such a PRM's outputs must be decoded and parsed on the host (found
  when every ProcessBench output of a real-text PRM counted as unparseable and none was kept)."""
  from sparkjax.eval import processbench as pb
  from sparkjax.models import tokenizer as tok_lib

  qtok = tok_lib.load_tokenizer(tiny_qwen_dir)
  alone = prm_examples.single_token_id(qtok, "correct")
  assert qtok.encode("The step is correct", add_special_tokens=False)[-1] != alone
  with pytest.raises(ValueError, match="not read by token id"):
    prm_scorers.WorldVerdictTokens.from_tokenizer(qtok)
  recs = [pb.Record(subset="gsm8k", index=i, id=f"r{i}", problem="What is 2 + 3 * 4?",
                    steps=("3 * 4 = 12.", "2 + 12 = 14. \\boxed{14}"), label=-1) for i in range(2)]
  preds = pb.PRMCritic(tiny_qwen_dir, "prm_cot", max_new_tokens=6)(recs)
  for p in preds:  # the output was decoded on the host: kept, and the prediction is what the host parser reads in it
    assert isinstance(p.raw, str) and isinstance(p.finished, bool)
    assert prm_scorers.first_error_predictions(prm_scorers.score_texts([p.raw], [2]), [2]) == [p.index]
