"""SPARK-PRM Stage I in the arithmetic world: a noisy teacher's verification transcripts and their SFT data stream.

The world's small verifier model is trained by SFT on transcripts written by a teacher that knows the exact ground
truth (`arith.process_labels`) but errs at a chosen rate, so that the trained verifier, sampled at T=1, makes
independent-ish mistakes for self-consistency to average out, while greedy decoding (the spec's critique and merge
steps run at T=0) follows the most likely, mostly right, verdict.

Error-rate semantics (`eps`, the per-step error rate, 0 <= eps < 0.5):
  * Verification: the teacher walks the steps in order. Its judgment of step i ("is it exactly the i-th correct step,
    with every earlier step right") is the truth flipped with probability eps, independently per step, up to and
    including the first step it believes incorrect; from there on every step is incorrect (errors propagate) with no
    further draws. A student step beyond the problem's step count has no correct counterpart: it is always judged
    incorrect, without a draw. Hence, for a solution whose labels first go wrong at step k (0-based), the teacher's
    first-error index is right with probability (1 - eps)^(k + 1); for a solution whose steps are all labelled
    correct (n steps), with probability (1 - eps)^n. It errs early (a false alarm at j < k, probability
    (1 - eps)^j * eps) or late (it missed step k and the following ones).
  * Critique of a given verification: the teacher forms its own noisy judgment exactly as above and marks each step
    of the verification "Correct" iff the verification's verdict on that step equals that judgment. In a critique,
    "Correct" therefore means "the verification's verdict on this step is right", not "the student's step is right".
  * Merge: deterministic given the critique (flip every verdict the critique disputes, then propagate); the only
    randomness is the teacher's arithmetic slip in a false-alarm analysis (below).
  * Reference-guided verification (the baseline that sees the expected answer): an answer equal to the reference
    makes every step correct with no noise; otherwise the first error is searched with the same noise and, if the
    teacher believes none, the last step is marked incorrect. The final verdict is always exact.

Analyses use world words only (`arith.WORDS` and numbers): up to the first believed error a step's analysis is
"<student's step> , <the step as the teacher computes it> , <larger result> - <smaller result> = <difference>", so
the verdict follows from one number the verifier computes, 0 or not. Without the subtraction the verdict would have
to compare two spans, and models of the world's size do not learn that comparison: read by teacher forcing, a
2 x 64 verifier said "correct" after every two-span analysis whether the spans agreed or not, from 250 to 2500 steps
(sampled step accuracy 0.57-0.61 at 500-1000 steps, below the input-blind 0.72), while with the subtraction it
reached 0.90 at 1000 steps (README, "what limits the world's PRMs and verifier"). An earlier format with only one
span taught it to restate the correct step and call it correct. Subtracting the operands as well as the results
(so a step wrong in an operand but right in its result would not show difference 0) was measured and not kept:
from the pipeline's generator it lowered the verifier's sampled step accuracy from 0.872 to 0.768 (README). The
computed step is the expected correct step, except where the teacher's judgment slipped: a missed error shows the
student's step (it agreed; difference 0), a false alarm the expected step with its result off by 1-3 (its own slip),
kept within the numbers of the prompt so every number stays in the world's vocabulary. A wrong step whose result is
right by coincidence (another operand or operation giving the same value) shows difference 0 and keeps the teacher's
verdict, incorrect. After the first believed error, and beyond the problem's steps, an analysis is the student's
step alone.

The truth is `arith.process_labels`, which also makes the last step wrong when the answer line contradicts it
(`arith.first_error`); such solutions are never sampled, but keep eps=0 transcripts exactly equal to the labels.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Mapping, Sequence

import grain
import numpy as np

from sparkjax.data import arith
from sparkjax.spark import verdicts as V
from sparkjax.train.sft import pad_examples

TASKS = ("verify", "verify_reference", "critique", "merge")
DEFAULT_MIX = types.MappingProxyType(dict(verify=0.55, verify_reference=0.15, critique=0.15, merge=0.15))


# ---- ground truth and prompt fields -------------------------------------------------------------------------------


def solution_fields(problem: arith.Problem, solution: arith.Solution) -> dict:
  """The texts the prompts take: dict(problem=problem.text(), steps=[each Step.text()], answer=solution.answer)."""
  return dict(problem=problem.text(), steps=[s.text() for s in solution.steps], answer=int(solution.answer))


def gold(problem: arith.Problem, solution: arith.Solution) -> tuple[list[bool], bool]:
  """Exact labels: (per-step `arith.process_labels` (errors propagate), final = (`arith.first_error` == -1))."""
  labels = arith.process_labels(problem, solution.steps, solution.answer)
  return labels, arith.first_error(problem, solution.steps, solution.answer) == -1


# ---- the teacher --------------------------------------------------------------------------------------------------


def _check_eps(eps: float, name: str = "eps") -> None:
  if not (isinstance(eps, (int, float)) and 0.0 <= eps < 0.5):
    raise ValueError(f"{name}={eps!r}: the per-step error rate must be in [0, 0.5) (0.5 would be a coin flip)")


def _check_solution(solution: arith.Solution) -> None:
  if not solution.steps:
    raise ValueError("a solution to verify needs at least one step")


def _believe(problem: arith.Problem, solution: arith.Solution, rng: np.random.Generator, eps: float) -> list[bool]:
  """The teacher's own propagated judgment: truth flipped w.p. eps per step until the first step believed wrong."""
  truth, _ = gold(problem, solution)
  out: list[bool] = []
  for i, t in enumerate(truth):
    # Beyond the problem's step count there is no correct step to compare with: wrong for certain, no draw.
    ok = False if i >= len(problem.ops) else t != bool(rng.random() < eps)
    out.append(ok)
    if not ok:
      break
  return out + [False] * (len(truth) - len(out))


def _consistent_final(problem: arith.Problem, solution: arith.Solution, step_verdicts: Sequence[bool]) -> bool:
  """Yes iff every step is believed correct, the step count is the problem's and the answer is the last result."""
  return (all(step_verdicts) and len(solution.steps) == len(problem.ops)
          and solution.answer == solution.steps[-1].result)


def _slip(value: int, hi: int, rng: np.random.Generator) -> int:
  """A nearby wrong value in [0, hi]: the teacher's arithmetic slip (hi = the largest number in the prompt)."""
  cands = [value + d for d in (-3, -2, -1, 1, 2, 3) if 0 <= value + d <= hi]
  if not cands:  # only when every number in the prompt is 0, which no sampled problem has
    return value + 1
  return cands[int(rng.integers(len(cands)))]


def _analyses(problem: arith.Problem, solution: arith.Solution, step_verdicts: Sequence[bool],
              rng: np.random.Generator) -> list[str]:
  """One analysis per step: `comparison(student's step, the step as the teacher computes it)` up to the first
  believed error, so the verdict follows from the difference of the two results; after it (and beyond the problem's
  steps) the student's step alone. The teacher's computed step is the expected correct step, except where its
  judgment slipped: a missed error shows the student's step as computed (it agreed with it), a false alarm shows the
  expected step with its result off by 1-3 (kept within the prompt's numbers, so inside the world's vocabulary)."""
  expected = problem.correct_steps()
  first = next((i for i, ok in enumerate(step_verdicts) if not ok), len(step_verdicts))
  hi = max([problem.start, solution.answer] + [x for _, x in problem.ops] + problem.values()
           + [n for t in solution.steps for n in (t.lhs, t.rhs, t.result)])
  out = []
  for i, s in enumerate(solution.steps):
    if i > first or i >= len(expected):
      out.append(s.text())
      continue
    e = expected[i]
    if i < first and e != s:  # believed correct although wrong: the teacher computed what the student wrote
      e = s
    elif i == first and e == s:  # believed wrong although right: the teacher's own arithmetic slip
      e = dataclasses.replace(e, result=_slip(e.result, hi, rng))
    out.append(comparison(s, e))
  return out


def comparison(student: arith.Step, computed: arith.Step) -> str:
  """The analysis of a judged step: "<student's step> , <computed step> , <hi> - <lo> = <hi - lo>", hi / lo the
  larger / smaller of the two results (so every number stays in [0, max_value])."""
  hi, lo = max(student.result, computed.result), min(student.result, computed.result)
  return f"{student.text()} , {computed.text()} , {hi} - {lo} = {hi - lo}"


def teach_verification(problem: arith.Problem, solution: arith.Solution, rng: np.random.Generator, eps: float,
                       reference: bool = False) -> tuple[str, list[bool], bool]:
  """A teacher verification in the verifier / PRM-CoT format (`verdicts.render_verification`).

  Rule (see the module docstring): per-step judgment = the exact propagated label flipped w.p. eps, independently,
  until the first step believed incorrect; every later step incorrect; final Yes iff all steps are believed correct,
  the step count is the problem's and the answer equals the last step's result. With `reference` (the prompt shows
  the expected answer): an answer equal to it -> all steps correct with no noise; else the noisy search, with the
  last step marked incorrect if it finds no error; final = (answer == expected answer), exact.

  Returns:
    (text, verdicts, final): the text parses back (`verdicts.parse_verification`) to exactly verdicts (one per step,
    True = correct, propagated) and final (True = Yes).
  """
  _check_eps(eps)
  _check_solution(solution)
  if reference:
    final = solution.answer == problem.answer
    if final:
      step_verdicts = [True] * len(solution.steps)
    else:
      step_verdicts = _believe(problem, solution, rng, eps)
      if all(step_verdicts):
        step_verdicts[-1] = False
  else:
    step_verdicts = _believe(problem, solution, rng, eps)
    final = _consistent_final(problem, solution, step_verdicts)
  text = V.render_verification(_analyses(problem, solution, step_verdicts, rng), step_verdicts, final)
  return text, step_verdicts, final


def teach_critique(problem: arith.Problem, solution: arith.Solution, verification_verdicts: Sequence[bool],
                   rng: np.random.Generator, eps: float) -> tuple[str, list[bool]]:
  """A teacher critique of a verification, in the PRM format (`verdicts.render_prm(agrees, final=all(agrees))`).

  agrees[i] = (verification_verdicts[i] == the teacher's own noisy propagated judgment of step i), so in a critique
  "Step k: Correct" means the verification's verdict on step k is right and "Incorrect" that it is wrong.

  Args:
    verification_verdicts: the critiqued verification's step verdicts, one per solution step (True = correct).

  Returns:
    (text, agrees), len(agrees) == number of steps.
  """
  _check_eps(eps)
  _check_solution(solution)
  if len(verification_verdicts) != len(solution.steps):
    raise ValueError(f"the verification has {len(verification_verdicts)} step verdicts, the solution "
                     f"{len(solution.steps)} steps")
  own = _believe(problem, solution, rng, eps)
  agrees = [bool(v) == o for v, o in zip(verification_verdicts, own)]
  return V.render_prm(agrees, final=all(agrees)), agrees


def teach_merge(problem: arith.Problem, solution: arith.Solution, verification_verdicts: Sequence[bool],
                agrees: Sequence[bool], rng: np.random.Generator) -> tuple[str, list[bool], bool]:
  """The improved verification that follows a critique, in the verifier format.

  Rule: verdict i = verification_verdicts[i] if agrees[i] else its negation, then `verdicts.propagate`; analyses as
  in `teach_verification`; final Yes iff all merged verdicts are correct, the step count is the problem's and the
  answer equals the last step's result.

  Returns:
    (text, verdicts, final), the text parsing back to exactly verdicts and final.
  """
  _check_solution(solution)
  n = len(solution.steps)
  if len(verification_verdicts) != n or len(agrees) != n:
    raise ValueError(f"got {len(verification_verdicts)} verification verdicts and {len(agrees)} critique verdicts "
                     f"for {n} steps")
  merged = V.propagate([bool(v) if a else not v for v, a in zip(verification_verdicts, agrees)])
  final = _consistent_final(problem, solution, merged)
  text = V.render_verification(_analyses(problem, solution, merged, rng), merged, final)
  return text, merged, final


def teach_example(task: str, problem: arith.Problem, solution: arith.Solution, rng: np.random.Generator, eps: float,
                  critiqued_eps: float | None = None) -> dict:
  """One SFT pair's texts for `task`, as keyword arguments of `VerifierEncoder.example` (after the task).

  "critique" and "merge" first write the verification being critiqued: a teacher verification with noise
  `critiqued_eps` (default eps, the rate a verifier trained on these transcripts would err at), so that some of
  them have something to fix. The merge target follows the (noisy, eps) teacher critique.

  Returns:
    dict(fields=solution_fields(...), target=str, reference=int|None, verification=str|None, critique=str|None).
  """
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
  critiqued_eps = eps if critiqued_eps is None else critiqued_eps
  _check_eps(critiqued_eps, "critiqued_eps")
  out = dict(fields=solution_fields(problem, solution), reference=None, verification=None, critique=None)
  if task in ("verify", "verify_reference"):
    reference = task == "verify_reference"
    out["target"] = teach_verification(problem, solution, rng, eps, reference=reference)[0]
    out["reference"] = problem.answer if reference else None
    return out
  vtext, vverdicts, _ = teach_verification(problem, solution, rng, critiqued_eps)
  ctext, agrees = teach_critique(problem, solution, vverdicts, rng, eps)
  out["verification"] = vtext
  if task == "critique":
    out["target"] = ctext
    return out
  out["critique"] = ctext
  out["target"] = teach_merge(problem, solution, vverdicts, agrees, rng)[0]
  return out


# ---- tokenised SFT data -------------------------------------------------------------------------------------------


class VerifierEncoder:
  """Fixed-shape SFT examples and generation prompts for the world verifier's four tasks.

  Lengths come from the longest possible problem (max_ops steps; every number is one token, so a text's length
  depends only on its step count): `prompt_lens` / `target_lens` per task (targets include eos), `prompt_len` = the
  longest prompt (the merge prompt: it contains a verification and a critique), `target_len` = the longest target
  + eos, and `seq_len` = the longest prompt + target + eos of any task (the SFT row length).
  """

  def __init__(self, world: arith.WorldConfig, tokenizer):
    self.world, self.tok = world, tokenizer
    self.pad, self.eos, self.unk = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    # All zeros: valid tokens for any world tokenizer, and the same token counts as any max_ops-step problem.
    longest = arith.Problem(0, (("+", 0),) * world.max_ops)
    fields = dict(problem=longest.text(), steps=[s.text() for s in longest.correct_steps()], answer=0)
    wrong = [False] * world.max_ops
    # The longest analyses: every step compared (numbers are single tokens, so any values give the longest).
    verification = V.render_verification([comparison(t, t) for t in longest.correct_steps()], wrong, False)
    critique = V.render_prm(wrong, False)
    context = dict(verify={}, verify_reference=dict(reference=0), critique=dict(verification=verification),
                   merge=dict(verification=verification, critique=critique))
    targets = dict(verify=verification, verify_reference=verification, critique=critique, merge=verification)
    self.prompt_lens = {t: len(self.tok.encode(self.prompt_text(t, fields, **context[t]))) for t in TASKS}
    self.target_lens = {t: len(self.tok.encode(targets[t])) + 1 for t in TASKS}
    self.prompt_len = max(self.prompt_lens.values())
    self.target_len = max(self.target_lens.values())
    self.seq_len = max(self.prompt_lens[t] + self.target_lens[t] for t in TASKS)

  def encode(self, text: str) -> list[int]:
    """Token ids of a world text; a ValueError if any token is outside the world's vocabulary."""
    ids = self.tok.encode(text)
    if self.unk in ids:
      bad = [t for t, i in zip(self.tok.convert_ids_to_tokens(ids), ids) if i == self.unk]
      raise ValueError(f"text has {len(bad)} token(s) outside the world vocabulary ({bad[:5]}): {text[:200]!r}")
    return ids

  @staticmethod
  def prompt_text(task: str, fields: Mapping, *, reference: int | None = None, verification: str | None = None,
                  critique: str | None = None) -> str:
    """The world-style prompt of `task` (`verdicts.*_prompt(..., style="world")`, answer = the solution's answer).

    "verify_reference" needs `reference` (the expected answer), "critique" a `verification`, "merge" a verification
    and a `critique`; an argument the task does not use is an error (it would silently be dropped).
    """
    if task not in TASKS:
      raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    needs = dict(verify=(), verify_reference=("reference",), critique=("verification",),
                 merge=("verification", "critique"))[task]
    given = dict(reference=reference, verification=verification, critique=critique)
    for k, v in given.items():
      if (v is None) == (k in needs):
        raise ValueError(f"task {task!r} {'needs' if v is None else 'does not take'} {k}=")
    problem, steps, answer = fields["problem"], fields["steps"], fields["answer"]
    if task == "verify":
      return V.verifier_prompt(problem, steps, answer=answer, style="world")
    if task == "verify_reference":
      return V.verifier_prompt(problem, steps, reference, answer=answer, style="world")
    if task == "critique":
      return V.critique_prompt(problem, steps, verification, answer=answer, style="world")
    return V.merge_prompt(problem, steps, verification, critique, answer=answer, style="world")

  def prompt_ids(self, task: str, fields: Mapping, *, reference: int | None = None, verification: str | None = None,
                 critique: str | None = None) -> list[int]:
    """Token ids of `prompt_text(...)` (unpadded, no <unk>), for generation."""
    return self.encode(self.prompt_text(task, fields, reference=reference, verification=verification,
                                        critique=critique))

  def pad_prompt(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (prompt [prompt_len] int32, prompt_mask [prompt_len] bool), like `WorldEncoder.rl_example`."""
    if len(ids) > self.prompt_len:
      raise ValueError(f"a prompt of {len(ids)} tokens exceeds prompt_len {self.prompt_len}")
    prompt = np.full(self.prompt_len, self.pad, np.int32)
    mask = np.zeros(self.prompt_len, bool)
    if ids:
      prompt[self.prompt_len - len(ids):] = ids
      mask[self.prompt_len - len(ids):] = True
    return prompt, mask

  def task_len(self, task: str) -> int:
    """The longest SFT row of `task`: its longest prompt + longest target (eos included)."""
    return self.prompt_lens[task] + self.target_lens[task]

  def example(self, task: str, fields: Mapping, target: str, *, reference: int | None = None,
              verification: str | None = None, critique: str | None = None, length: int | None = None) -> dict:
    """One SFT row: prompt, then target, then eos, right-padded to `length` (default `seq_len`;
    `sft.pad_examples`).

    Returns:
      dict(tokens [L] int32, loss_mask [L] float32 (1 on target + eos only), mask [L] bool).
    """
    p = self.prompt_ids(task, fields, reference=reference, verification=verification, critique=critique)
    t = self.encode(target) + [self.eos]
    batch = pad_examples([p], [t], self.pad, length or self.seq_len)
    return {k: v[0] for k, v in batch.items()}


def _check_mix(mix: Mapping[str, float]) -> np.ndarray:
  unknown = sorted(set(mix) - set(TASKS))
  if unknown:
    raise ValueError(f"mix has unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
  probs = np.array([float(mix.get(t, 0.0)) for t in TASKS])
  if not np.all(np.isfinite(probs)) or np.any(probs < 0):
    raise ValueError(f"mix weights must be finite and >= 0, got {dict(mix)}")
  if not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
    raise ValueError(f"mix weights must sum to 1, got {probs.sum():g} from {dict(mix)}")
  return probs / probs.sum()


def verifier_dataset(encoder: VerifierEncoder, seed: int, global_batch: int, eps: float, p_error: float = 0.5,
                     mix: Mapping[str, float] = DEFAULT_MIX, process_index: int = 0, process_count: int = 1,
                     critiqued_eps: float | None = None, by_task: bool = False,
                     verify_first: int = 0) -> grain.IterDataset:
  """An endless, batched SFT stream of teacher transcripts: this process's rows of each global batch.

  Example i is a deterministic function of (seed, i): problem `arith.problem_at(seed, i)`, then from
  `default_rng([seed, i, 2])` the task (drawn by `mix`), the solution (`arith.sample_solution` with p_error, an
  imperfect generator) and the teacher's noise (eps; see `teach_example` for critique/merge inputs). So the iterator
  state is one index (checkpoints as JSON) and process p reads rows [p * B/P, (p + 1) * B/P) of every global batch,
  the same global batch for any number of processes.

  by_task: every global batch holds one task, drawn by `mix` from `default_rng([seed, batch, 3])`, and its rows are
    padded to that task's longest example (`task_len`) instead of the longest of all tasks (`seq_len`): a
    verification row is about half as long as a merge row, so training costs about half as much per example, at
    the price of one compiled step per task.
  verify_first: with by_task, global batches 0 .. verify_first - 1 hold the verify task only (a curriculum: the
    verifier learns to restate and check the student's steps before the reference, critique and merge tasks; with
    the full mix from the start it can learn to write the correct step instead of the student's, README).

  Returns:
    A `grain.IterDataset` of dicts tokens [B/P, L] int32, loss_mask [B/P, L] float32, mask [B/P, L] bool, with
    L = `encoder.seq_len`, or the batch's task length with `by_task`.
  """
  _check_eps(eps)
  if critiqued_eps is not None:
    _check_eps(critiqued_eps, "critiqued_eps")
  if not 0.0 <= p_error <= 1.0:
    raise ValueError(f"p_error={p_error!r}: expected a probability in [0, 1]")
  probs = _check_mix(mix)
  if global_batch < 1:
    raise ValueError(f"global batch {global_batch} must be >= 1")
  if verify_first and not by_task:
    raise ValueError(f"verify_first={verify_first} needs by_task=True (a batch's task is drawn per batch)")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} does not divide over {process_count} processes")
  world = encoder.world
  local = global_batch // process_count

  def example(i: int, task: str | None = None) -> dict:
    problem = arith.problem_at(seed, i, world)
    rng = np.random.default_rng([seed, i, 2])
    drawn = TASKS[int(rng.choice(len(TASKS), p=probs))]
    task = task or drawn
    solution = arith.sample_solution(problem, rng, world, p_error)
    length = encoder.task_len(task) if by_task else encoder.seq_len
    return encoder.example(task, **teach_example(task, problem, solution, rng, eps, critiqued_eps), length=length)

  def batch(b: int) -> dict:
    task = None
    if by_task:
      drawn = TASKS[int(np.random.default_rng([seed, b, 3]).choice(len(TASKS), p=probs))]
      task = "verify" if b < verify_first else drawn
    rows = [example(b * global_batch + process_index * local + j, task) for j in range(local)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  return grain.MapDataset.range(0, 2**62).map(lambda b: batch(int(b))).to_iter_dataset()
