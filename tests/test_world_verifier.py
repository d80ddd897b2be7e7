"""World verifier teacher: exact at eps=0, the stated noise rate at eps>0, parseable transcripts, the SFT stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparkjax.data import arith
from sparkjax.spark import verdicts as V
from sparkjax.spark import world_verifier as W

WORLD = arith.WorldConfig(min_ops=2, max_ops=4, max_operand=5, max_value=30, ops="+-")


@pytest.fixture(scope="module")
def tok():
  return arith.build_tokenizer(WORLD.max_value)


@pytest.fixture(scope="module")
def enc(tok):
  return W.VerifierEncoder(WORLD, tok)


def pairs(n: int, seed: int = 0):
  """n (problem, solution) pairs cycling through a correct solution and every corruption kind."""
  kinds = (None,) + arith.CORRUPTIONS
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    problem = arith.problem_at(seed, i, WORLD)
    kind = kinds[i % len(kinds)]
    if kind is None:
      solution = arith.Solution(tuple(problem.correct_steps()), problem.answer)
    else:
      solution = arith.corrupt(problem, rng, WORLD, kind)
    out.append((problem, solution))
  return out


def roundtrip(tok, text: str, n: int) -> V.Verification:
  ids = tok.encode(text)
  assert tok.unk_token_id not in ids, text
  v = V.parse_verification(tok.decode(ids), num_steps=n)
  assert v.ok, (v.reason, text)
  return v


def test_fields_and_gold():
  p = arith.Problem(7, (("+", 5), ("-", 3)))
  s = arith.Solution((arith.Step(7, "+", 5, 13), arith.Step(13, "-", 3, 10)), 10)
  assert W.solution_fields(p, s) == dict(problem="Start with 7, then + 5, then - 3.",
                                         steps=["7 + 5 = 13", "13 - 3 = 10"], answer=10)
  assert W.gold(p, s) == ([False, False], False)
  right = arith.Solution(tuple(p.correct_steps()), p.answer)
  assert W.gold(p, right) == ([True, True], True)


def test_eps0_transcripts_are_the_ground_truth(tok):
  rng = np.random.default_rng(1)
  kinds_seen = set()
  for problem, solution in pairs(300):
    labels, final = W.gold(problem, solution)
    kinds_seen.add((all(labels), final))
    text, got, got_final = W.teach_verification(problem, solution, rng, 0.0)
    assert got == labels and got_final == final
    assert got == arith.process_labels(problem, solution.steps, solution.answer)
    assert final == (arith.first_error(problem, solution.steps, solution.answer) == -1)
    v = roundtrip(tok, text, len(solution.steps))
    assert list(v.steps) == got and v.final == got_final
  # Correct solutions, wrong steps, and a dropped last step (all steps right, answer wrong) all occurred.
  assert kinds_seen == {(True, True), (False, False), (True, False)}


def test_analyses_show_expected_step_and_slip_on_false_alarm():
  p = arith.Problem(7, (("+", 5), ("-", 3), ("+", 2)))
  wrong = arith.Solution((arith.Step(7, "+", 5, 13), arith.Step(13, "-", 3, 10), arith.Step(10, "+", 2, 12)), 12)
  text, got, final = W.teach_verification(p, wrong, np.random.default_rng(0), 0.0)
  # The first error: the student's step next to the expected one; after it the student's step alone.
  assert text.splitlines()[0] == "Step 1: 7 + 5 = 13 , 7 + 5 = 12 , 13 - 12 = 1. The step is incorrect."
  assert text.splitlines()[1] == "Step 2: 13 - 3 = 10. The step is incorrect."  # the student's step
  assert got == [False] * 3 and not final
  right = arith.Solution(tuple(p.correct_steps()), p.answer)
  # Any verdicts with a first error where the student is right: the expected step is shown with a slipped result.
  for seed in range(20):
    text, merged, final = W.teach_merge(p, right, [True, True, True], [True, False, True], np.random.default_rng(seed))
    assert merged == [True, False, False] and not final
    line = text.splitlines()[1]
    assert line.startswith("Step 2: 12 - 3 = 9 , 12 - 3 = ")  # the student's step, then the teacher's slip
    m = arith.parse_solution(line.split(",")[1])[0][0]
    assert (m.lhs, m.op, m.rhs) == (12, "-", 3) and m.result != 9 and 1 <= abs(m.result - 9) <= 3 and m.result >= 0
    d = arith.parse_solution(line.split(",")[2])[0][0]  # the difference of the two results, never negative
    assert (d.lhs, d.rhs, d.result) == (max(9, m.result), min(9, m.result), abs(m.result - 9))
    assert line.endswith("The step is incorrect.")
  # A wrong step whose result is right by coincidence: difference 0, verdict still the exact one (incorrect).
  lucky = arith.Solution((arith.Step(7, "+", 4, 12),) + tuple(p.correct_steps()[1:]), p.answer)
  text, got, _ = W.teach_verification(p, lucky, np.random.default_rng(0), 0.0)
  assert text.splitlines()[0] == "Step 1: 7 + 4 = 12 , 7 + 5 = 12 , 12 - 12 = 0. The step is incorrect."
  assert got == [False] * 3
  # A step beyond the problem's count is incorrect even when the teacher would always err (no draw for it).
  extra = arith.Solution(tuple(p.correct_steps()) + (arith.Step(12, "+", 1, 13),), 13)
  _, got, final = W.teach_verification(p, extra, np.random.default_rng(0), 0.0)
  assert got == [True, True, True, False] and not final


def test_eps_noise_rate_matches_the_rule(tok):
  """Expected first-error mismatch per solution: 1 - (1-eps)^(k+1) (labels first wrong at k), 1 - (1-eps)^n if none.

  Per judged step (up to and including the first believed error) the flip rate is eps itself.
  """
  eps, n_pairs, reps = 0.2, 600, 4
  rng = np.random.default_rng(2)
  mismatches, expected, var, flips, judged = 0, 0.0, 0.0, 0, 0
  for problem, solution in pairs(n_pairs, seed=3):
    labels, _ = W.gold(problem, solution)
    k = next((i for i, ok in enumerate(labels) if not ok), -1)
    p_right = (1 - eps) ** (k + 1 if k >= 0 else len(labels))
    for r in range(reps):
      text, got, final = W.teach_verification(problem, solution, rng, eps)
      if r == 0:
        v = roundtrip(tok, text, len(solution.steps))
        assert list(v.steps) == got and v.final == final
      j = next((i for i, ok in enumerate(got) if not ok), -1)
      mismatches += j != k
      expected += 1 - p_right
      var += p_right * (1 - p_right)
      last = j if j >= 0 else len(got) - 1
      judged += last + 1
      flips += sum(g != t for g, t in zip(got[:last + 1], labels[:last + 1]))
  n = n_pairs * reps
  measured, expected = mismatches / n, expected / n
  assert abs(measured - expected) < 4 * np.sqrt(var) / n, (measured, expected)
  assert abs(flips / judged - eps) < 4 * np.sqrt(eps * (1 - eps) / judged), (flips / judged, eps)


def test_reference_final_exact_and_correct_never_flagged(tok):
  rng = np.random.default_rng(4)
  for problem, solution in pairs(200, seed=5):
    text, got, final = W.teach_verification(problem, solution, rng, 0.3, reference=True)
    assert final == (solution.answer == problem.answer)
    if solution.answer == problem.answer:
      assert all(got)
    else:
      assert not all(got)
    v = roundtrip(tok, text, len(solution.steps))
    assert list(v.steps) == got and v.final == final


def test_critique_and_merge_at_eps0_recover_the_truth(tok):
  rng = np.random.default_rng(6)
  for problem, solution in pairs(200, seed=7):
    labels, final = W.gold(problem, solution)
    n = len(solution.steps)
    # Critiqued verifications: noisy teacher ones, and arbitrary (even non-propagated) verdicts.
    for vv in (W.teach_verification(problem, solution, rng, 0.4)[1], [bool(b) for b in rng.integers(0, 2, n)]):
      ctext, agrees = W.teach_critique(problem, solution, vv, rng, 0.0)
      assert agrees == [a == b for a, b in zip(vv, labels)]
      c = roundtrip(tok, ctext, n)
      assert list(c.steps) == agrees and c.final == all(agrees)
      mtext, merged, mfinal = W.teach_merge(problem, solution, vv, agrees, rng)
      assert merged == labels and mfinal == final
      m = roundtrip(tok, mtext, n)
      assert list(m.steps) == merged and m.final == mfinal


def test_encoder_lengths_prompts_and_generation_padding(enc, tok):
  assert enc.prompt_len == enc.prompt_lens["merge"] == max(enc.prompt_lens.values())
  assert enc.seq_len == max(enc.prompt_lens[t] + enc.target_lens[t] for t in W.TASKS)
  # The longest real problem fits exactly: lengths depend only on the step count.
  p = arith.Problem(5, tuple([("+", 5)] * WORLD.max_ops))
  s = arith.Solution(tuple(p.correct_steps()), p.answer)
  rng = np.random.default_rng(0)
  for task in W.TASKS:
    ex = W.teach_example(task, p, s, rng, 0.2)
    ids = enc.prompt_ids(task, ex["fields"], reference=ex["reference"], verification=ex["verification"],
                         critique=ex["critique"])
    # Critique / merge prompts hold a noisy verification, shorter when it found an error early.
    assert len(ids) == enc.prompt_lens[task] if task.startswith("verify") else len(ids) <= enc.prompt_lens[task]
    assert len(tok.encode(ex["target"])) + 1 <= enc.target_lens[task]
    prompt, mask = enc.pad_prompt(ids)
    assert prompt.shape == mask.shape == (enc.prompt_len,) and prompt[mask].tolist() == ids and mask[-1]
  fields = W.solution_fields(p, s)
  assert enc.prompt_text("verify_reference", fields, reference=p.answer).endswith(
      f"Answer: {p.answer}\nExpected answer: {p.answer}\nLet's verify step by step.\n")
  with pytest.raises(ValueError, match="task 'critique' needs verification="):
    enc.prompt_ids("critique", fields)
  with pytest.raises(ValueError, match="task 'verify' does not take reference="):
    enc.prompt_ids("verify", fields, reference=3)
  with pytest.raises(ValueError, match="unknown task 'judge'"):
    enc.prompt_ids("judge", fields)
  with pytest.raises(ValueError, match="outside the world vocabulary"):
    enc.encode("Step 1: 7 + 5 = 12. Looks fine.")


def _batches(enc, n, **kw):
  it = iter(W.verifier_dataset(enc, **kw))
  return [next(it) for _ in range(n)]


def test_dataset_rows(enc, tok):
  (b,) = _batches(enc, 1, seed=0, global_batch=48, eps=0.1)
  assert set(b) == {"tokens", "loss_mask", "mask"}
  assert b["tokens"].shape == b["loss_mask"].shape == b["mask"].shape == (48, enc.seq_len)
  assert b["tokens"].dtype == np.int32 and b["loss_mask"].dtype == np.float32 and b["mask"].dtype == bool
  assert not np.any(b["tokens"] == tok.unk_token_id)
  tails = set()
  for tokens, loss, mask in zip(b["tokens"], b["loss_mask"], b["mask"]):
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any() and np.all(tokens[n:] == tok.pad_token_id)
    on = np.flatnonzero(loss)
    # Loss exactly on one contiguous run that ends with eos at the last real token: target + eos, no prompt.
    assert on.size and np.array_equal(on, np.arange(on[0], n)) and tokens[n - 1] == tok.eos_token_id
    prompt = tok.decode(tokens[:on[0]].tolist())
    assert prompt.rstrip().endswith(("Let's verify step by step .", "Critique :"))
    tails.add(prompt.rstrip()[-12:])
    assert V.parse_verification(tok.decode(tokens[on[0]:n - 1].tolist())).ok
  assert len(tails) == 2  # both verification-style and critique targets occur in a batch of 48


def test_dataset_deterministic_sharded_and_resumable(enc):
  kw = dict(seed=3, global_batch=8, eps=0.15)
  a, b = _batches(enc, 2, **kw), _batches(enc, 2, **kw)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  parts = [_batches(enc, 2, **kw, process_index=p, process_count=2) for p in range(2)]
  for step in range(2):
    for k in a[step]:
      np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), a[step][k])
  it = iter(W.verifier_dataset(enc, **kw))
  next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it), next(it)]
  it2 = iter(W.verifier_dataset(enc, **kw))
  it2.set_state(state)
  for w in want:
    got = next(it2)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])
  other = _batches(enc, 1, seed=4, global_batch=8, eps=0.15)[0]
  assert not np.array_equal(other["tokens"], a[0]["tokens"])


def test_argument_validation(enc):
  p = arith.Problem(7, (("+", 5), ("-", 3)))
  s = arith.Solution(tuple(p.correct_steps()), p.answer)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match=r"eps=0.5: the per-step error rate must be in \[0, 0.5\)"):
    W.teach_verification(p, s, rng, 0.5)
  with pytest.raises(ValueError, match="eps=-0.1"):
    W.verifier_dataset(enc, 0, 4, -0.1)
  with pytest.raises(ValueError, match="critiqued_eps=0.7"):
    W.verifier_dataset(enc, 0, 4, 0.1, critiqued_eps=0.7)
  with pytest.raises(ValueError, match="mix has unknown task.*judge"):
    W.verifier_dataset(enc, 0, 4, 0.1, mix=dict(verify=0.5, judge=0.5))
  with pytest.raises(ValueError, match="mix weights must sum to 1, got 0.9"):
    W.verifier_dataset(enc, 0, 4, 0.1, mix=dict(verify=0.6, critique=0.3))
  with pytest.raises(ValueError, match="mix weights must be finite and >= 0"):
    W.verifier_dataset(enc, 0, 4, 0.1, mix=dict(verify=1.5, critique=-0.5))
  with pytest.raises(ValueError, match="p_error=1.5"):
    W.verifier_dataset(enc, 0, 4, 0.1, p_error=1.5)
  with pytest.raises(ValueError, match="global batch 5 does not divide over 2 processes"):
    W.verifier_dataset(enc, 0, 5, 0.1, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="process_index 2 not in"):
    W.verifier_dataset(enc, 0, 4, 0.1, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="the verification has 1 step verdicts, the solution 2 steps"):
    W.teach_critique(p, s, [True], rng, 0.1)
  with pytest.raises(ValueError, match="got 2 verification verdicts and 1 critique verdicts for 2 steps"):
    W.teach_merge(p, s, [True, True], [True], rng)
  with pytest.raises(ValueError, match="unknown task 'judge'"):
    W.teach_example("judge", p, s, rng, 0.1)
  # Only verification tasks: still a valid mix.
  (b,) = _batches(enc, 1, seed=0, global_batch=4, eps=0.1, mix=dict(verify=1.0))
  assert b["tokens"].shape == (4, enc.seq_len)


def test_dataset_by_task_pads_each_batch_to_its_task(enc, tok):
  """by_task: one task per global batch, rows padded to that task's longest example; the same rows per process
  split; every task of the mix occurs."""
  batches = _batches(enc, 24, seed=5, global_batch=4, eps=0.1, by_task=True)
  lengths = {enc.task_len(t): t for t in W.TASKS}
  assert len(lengths) == len(W.TASKS)  # the tasks' lengths differ, so a batch's length names its task
  seen = set()
  for b in batches:
    L = b["tokens"].shape[1]
    assert L in lengths and L <= enc.seq_len
    seen.add(lengths[L])
    for tokens, loss, mask in zip(b["tokens"], b["loss_mask"], b["mask"]):
      n = int(mask.sum())
      assert tokens[n - 1] == tok.eos_token_id and loss[n - 1] == 1
  assert seen == set(W.TASKS)
  # verify_first: the first batches are the verify task only, the later ones exactly those of the plain mix.
  first = _batches(enc, 24, seed=5, global_batch=4, eps=0.1, by_task=True, verify_first=10)
  assert [lengths[b["tokens"].shape[1]] for b in first[:10]] == ["verify"] * 10
  assert any(lengths[b["tokens"].shape[1]] != "verify" for b in batches[:10])  # so the line above can fail
  for a, b in zip(first[10:], batches[10:]):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  with pytest.raises(ValueError, match="verify_first=3 needs by_task"):
    W.verifier_dataset(enc, 5, 4, 0.1, verify_first=3)
  parts = [_batches(enc, 3, seed=5, global_batch=4, eps=0.1, by_task=True, process_index=p, process_count=2)
           for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([parts[0][step]["tokens"], parts[1][step]["tokens"]]),
                                  batches[step]["tokens"])
