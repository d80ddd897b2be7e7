"""The judge's one output format and its one parser, and the prompts of the three example kinds.

Every judge or reflection response ends with its verdict in a single `\\boxed{...}`: "Yes" / "No" (pointwise), "A" /
"B" (pairwise), or the answer (reflection). The prompts ask for exactly that command, and `parse_boxed` reads exactly
that command: the original asked for `\\box{}` while its checker required `\\boxed{}`, and a response with two boxed
answers scored 0 without a trace. Here an output with no box, several boxes, only `\\box{}`, or a verdict outside the
kind's vocabulary scores 0 and says why (`status`).

Phrasings: several per kind, written for this project, drawn at random per example (`pick`).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

KINDS = ("pointwise", "pairwise", "reflection")
STATUSES = ("ok", "no box", "several boxes", "\\box{} instead of \\boxed{}", "unbalanced braces", "not a verdict")

_FORMAT = "End with your verdict alone in \\boxed{{}}: {choices}."

POINTWISE = (
  "Question: {question}\nProposed answer: {answer}\nIs the proposed answer correct? " + _FORMAT,
  "Here is a problem and a candidate solution.\nProblem: {question}\nCandidate: {answer}\nJudge whether the "
  "candidate is right. " + _FORMAT,
  "Check this answer.\n{question}\nAnswer given: {answer}\nIs it correct? " + _FORMAT,
  "You are grading a student's work.\nTask: {question}\nStudent's answer: {answer}\nDecide if it is correct. "
  + _FORMAT,
  "Problem:\n{question}\n\nResponse:\n{answer}\n\nDoes the response reach the correct result? " + _FORMAT,
)
PAIRWISE = (
  "Question: {question}\nAnswer A: {answer_a}\nAnswer B: {answer_b}\nOne of the two answers is correct. Which one? "
  + _FORMAT,
  "Two solutions to the same problem disagree.\nProblem: {question}\n(A) {answer_a}\n(B) {answer_b}\nPick the "
  "correct solution. " + _FORMAT,
  "Compare the answers below and choose the right one.\n{question}\nA: {answer_a}\nB: {answer_b}\n" + _FORMAT,
  "Problem:\n{question}\n\nCandidate A:\n{answer_a}\n\nCandidate B:\n{answer_b}\n\nExactly one candidate is "
  "correct. " + _FORMAT,
)
REFLECTION = (
  "Question: {question}\nA previous attempt answered: {answer}\nCheck the attempt. If it is wrong, solve the "
  "question correctly. End with the final answer in \\boxed{{}}.",
  "Here is a problem and someone's answer to it.\nProblem: {question}\nTheir answer: {answer}\nVerify it and give "
  "the correct final answer in \\boxed{{}}.",
  "{question}\n\nAn earlier solution:\n{answer}\n\nReview the solution, fix any mistake, and put the final answer "
  "in \\boxed{{}}.",
  "Problem: {question}\nProposed solution: {answer}\nIs the proposed solution right? Whatever you find, solve the "
  "problem and box the final answer with \\boxed{{}}.",
)
CHOICES = {"pointwise": "Yes or No", "pairwise": "A or B"}
PHRASINGS = {"pointwise": POINTWISE, "pairwise": PAIRWISE, "reflection": REFLECTION}


def pick(kind: str, rng: np.random.Generator) -> str:
  """A phrasing of `kind` drawn at random, its placeholders {question} and {answer} (or {answer_a} / {answer_b})
  unfilled."""
  if kind not in PHRASINGS:
    raise ValueError(f"unknown judge example kind {kind!r}; known: {', '.join(KINDS)}")
  text = PHRASINGS[kind][int(rng.integers(len(PHRASINGS[kind])))]
  return text.replace("{choices}", CHOICES[kind]) if kind in CHOICES else text


def render(kind: str, rng: np.random.Generator, question: str, answer: str = "", answer_a: str = "",
     answer_b: str = "") -> str:
  """The prompt of one example of `kind`, in a phrasing drawn from `rng`."""
  return pick(kind, rng).format(question=question.strip(), answer=answer.strip(), answer_a=answer_a.strip(),
                 answer_b=answer_b.strip())


# ---- the parser --------------------------------------------------------------------------------------------------

_BOXED = "\\boxed{"
_BOX_ONLY = re.compile(r"\\box\s*\{")


@dataclasses.dataclass(frozen=True)
class Parsed:
  value: str | None  # the boxed content, stripped (None unless status is "ok")
  status: str  # one of STATUSES


def parse_boxed(text: str) -> Parsed:
  """The one `\\boxed{...}` of a response: its content (braces matched, so `\\boxed{\\frac{1}{2}}` reads
  `\\frac{1}{2}`), or why there is none. Two or more boxes are refused, not resolved by taking one."""
  starts = [m.start() for m in re.finditer(re.escape(_BOXED), text)]
  if not starts:
    return Parsed(None, STATUSES[3] if _BOX_ONLY.search(text) else STATUSES[1])
  if len(starts) > 1:
    return Parsed(None, STATUSES[2])
  i, depth = starts[0] + len(_BOXED), 1
  j = i
  while j < len(text) and depth:
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    j += 1
  if depth:
    return Parsed(None, STATUSES[4])
  return Parsed(text[i:j - 1].strip(), STATUSES[0])


_WORD = {"yes": "Yes", "no": "No", "a": "A", "b": "B"}


def normalize_verdict(value: str) -> str | None:
  """"Yes" / "No" / "A" / "B" from the spellings a model writes (case, surrounding space, a trailing period,
  parentheses, \\text{...}); None for anything else."""
  v = value.strip()
  m = re.fullmatch(r"\\text\s*\{(.*)\}", v)
  if m:
    v = m.group(1).strip()
  v = v.strip(" .")
  m = re.fullmatch(r"\(\s*([A-Za-z])\s*\)", v)
  if m:
    v = m.group(1)
  return _WORD.get(v.lower())


def judge_reward(text: str, kind: str, label: str, answers_match=None) -> tuple[float, str]:
  """(reward, status) of one judge or reflection response: 1 when its one boxed value matches `label`.

  pointwise: the verdict must be Yes or No; pairwise: A or B (any other verdict is "not a verdict", 0);
  reflection: `answers_match(boxed, label) -> bool` decides (default: equal after stripping spaces), e.g.
  math-verify on real data.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown judge example kind {kind!r}; known: {', '.join(KINDS)}")
  p = parse_boxed(text)
  if p.status != "ok":
    return 0.0, p.status
  if kind == "reflection":
    same = answers_match or (lambda a, b: a.replace(" ", "") == str(b).replace(" ", ""))
    return float(bool(same(p.value, label))), "ok"
  verdict = normalize_verdict(p.value)
  allowed = ("Yes", "No") if kind == "pointwise" else ("A", "B")
  if verdict not in allowed:
    return 0.0, STATUSES[5]
  return float(verdict == label), "ok"
