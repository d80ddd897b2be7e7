"""SPARK-PRM verification formats, the tolerant parser, self-consistency and the exact world metrics (no JAX)."""

from __future__ import annotations

import numpy as np
import pytest

from sparkjax.data import arith
from sparkjax.spark import verdicts as V
from sparkjax.spark.verdicts import ConsensusConfig, Verification

T, F = True, False
WORLD = arith.WorldConfig(min_ops=2, max_ops=6)


@pytest.fixture(scope="module")
def tok():
  return arith.build_tokenizer(WORLD.max_value)


def world_decode(tok, text: str) -> str:
  """What a world model's output looks like: the text encoded and decoded by the world tokenizer (no <unk>)."""
  ids = tok.encode(text, add_special_tokens=False)
  unknown = [t for t in tok.convert_ids_to_tokens(ids) if t == tok.unk_token]
  assert not unknown, f"<unk> in {text!r}: {tok.convert_ids_to_tokens(ids)}"
  return tok.decode(ids)


def ok(steps, final) -> Verification:
  return Verification(None if steps is None else tuple(steps), final, "ok", "")


# ---- rendering ---------------------------------------------------------------------------------------------------


def test_render_exact_text():
  assert V.render_verification(["7 + 5 = 12", "12 * 3 = 35."], [T, F], False) == (
      "Step 1: 7 + 5 = 12. The step is correct.\n"
      "Step 2: 12 * 3 = 35. The step is incorrect.\n"
      "Is the answer correct (Yes/No)? No")
  assert V.render_verification(["", "x"], [T, T], True) == (
      "Step 1: The step is correct.\nStep 2: x. The step is correct.\nIs the answer correct (Yes/No)? Yes")
  assert V.render_prm([T, F, F], False) == (
      "Step 1: Correct\nStep 2: Incorrect\nStep 3: Incorrect\nIs the answer correct (Yes/No)? No")
  assert V.render_orm(True) == "Yes" and V.render_orm(False) == "No"
  with pytest.raises(ValueError, match="2 analyses for 1 verdicts"):
    V.render_verification(["a", "b"], [T], True)


def test_propagate():
  assert V.propagate([T, F, T, T]) == [T, F, F, F]
  assert V.propagate([T, T]) == [T, T]
  assert V.propagate([F, T]) == [F, F]
  assert V.propagate([]) == []
  assert V.propagate(np.array([True, False, True])) == [T, F, F]


# ---- round trips -------------------------------------------------------------------------------------------------

VERDICTS = [([T], T), ([F], F), ([T, T, T], T), ([T, F, F], F), ([F, F, F, F], F), ([T, T, T, T, T, F], F),
            ([T, T], F)]


@pytest.mark.parametrize("steps,final", VERDICTS)
def test_round_trip_all_formats(tok, steps, final):
  analyses = [f"{i} + 1 = {i + 1}" for i in range(len(steps))]
  cot = V.render_verification(analyses, steps, final)
  prm = V.render_prm(steps, final)
  for text in (cot, prm, world_decode(tok, cot), world_decode(tok, prm)):
    assert V.parse_verification(text, num_steps=len(steps)) == Verification(
        tuple(steps), final, "ok", f"{len(steps)} step verdicts and the final verdict"), text
  for text in (V.render_orm(final), world_decode(tok, V.render_orm(final))):
    assert V.parse_verification(text) == Verification(None, final, "ok", "bare Yes/No (ORM format)")


def test_world_decoded_text_is_what_the_parser_reads(tok):
  text = world_decode(tok, V.render_verification(["3 + 4 = 7", "7 * 2 = 15"], [T, F], False))
  assert text == ("Step 1 : 3 + 4 = 7 . The step is correct . \n Step 2 : 7 * 2 = 15 . The step is incorrect . \n"
                  " Is the answer correct ( Yes / No ) ? No")
  assert V.parse_verification(text).steps == (T, F)


def test_world_solutions_end_to_end(tok):
  """Gold labels of corrupted world solutions survive render -> tokenizer -> parse, first-error index included."""
  rng = np.random.default_rng(0)
  seen_errors = 0
  for i in range(60):
    p = arith.problem_at(3, i, WORLD)
    sol = arith.sample_solution(p, rng, WORLD, p_error=0.6)
    labels = arith.process_labels(p, sol.steps, sol.answer)
    final = arith.first_error(p, sol.steps, sol.answer) == -1
    text = world_decode(tok, V.render_verification([s.text() for s in sol.steps], labels, final))
    v = V.parse_verification(text, num_steps=len(sol.steps))
    assert v.status == "ok" and v.steps == tuple(labels) and v.final == final
    fe = arith.first_error(p, sol.steps, sol.answer)
    assert V.first_error_index(v) == (fe if fe < len(sol.steps) else -1)
    seen_errors += not final
  assert 10 < seen_errors < 50


# ---- prompts -----------------------------------------------------------------------------------------------------

PROBLEM = arith.Problem(7, (("+", 5), ("*", 3)))
STEPS = [s.text() for s in PROBLEM.correct_steps()]


def test_world_prompts_exact():
  assert V.verifier_prompt(PROBLEM.text(), STEPS) == (
      "Problem: Start with 7, then + 5, then * 3.\nStudent Solution:\nStep 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\n"
      "Let's verify step by step.\n")
  assert V.verifier_prompt(PROBLEM.text(), STEPS, 36, answer=36) == (
      "Problem: Start with 7, then + 5, then * 3.\nStudent Solution:\nStep 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\n"
      "Answer: 36\nExpected answer: 36\nLet's verify step by step.\n")
  assert V.orm_prompt(PROBLEM.text(), STEPS, answer=36) == (
      "Problem: Start with 7, then + 5, then * 3.\nSolution:\nStep 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nAnswer: 36\n"
      "Is the answer correct (Yes/No)?\n")
  ver = V.render_prm([T, T], True)
  assert V.critique_prompt(PROBLEM.text(), STEPS, ver) == (
      "Problem: Start with 7, then + 5, then * 3.\nStudent Solution:\nStep 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\n"
      "Verification:\nStep 1: Correct\nStep 2: Correct\nIs the answer correct (Yes/No)? Yes\nCritique:\n")
  assert V.merge_prompt(PROBLEM.text(), STEPS, ver, "Step 2 : The step is correct .") == (
      "Problem: Start with 7, then + 5, then * 3.\nStudent Solution:\nStep 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\n"
      "Verification:\nStep 1: Correct\nStep 2: Correct\nIs the answer correct (Yes/No)? Yes\n"
      "Critique:\nStep 2 : The step is correct .\nLet's verify step by step.\n")


def test_world_prompts_stay_inside_the_world_vocabulary(tok):
  rng = np.random.default_rng(1)
  for i in range(20):
    p = arith.problem_at(5, i, WORLD)
    sol = arith.sample_solution(p, rng, WORLD, p_error=0.5)
    steps = [s.text() for s in sol.steps]
    ver = V.render_verification(steps, [T] * len(steps), True)
    for text in (V.verifier_prompt(p.text(), steps, answer=sol.answer),
                 V.verifier_prompt(p.text(), steps, p.answer, answer=sol.answer),
                 V.orm_prompt(p.text(), steps, answer=sol.answer),
                 V.critique_prompt(p.text(), steps, ver, answer=sol.answer),
                 V.merge_prompt(p.text(), steps, ver, V.render_prm([F] * len(steps), False), answer=sol.answer)):
      world_decode(tok, text)


def test_llm_prompts():
  v = V.verifier_prompt("What is 2+2?", ["2+2=4"], style="llm")
  assert v.startswith("Below are a math problem and a student's step-by-step solution.")
  assert v.endswith("\n\nProblem: What is 2+2?\n\nStudent Solution:\nStep 1: 2+2=4\n\nLet's verify step by step.\n")
  assert '"The step is correct." or "The step is incorrect."' in v and '"Is the answer correct (Yes/No)? X"' in v
  assert "Expected answer" not in v and "reference" not in v
  # The one-shot example in the instructions is itself a well-formed verification (second step wrong, then No).
  assert V.LLM_FORMAT_EXAMPLE in v
  example = V.parse_verification(V.LLM_FORMAT_EXAMPLE.split(":\n", 1)[1], 3)
  assert (example.status, example.steps, example.final) == ("ok", (True, False, False), False)
  r = V.verifier_prompt("What is 2+2?", ["2+2=4"], "4", style="llm")
  assert r.endswith("Step 1: 2+2=4\n\nExpected answer: 4\n\nLet's verify step by step.\n") and "reference" in r
  assert V.orm_prompt("Q", ["a", "b"], style="llm") == (
      "Problem: Q\n\nSolution:\nStep 1: a\nStep 2: b\n\nIs the answer correct (Yes/No)?\n")
  c = V.critique_prompt("Q", ["a"], "Step 1: ok. The step is correct.", style="llm")
  assert c.startswith("Below are") and c.endswith("Verification:\nStep 1: ok. The step is correct.\n\nCritique:\n")
  m = V.merge_prompt("Q", ["a"], "VER", "CRIT", style="llm")
  assert "Merge the verification and the critique" in m
  assert m.endswith("Verification:\nVER\n\nCritique:\nCRIT\n\nLet's verify step by step.\n")
  with pytest.raises(ValueError, match="style='chat': expected one of world, llm"):
    V.verifier_prompt("Q", ["a"], style="chat")


# ---- tolerant parsing --------------------------------------------------------------------------------------------

LLM_VARIANTS = [
    # case
    ("STEP 1: fine. THE STEP IS CORRECT.\nstep 2: bad. the step is INCORRECT.\nIS THE ANSWER CORRECT (YES/NO)? no",
     (T, F), F),
    # spacing
    ("Step1:ok.The step is correct.\nStep  2 :  x .  The  step  is  incorrect .\nIs the answer correct(Yes/No)?No",
     (T, F), F),
    ("  Step 1 : 2 + 2 = 4 .   The step is correct .\n   Is the answer correct ( Yes / No ) ?   Yes  ", (T,), T),
    # markdown bold / headers / bullets
    ("**Step 1:** 2+2=4. The step is **correct**.\n\n### Step 2\nThe product 3*4 is 13, which is wrong.\n"
     "The step is **incorrect**.\n\n**Is the answer correct (Yes/No)? No**", (T, F), F),
    ("## Step 1: add\n*The step is correct.*\n- Step 2: The step is _incorrect_... no, the step is correct.\n"
     "Is the answer correct (Yes/No)? Yes", (T, T), T),
    ("- **Step 1**: fine. The step is correct.\n- **Step 2**: The step is __incorrect__.\n"
     "**Is the answer correct (Yes/No)?** **No**", (T, F), F),
    # "Verdict:" lines and boxed finals
    ("Step 1: 2+2=4\nVerdict: Correct\n\nStep 2: 4*3=13\n**Verdict:** Incorrect\n\n"
     "Is the answer correct (Yes/No)? \\boxed{No}", (T, F), F),
    ("Step 1: ok. The step is correct.\nIs the answer correct (Yes/No)? $\\boxed{\\text{Yes}}$", (T,), T),
    ("Step 1: ok. The step is correct.\nIs the answer correct (Yes/No)? **No**", (T,), F),
    ("Step 1: ok. The step is correct.\nIs the answer correct (Yes/No)?\n\nNo", (T,), F),
    # CRLF and trailing chatter (a later "Step 3 ... correct" is not a step, nor a second final verdict)
    ("Step 1: ok. The step is correct.\r\nStep 2: ok. The step is correct.\r\nIs the answer correct (Yes/No)? Yes\r\n",
     (T, T), T),
    ("Step 1: ok. The step is correct.\nStep 2: The step is incorrect.\nIs the answer correct (Yes/No)? No\n\n"
     "I hope this helps!\nStep 3 would have been correct anyway.", (T, F), F),
    # PRM format as an LLM writes it
    ("Step 1: correct\nStep 2: INCORRECT\nStep 3: Incorrect.\nIs the answer correct (Yes/No)? No", (T, F, F), F),
    ("Step 1 is correct.\nStep 2 is not correct.\nIs the answer correct (Yes/No)? No", (T, F), F),
    # analysis words vs the verdict: the last explicit verdict wins
    ("Step 1: 2+2=4 is correct, but the student wrote 5. The step is incorrect.\n"
     "Is the answer correct (Yes/No)? No", (F,), F),
    ("Step 1: At first this looks wrong; on reflection the step is correct.\nIs the answer correct (Yes/No)? Yes",
     (T,), T),
    ("Step 1: The step is thus incorrect.\nIs the answer correct (Yes/No)? No", (F,), F),
    # loose verdict words when there is no verdict sentence
    ("Step 1: 2 + 2 = 4, correct.\nStep 2: 4 * 3 = 13 is wrong.\nIs the answer correct (Yes/No)? No", (T, F), F),
    # a preamble and a thinking block are ignored
    ("<think>\nStep 1: hmm, wrong?\nStep 1: no, fine.\n</think>\nLet's verify.\nStep 1: The step is correct.\n"
     "Is the answer correct (Yes/No)? Yes", (T,), T),
    # "Step 2" inside an analysis is not a header
    ("Step 1: ok. The step is correct.\nStep 2: Uses the value from Step 1 wrongly. The step is incorrect.\n"
     "Is the answer correct? No", (T, F), F),
]


@pytest.mark.parametrize("text,steps,final", LLM_VARIANTS)
def test_llm_variants(text, steps, final):
  v = V.parse_verification(text, num_steps=len(steps))
  assert (v.steps, v.final, v.status) == (steps, final, "ok"), v.reason


NEGATIVE_STEPS = [
    "Step 1: x. The step is incorrect.", "Step 1: x. The step is not correct.", "Step 1: x. The step isn't correct.",
    "Step 1: x. This step is wrong.", "Step 1: x. The step is **incorrect**.", "Step 1: x. The step is INCORRECT.",
    "Step 1: x. The step is not entirely correct.", "Step 1: x. The step is not quite right.",
    "Step 1: Incorrect", "Step 1: incorrect", "Step 1: Not correct", "Step 1 is incorrect.", "**Step 1:** *Incorrect*",
    "Step 1: x\nVerdict: Incorrect", "Step 1: x\nVerdict: not correct", "Step 1: x is wrong.",
    "Step 1: x is not correct.", "Step 1: this is incorrect.", "Step 1: the value is erroneous.",
    "Step 1 : 3 + 4 = 8 . The step is incorrect .",
]


@pytest.mark.parametrize("step", NEGATIVE_STEPS)
def test_negative_verdicts_never_read_as_correct(step):
  v = V.parse_verification(step + "\nIs the answer correct (Yes/No)? No", num_steps=1)
  assert v.steps == (F,) and v.status == "ok", v.reason


@pytest.mark.parametrize("text", ["", "   \n ", "I cannot verify this solution.", "Maybe.", "Yes I think so",
                                  "Nope", "The answer seems correct to me.", "Solution looks fine, correct overall."])
def test_garbage_is_unparseable(text):
  v = V.parse_verification(text)
  assert (v.steps, v.final, v.status) == (None, None, "unparseable")
  assert v.reason in ("empty output",) or v.reason.startswith("no 'Step k:' lines, no final")


def test_orm_bare_answers_and_trailing_text():
  assert V.parse_verification("**No**").final is F
  assert V.parse_verification("yes.\nBecause every step checks out.").final is T
  assert V.parse_verification("\\boxed{Yes}").final is T
  v = V.parse_verification("Yes", num_steps=3)
  assert (v.steps, v.final, v.status) == (None, T, "missing_steps")  # a bare answer is no step verification
  assert v.reason == "bare Yes/No (ORM format), no 'Step k:' lines (expected 3)"


def test_final_only_text():
  v = V.parse_verification("Is the answer correct (Yes/No)? Yes")
  assert (v.steps, v.final, v.status) == (None, T, "ok")
  v = V.parse_verification("Is the answer correct (Yes/No)? No", num_steps=2)
  assert (v.steps, v.final, v.status) == (None, F, "missing_steps")
  assert "expected 2" in v.reason


def test_missing_and_conflicting_verdicts():
  v = V.parse_verification("Step 1: 2 + 2 = 4\nStep 2: The step is correct.\nIs the answer correct (Yes/No)? Yes")
  assert (v.steps, v.final, v.status) == (None, T, "missing_verdict")
  assert v.reason == "step 1: no verdict in '2 + 2 = 4'"
  v = V.parse_verification("Step 1: maybe correct, maybe wrong\nIs the answer correct (Yes/No)? Yes")
  assert (v.steps, v.status) == (None, "missing_verdict") and "conflicting verdict words" in v.reason
  v = V.parse_verification("Step 1: The step is correct.\nStep 2: The step is incorrect.")
  assert (v.steps, v.final, v.status) == ((T, F), None, "missing_final")
  assert v.reason == "no final 'Is the answer correct (Yes/No)? Yes|No' line"
  v = V.parse_verification("Step 1: The step is correct.\nIs the answer correct (Yes/No)? Yes\n"
                           "Is the answer correct (Yes/No)? No")
  assert (v.steps, v.final, v.status) == ((T,), None, "conflicting_final")
  v = V.parse_verification("Step 1: The step is correct.\nIs the answer correct (Yes/No)? Yes\n"
                           "Is the answer correct (Yes/No)? Yes")
  assert (v.steps, v.final, v.status) == ((T,), T, "ok")


def test_step_numbering_problems():
  fin = "\nIs the answer correct (Yes/No)? No"
  v = V.parse_verification("Step 1: The step is correct.\nStep 1: The step is incorrect.\nStep 2: Incorrect" + fin)
  assert (v.steps, v.final, v.status) == (None, F, "duplicate_step")
  assert v.reason == "step 1 listed more than once (step numbers read: 1, 1, 2)"
  v = V.parse_verification("Step 2: Correct\nStep 1: Incorrect" + fin)
  assert (v.steps, v.status, v.reason) == (None, "step_order", "steps out of order (step numbers read: 2, 1)")
  v = V.parse_verification("Step 1: Correct\nStep 2: Correct\nStep 4: Incorrect" + fin)
  assert (v.steps, v.status) == (None, "missing_step")
  assert v.reason == "missing step number(s) 3 (step numbers read: 1, 2, 4)"
  v = V.parse_verification("Step 0: Correct\nStep 1: Incorrect" + fin)
  assert (v.status, v.reason) == ("missing_step", "steps do not start at 1 (step numbers read: 0, 1)")
  # several problems: the most severe is the status, the reason lists all
  v = V.parse_verification("Step 1: Correct\nStep 1: 2 + 2")
  assert v.status == "duplicate_step"
  assert "no verdict" in v.reason and "no final" in v.reason


def test_step_count_mismatch():
  text = V.render_prm([T, F], False)
  assert V.parse_verification(text, num_steps=2).status == "ok"
  v = V.parse_verification(text, num_steps=3)
  assert (v.steps, v.final, v.status) == ((T, F), F, "step_count_mismatch")
  assert v.reason == "read 2 step verdicts, the solution has 3 steps"
  assert V.parse_verification(text).status == "ok"


def test_first_error_index():
  assert V.first_error_index(ok([T, T, F, F], F)) == 2
  assert V.first_error_index(ok([F], F)) == 0
  assert V.first_error_index(ok([T, T], T)) == -1
  assert V.first_error_index(V.parse_verification("garbage")) is None
  assert V.first_error_index(V.parse_verification(V.render_prm([T, F, T], F))) == 1  # read as written


# ---- self-consistency --------------------------------------------------------------------------------------------

DEAD = Verification(None, None, "unparseable", "no")


def test_consensus_n1():
  c = V.step_consensus([ok([T, F], F)], 2)
  assert c == V.Consensus((T, F), F, 1, 0, 0, 0, True)
  # a verifier that did not propagate its own error: the consensus does, so its rationale is only the closest one
  c = V.step_consensus([ok([T, F, T], F)], 3)
  assert c == V.Consensus((T, F, F), F, 1, 0, 0, 0, False)
  c = V.step_consensus([ok([T, F, T], F)], 3, ConsensusConfig(propagate=False))
  assert c == V.Consensus((T, F, T), F, 1, 0, 0, 0, True)
  assert V.outcome_consensus([ok([T], T)]) == V.Consensus(None, T, 1, 0, 0, 0, True)


def test_consensus_n3():
  vs = [ok([T, T, T], T), ok([T, F, F], F), ok([T, T, F], F)]
  assert V.step_consensus(vs, 3) == V.Consensus((T, T, F), F, 3, 0, 0, 2, True)
  assert V.outcome_consensus(vs) == V.Consensus(None, F, 3, 0, 0, 1, True)
  # the first exact agreement is chosen, not the first index
  vs = [ok([F, F, F], F), ok([T, T, F], F), ok([T, T, T], F)]
  assert V.step_consensus(vs, 3) == V.Consensus((T, T, F), F, 3, 0, 0, 1, True)
  # nobody agrees exactly: fewest disagreeing steps wins (B matches every step but not the final verdict)
  vs = [ok([F, F, F], F), ok([T, T, F], T), ok([T, T, T], T)]
  assert V.step_consensus(vs, 3) == V.Consensus((T, T, F), F, 3, 0, 0, 1, False)
  # equal disagreement -> lowest index
  vs = [ok([T, F, T], F), ok([F, T, T], F), ok([T, T, F], F)]
  assert V.step_consensus(vs, 3, ConsensusConfig(propagate=False)) == V.Consensus((T, T, T), T, 3, 0, 0, 0, False)


@pytest.mark.parametrize("tie,order,steps,final,chosen", [
    ("incorrect", "BACD", (T, F), F, 0), ("correct", "BACD", (T, T), T, 1), ("first", "BACD", (T, F), F, 0),
    ("incorrect", "ABCD", (T, F), F, 1), ("correct", "ABCD", (T, T), T, 0), ("first", "ABCD", (T, T), T, 0),
])
def test_consensus_n4_ties(tie, order, steps, final, chosen):
  pool = {"A": ok([T, T], T), "B": ok([T, F], F), "C": ok([T, T], T), "D": ok([F, F], F)}
  vs = [pool[k] for k in order]
  cfg = ConsensusConfig(tie=tie)
  # step 1 is 3:1 correct, step 2 splits 2:2
  assert V.step_consensus(vs, 2, cfg) == V.Consensus(steps, final, 4, 0, 0, chosen, True)
  # finals split 2:2 as well, so the outcome tie resolves the same way
  assert V.outcome_consensus(vs, cfg) == V.Consensus(None, final, 4, 0, 0, chosen, True)


def test_consensus_mismatch_drop_vs_pad():
  vs = [ok([T, T, T], T), ok([T, T, T], T), ok([T, F], F), ok([F, F, F, F], F)]
  assert V.step_consensus(vs, 3) == V.Consensus((T, T, T), T, 2, 0, 2, 0, True)
  # pad: short -> (T, F, F), long -> (F, F, F); steps 2 and 3 split 2:2 -> incorrect; the padded one is closest
  assert V.step_consensus(vs, 3, ConsensusConfig(mismatch="pad")) == V.Consensus((T, F, F), F, 4, 0, 2, 2, False)
  assert V.step_consensus(vs, 3, ConsensusConfig(mismatch="pad", tie="correct")) == V.Consensus(
      (T, T, T), T, 4, 0, 2, 0, True)
  # mismatched verifications still vote on the outcome
  assert V.outcome_consensus(vs) == V.Consensus(None, F, 4, 0, 0, 2, True)  # 2:2 -> tie="incorrect"
  # mismatched parse statuses are voters like any other
  parsed = [V.parse_verification(V.render_prm(s, f), num_steps=3) for s, f in [([T, F], F), ([T, F, F], F)]]
  assert parsed[0].status == "step_count_mismatch"
  assert V.step_consensus(parsed, 3) == V.Consensus((T, F, F), F, 1, 0, 1, 1, True)


def test_consensus_unparseable():
  assert V.step_consensus([DEAD, DEAD, DEAD], 2) == V.Consensus(None, None, 0, 3, 0, None, False)
  assert V.outcome_consensus([DEAD, DEAD]) == V.Consensus(None, None, 0, 2, 0, None, False)
  assert V.outcome_consensus([]) == V.Consensus(None, None, 0, 0, 0, None, False)
  assert V.step_consensus([ok([T, T, T], T)], 2) == V.Consensus(None, None, 0, 0, 1, None, False)
  no_steps = Verification(None, F, "missing_verdict", "step 1: no verdict")
  vs = [DEAD, no_steps, ok([T, T], T), ok([T, F], F), ok([F, F], F)]
  assert V.step_consensus(vs, 2) == V.Consensus((T, F), F, 3, 2, 0, 3, True)
  # outcome: No wins 3:1; the first "No" (index 1) has unreadable steps, so the well-formed index 3 is kept
  assert V.outcome_consensus(vs) == V.Consensus(None, F, 4, 1, 0, 3, True)
  assert V.outcome_consensus(vs[:2]) == V.Consensus(None, F, 1, 1, 0, 1, True)


def test_consensus_config_validation():
  with pytest.raises(ValueError, match=r"ConsensusConfig.tie='majority': expected one of incorrect, correct, first"):
    ConsensusConfig(tie="majority")
  with pytest.raises(ValueError, match=r"ConsensusConfig.mismatch='truncate': expected one of drop, pad"):
    ConsensusConfig(mismatch="truncate")
  with pytest.raises(ValueError, match=r"ConsensusConfig.propagate='yes': expected True or False"):
    ConsensusConfig(propagate="yes")
  with pytest.raises(ValueError, match="num_steps=0"):
    V.step_consensus([ok([T], T)], 0)


# ---- metrics -----------------------------------------------------------------------------------------------------


def test_step_f1_hand_computed():
  gold = [[T, T, F], [T, T], [F, F]]
  pred = [[T, F, F], [T, T], None]
  m = V.step_f1(pred, gold)
  # sol 1: tn, fp, tp; sol 2: tn, tn; sol 3 unparseable: two missed errors
  assert {k: m[k] for k in ("tp", "fp", "fn", "tn", "steps", "unparseable", "mismatched", "no_prediction")} == {
      "tp": 1, "fp": 1, "fn": 2, "tn": 3, "steps": 7, "unparseable": 1, "mismatched": 0, "no_prediction": 2}
  assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)
  assert m["f1"] == pytest.approx(0.4) and m["accuracy"] == pytest.approx(4 / 7)
  # a short prediction misses its tail; a long one's extra verdicts are ignored
  m = V.step_f1([[T, F], np.array([T, T, F])], [[T, F, F], [T, T]])
  assert (m["tp"], m["fp"], m["fn"], m["tn"], m["mismatched"], m["no_prediction"]) == (1, 0, 1, 3, 2, 1)
  assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 5)
  # unparseable correct steps are not counted right
  m = V.step_f1([None, [T]], [[T, T], [T]])
  assert (m["f1"], m["precision"], m["recall"], m["accuracy"]) == (0.0, 0.0, 0.0, pytest.approx(1 / 3))
  with pytest.raises(ValueError, match="2 predictions for 1 gold"):
    V.step_f1([None, None], [[T]])


def test_outcome_f1_hand_computed():
  m = V.outcome_f1([T, F, T, None, None], [T, F, F, T, F])
  assert {k: m[k] for k in ("tp", "fp", "fn", "tn", "n", "unparseable")} == {
      "tp": 1, "fp": 0, "fn": 2, "tn": 1, "n": 5, "unparseable": 2}
  assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1 / 3)
  assert m["f1"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(0.4)
  m = V.outcome_f1([F, F, T], [F, T, T])
  assert (m["tp"], m["fp"], m["tn"], m["f1"], m["accuracy"]) == (1, 1, 1, pytest.approx(2 / 3), pytest.approx(2 / 3))
  with pytest.raises(ValueError, match="1 predictions for 2 gold"):
    V.outcome_f1([T], [T, F])
