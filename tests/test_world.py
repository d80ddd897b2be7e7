"""The arithmetic world: exact ground truth, corruption model, tokenizer, grain iterator, device reward."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax.data import arith, world_data
from sparkjax.data.grading import make_suffix_reward

WORLD = arith.WorldConfig(min_ops=2, max_ops=6)


@pytest.fixture(scope="module")
def tok():
  return arith.build_tokenizer(WORLD.max_value)


def test_problem_values_and_bounds():
  p = arith.Problem(7, (("+", 5), ("*", 3), ("-", 4)))
  assert p.values() == [12, 36, 32] and p.answer == 32
  assert p.text() == "Start with 7, then + 5, then * 3, then - 4."
  for i in range(200):
    q = arith.problem_at(0, i, WORLD)
    assert 2 <= len(q.ops) <= 6 and all(0 <= v <= 99 for v in q.values())
  assert arith.problem_at(0, 5, WORLD) == arith.problem_at(0, 5, WORLD) != arith.problem_at(1, 5, WORLD)


def test_ground_truth_hand_cases():
  p = arith.Problem(7, (("+", 5), ("*", 3), ("-", 4)))
  S = arith.Step
  right = [S(7, "+", 5, 12), S(12, "*", 3, 36), S(36, "-", 4, 32)]
  assert arith.first_error(p, right, 32) == -1
  wrong_result = [S(7, "+", 5, 13), S(13, "*", 3, 39), S(39, "-", 4, 35)]  # propagates consistently
  assert arith.first_error(p, wrong_result, 35) == 0
  assert arith.step_ok(p, wrong_result) == [False, False, False]
  assert arith.process_labels(p, wrong_result, 35) == [False, False, False]
  dropped = [S(7, "+", 5, 12), S(12, "-", 4, 8)]
  assert arith.first_error(p, dropped, 8) == 1
  assert arith.first_error(p, right, 31) == 2  # right steps, wrong final answer line
  assert arith.first_error(p, right[:2], 36) == 2  # stopped early


@pytest.mark.parametrize("kind", arith.CORRUPTIONS)
def test_corruptions_err_exactly_where_they_are_put(kind):
  rng = np.random.default_rng(0)
  for i in range(100):
    p = arith.problem_at(3, i, WORLD)
    at = int(rng.integers(len(p.ops)))
    s = arith.corrupt(p, rng, WORLD, kind, at)
    k = arith.first_error(p, s.steps, s.answer)
    if kind == "dropped_step":  # visible at `at` unless the next operation happens to equal the dropped one
      assert k >= at and len(s.steps) == len(p.ops) - 1
    elif k != -1:  # a wrong result clipped back into range can coincide with the truth: then no error
      assert k == at
    if k != -1:
      # later steps continue from the written values consistently
      for a, b in zip(s.steps, s.steps[1:]):
        assert b.lhs == a.result


def test_render_parse_roundtrip_through_tokenizer(tok):
  rng = np.random.default_rng(1)
  for i in range(50):
    p = arith.problem_at(4, i, WORLD)
    s = arith.sample_solution(p, rng, WORLD, p_error=0.5)
    for fmt in arith.FORMATS:
      ids = tok.encode(arith.prompt_text(p) + s.text(fmt))
      assert tok.unk_token_id not in ids
      steps, answer = arith.parse_solution(tok.decode(ids), fmt)
      assert steps == list(s.steps) and answer == s.answer


def test_tokenizer_is_a_real_transformers_tokenizer(tok, tmp_path):
  from transformers import AutoTokenizer

  tok.save_pretrained(tmp_path)
  again = AutoTokenizer.from_pretrained(tmp_path)
  text = "Step 1: 7 + 5 = 12\nAnswer: 12"
  assert again.encode(text) == tok.encode(text) and again.pad_token_id == tok.pad_token_id == 0


def test_grain_iterator_resumes_exactly(tok):
  enc = world_data.WorldEncoder(WORLD, tok)
  it = iter(world_data.world_dataset(enc, 0, 4, "rl"))
  next(it)
  state = it.get_state()
  a, b = next(it), next(it)
  it2 = iter(world_data.world_dataset(enc, 0, 4, "rl"))
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["prompt"], a["prompt"])
  np.testing.assert_array_equal(next(it2)["target"], b["target"])


def test_processes_read_disjoint_shares(tok):
  enc = world_data.WorldEncoder(WORLD, tok)
  whole = next(iter(world_data.world_dataset(enc, 0, 4, "rl")))
  parts = [next(iter(world_data.world_dataset(enc, 0, 4, "rl", p, 2))) for p in range(2)]
  got = sorted(map(tuple, np.concatenate([x["prompt"] for x in parts]).tolist()))
  assert got == sorted(map(tuple, whole["prompt"].tolist()))
  with pytest.raises(ValueError, match="global batch 5 does not divide over 2 processes"):
    world_data.world_dataset(enc, 0, 5, "rl", 0, 2)


def test_suffix_reward(tok):
  enc = world_data.WorldEncoder(WORLD, tok)
  template, slot, once = enc.answer_template()
  reward = make_suffix_reward(template, slot, once)
  ans = lambda n: tok.encode(f"Step 1: 7 + 5 = 12\nAnswer: {n}") + [tok.eos_token_id]
  rows = [ans(12), ans(13), tok.encode("Answer: 12\nAnswer: 12") + [tok.eos_token_id], ans(12)[:-1]]
  T = 24
  tokens = np.zeros((4, T), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  lengths = np.asarray([len(r) for r in rows])
  finished = np.asarray([True, True, True, False])
  targets = np.full(4, enc.number_id(12))
  got = reward(jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(finished), jnp.asarray(targets))
  # right; wrong number; two answer lines (format violation); unfinished (no stop token)
  np.testing.assert_array_equal(got, [1, 0, 0, 0])


def test_heldout_split_is_disjoint_from_every_training_stream(tok):
  """A small world has few problems (475 here), so independent streams share most of them; the split keeps the
  held-out problems out of every stream that trains, including the SFT dataset."""
  w = arith.WorldConfig(min_ops=2, max_ops=3, max_operand=3, max_value=12, ops="+-", heldout_every=5)
  held_problems = [arith.problem_at(6, i, w, "heldout") for i in range(400)]
  held = {p.text() for p in held_problems}
  train = {arith.problem_at(s, i, w).text() for s in (1, 4, 5) for i in range(2000)}
  assert not held & train
  assert 60 < len(held) and 300 < len(train)  # ~1/5 of the 475 problems are held out
  assert all(arith.split_of(arith.problem_at(6, i, w, "heldout"), w) == "heldout" for i in range(50))
  enc = world_data.WorldEncoder(w, tok, "steps")
  batch = next(iter(world_data.world_dataset(enc, seed=1, global_batch=64, kind="sft")))
  rows = [tuple(r) for r in np.asarray(batch["tokens"])]
  first = tuple(enc.encode_prompt(arith.problem_at(1, 0, w)))
  assert rows[0][:len(first)] == first  # rows start with their problem's prompt, so the next check can fail
  held_prompts = {tuple(enc.encode_prompt(p)) for p in held_problems}
  assert not any(r[:len(h)] == h for h in held_prompts for r in rows)
  # Without a split every stream's problem is its first draw, as before the split existed.
  plain = arith.WorldConfig(min_ops=2, max_ops=3, max_operand=3, max_value=12, ops="+-")
  assert arith.problem_at(6, 3, plain) == arith.make_problem(np.random.default_rng([6, 3]), plain)
  with pytest.raises(ValueError, match="heldout_every > 0"):
    arith.problem_at(6, 0, plain, "heldout")
  with pytest.raises(ValueError, match="heldout_every=-1"):
    arith.WorldConfig(heldout_every=-1)


def test_misconceptions_are_systematic_and_only_in_demonstrations():
  """A misconceived fact is written wrong in every demonstration that uses it (from the value written before it),
  the exact labels still mark it incorrect, the share of misconceived facts follows the knob, and 0 changes
  nothing."""
  base = arith.WorldConfig(min_ops=2, max_ops=4, max_operand=5, max_value=30, ops="+-")
  world = dataclasses.replace(base, misconceptions=0.25)
  facts = [(a, op, b) for a in range(31) for op in "+-" for b in range(1, 6)]
  share = np.mean([arith.misconceived(world, *f) is not None for f in facts])
  assert 0.18 < share < 0.32 and all(arith.misconceived(base, *f) is None for f in facts)
  for f in facts:
    w = arith.misconceived(world, *f)
    if w is not None:
      assert 0 <= w <= 30 and abs(w - min(max(arith.OPS[f[1]](f[0], f[2]), 0), 30)) == 1
  seen_wrong = 0
  for i in range(200):
    p = arith.problem_at(1, i, world)
    d = arith.demonstration(p, np.random.default_rng(i), world, p_error=0.0)
    plain = arith.demonstration(p, np.random.default_rng(i), base, p_error=0.0)
    assert plain == arith.Solution(tuple(p.correct_steps()), p.answer)
    v = p.start
    for k, (s, (op, x)) in enumerate(zip(d.steps, p.ops)):
      assert (s.lhs, s.op, s.rhs) == (v, op, x)
      belief = arith.misconceived(world, v, op, x)
      assert s.result == (belief if belief is not None else min(max(arith.OPS[op](v, x), 0), 30))
      v = s.result
    if d != plain:
      seen_wrong += 1
      labels = arith.process_labels(p, d.steps, d.answer)
      assert not all(labels)  # the exact labels see the misconception as an error
  assert seen_wrong > 40
  with pytest.raises(ValueError, match="misconceptions=1.5"):
    arith.WorldConfig(misconceptions=1.5)


def test_distinct_problems_exhaust_the_held_out_split():
  """The first n distinct problems of a stream, in order; asked for more than the split holds, every problem of the
  split, which an independent enumeration of the small world counts."""
  import itertools

  from sparkjax.data import world_data

  w = arith.WorldConfig(min_ops=2, max_ops=3, max_operand=3, max_value=12, ops="+-", heldout_every=5)
  first = world_data.distinct_problems(9, 5, w, "heldout")
  assert len({p.text() for p in first}) == 5 and all(arith.split_of(p, w) == "heldout" for p in first)
  every = set()
  for k in (2, 3):
    for start in range(1, 4):
      for ops in itertools.product([(o, x) for o in "+-" for x in (1, 2, 3)], repeat=k):
        v, ok = start, True
        for o, x in ops:
          v = v + x if o == "+" else v - x
          ok &= 0 <= v <= 12
        p = arith.Problem(start, tuple(ops))
        if ok and arith.split_of(p, w) == "heldout":
          every.add(p.text())
  got = world_data.distinct_problems(9, 10_000, w, "heldout")
  assert {p.text() for p in got} == every and len(got) == len(every)
  assert [p.text() for p in got[:5]] == [p.text() for p in first]


def test_step_checks_pass_a_consistent_continuation_and_first_fail_at_the_first_error():
  p = arith.Problem(2, (("+", 3), ("-", 1), ("+", 2)))  # 2 + 3 = 5, 5 - 1 = 4, 4 + 2 = 6
  S = arith.Step
  wrong_then_consistent = [S(2, "+", 3, 6), S(6, "-", 1, 5), S(5, "+", 2, 7)]
  assert arith.step_checks(p, wrong_then_consistent, 7) == [False, True, True]
  assert arith.process_labels(p, wrong_then_consistent, 7) == [False, False, False]
  wrong_operand = [S(2, "+", 3, 5), S(5, "-", 2, 3), S(3, "+", 2, 5)]
  assert arith.step_checks(p, wrong_operand, 5) == [True, False, True]
  right = p.correct_steps()
  assert arith.step_checks(p, right, 6) == [True, True, True]
  assert arith.step_checks(p, right, 5) == [True, True, False] == arith.process_labels(p, right, 5)
  # Too few steps: the error is at a step not written, so no written step fails, whatever the answer line says.
  assert arith.step_checks(p, right[:2], 9) == [True, True] == arith.process_labels(p, right[:2], 9)
  assert arith.step_checks(p, right + [S(6, "+", 1, 7)], 7) == [True, True, True, False]
