"""The built-in arithmetic world: chained integer problems with exact step-level ground truth.

A problem is a start value and 2-6 operations applied left to right ("Start with 7, then + 5, then * 3."). Its
solution is written in the step format the papers use for math:

    Step 1: 7 + 5 = 12
    Step 2: 12 * 3 = 36
    Answer: 36

or, for the RL policy, `<think> <step> 7 + 5 = 12 </step> ... </think> <answer> \\boxed{ 36 } </answer>`.
Every step of any written solution can be checked exactly, so a verifier's or a PRM's verdicts, and the first-error
index, are scored against the truth. A corruption model writes imperfect solutions: a wrong result, a wrong operand,
a dropped step; later steps continue consistently from the wrong value, as a model that erred would.

Numbers are single tokens (0..max_value), so a tiny model learns the world's arithmetic as a table; the world's
tokenizer is a real `transformers` tokenizer (WordLevel, built with `tokenizers`), so the world runs through the
same code path as real models.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Sequence

import numpy as np

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Difficulty knobs. Every intermediate value of a problem stays in [0, max_value].

  max_start: the largest start value; 0 = max_operand (the world before the knob existed).
  heldout_every: 0 = no held-out split. k > 0 = one problem in about k (those whose text has a CRC-32 divisible by
  k) is held out: `problem_at` draws it only for split="heldout", so no training stream ever sees it. A small
  world has few distinct problems (2-3 operations on operands up to 3: 475), and independent streams then share
  most of them.
  misconceptions: the fraction of arithmetic facts (`lhs op rhs`) that the SFT demonstrator always gets wrong
  (`demonstration`), so a policy trained on its demonstrations inherits systematic errors that sampling more does
  not fix and RL can; 0 = none. Only demonstrations change: exact labels and rewards keep the true arithmetic.
  """

  min_ops: int = 2
  max_ops: int = 6
  max_operand: int = 9
  max_value: int = 99
  ops: str = "+-*"
  max_start: int = 0
  heldout_every: int = 0
  misconceptions: float = 0.0

  def __post_init__(self):
    if not 1 <= self.min_ops <= self.max_ops:
      raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={self.min_ops}, max_ops={self.max_ops}")
    if self.max_operand > self.max_value:
      raise ValueError(f"max_operand={self.max_operand} exceeds max_value={self.max_value}")
    if not self.ops or set(self.ops) - set(OPS):
      raise ValueError(f"ops={self.ops!r}: expected a non-empty subset of {''.join(OPS)!r}")
    if not 0 <= self.max_start <= self.max_value:
      raise ValueError(f"max_start={self.max_start} outside [0, max_value={self.max_value}] (0 = max_operand)")
    if isinstance(self.heldout_every, bool) or not isinstance(self.heldout_every, int) or self.heldout_every < 0:
      raise ValueError(f"heldout_every={self.heldout_every!r}: expected an integer >= 0 (0 = no held-out split)")
    if not 0.0 <= self.misconceptions <= 1.0:
      raise ValueError(f"misconceptions={self.misconceptions!r}: expected a fraction in [0, 1] (0 = none)")


@dataclasses.dataclass(frozen=True)
class Step:
  """One written step `lhs op rhs = result`."""

  lhs: int
  op: str
  rhs: int
  result: int

  def text(self) -> str:
    return f"{self.lhs} {self.op} {self.rhs} = {self.result}"


@dataclasses.dataclass(frozen=True)
class Problem:
  start: int
  ops: tuple[tuple[str, int], ...]

  def values(self) -> list[int]:
    """Running values after each operation (the correct intermediate results)."""
    out, v = [], self.start
    for op, x in self.ops:
      v = OPS[op](v, x)
      out.append(v)
    return out

  @property
  def answer(self) -> int:
    return self.values()[-1]

  def text(self) -> str:
    return f"Start with {self.start}, " + ", ".join(f"then {op} {x}" for op, x in self.ops) + "."

  def correct_steps(self) -> list[Step]:
    steps, v = [], self.start
    for (op, x), r in zip(self.ops, self.values()):
      steps.append(Step(v, op, x, r))
      v = r
    return steps


@dataclasses.dataclass(frozen=True)
class Solution:
  """A written solution with its exact labels."""

  steps: tuple[Step, ...]
  answer: int

  def text(self, fmt: str = "steps") -> str:
    return render_solution(self.steps, self.answer, fmt)


def make_problem(rng: np.random.Generator, world: WorldConfig) -> Problem:
  """Samples a problem whose running values all stay in [0, max_value]."""
  n = int(rng.integers(world.min_ops, world.max_ops + 1))
  v = int(rng.integers(1, (world.max_start or world.max_operand) + 1))
  start, ops = v, []
  for _ in range(n):
    choices = []
    for op in world.ops:
      for x in range(1, world.max_operand + 1):
        r = OPS[op](v, x)
        if 0 <= r <= world.max_value and not (op == "*" and x == 1):
          choices.append((op, x, r))
    op, x, v = choices[int(rng.integers(len(choices)))]
    ops.append((op, x))
  return Problem(start, tuple(ops))


SPLITS = ("train", "heldout")
_MAX_DRAWS = 10_000
# Redraws use rng [seed, index, _REDRAW, k]: streams seed their per-example randomness with [seed, index, small
# int] (world_data's solutions use 1, the verifier's 2), and a redraw from [seed, index, 1] made each redrawn
# problem's solution a function of the problem: the generator learnt those errors as rules (final-answer accuracy
# of its samples 0.02 instead of 0.15).
_REDRAW = 0x5EED


def split_of(problem: Problem, world: WorldConfig) -> str:
  """"heldout" when `world.heldout_every` > 0 divides the CRC-32 of the problem's text, else "train"."""
  if world.heldout_every and zlib.crc32(problem.text().encode()) % world.heldout_every == 0:
    return "heldout"
  return "train"


def problem_at(seed: int, index: int, world: WorldConfig, split: str = "train") -> Problem:
  """Problem number `index` of the stream `seed` in `split`: deterministic, so datasets are index-addressable.

  Draws from rng [seed, index], then [seed, index, _REDRAW, k] for k = 1, 2, ... until the problem is in `split`
  (with no held-out split, the first draw is every stream's problem, as before the split existed).
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
  if split == "heldout" and not world.heldout_every:
    raise ValueError("split='heldout' needs world.heldout_every > 0 (the world holds no problem out)")
  problem = make_problem(np.random.default_rng([seed, index]), world)
  for k in range(1, _MAX_DRAWS):
    if split_of(problem, world) == split:
      return problem
    problem = make_problem(np.random.default_rng([seed, index, _REDRAW, k]), world)
  raise ValueError(f"no {split} problem in {_MAX_DRAWS} draws of stream {seed}, index {index}: the world "
                   f"{world} has (almost) none; change heldout_every")


# ---- ground truth ------------------------------------------------------------------------------------------------


def step_ok(problem: Problem, steps: Sequence[Step]) -> list[bool]:
  """Per-step correctness: step i is right iff it applies operation i to the correct value and computes it right.

  A step that continues correctly from an earlier wrong value is NOT right (its lhs is not the true value).
  """
  truth = problem.correct_steps()
  return [i < len(truth) and s == truth[i] for i, s in enumerate(steps)]


def first_error(problem: Problem, steps: Sequence[Step], answer: int | None = None) -> int:
  """0-based index of the earliest wrong step, or -1 if the solution is right.

  A solution with too few steps errs at the first missing step (index len(steps)); one whose steps are right but
  whose answer differs from its last result errs at its last step.
  """
  ok = step_ok(problem, steps)
  for i, good in enumerate(ok):
    if not good:
      return i
  if len(steps) < len(problem.ops):
    return len(steps)
  if len(steps) > len(problem.ops):
    return len(problem.ops)
  if answer is not None and answer != problem.answer:
    return len(steps) - 1
  return -1


def process_labels(problem: Problem, steps: Sequence[Step], answer: int | None = None) -> list[bool]:
  """Step labels as the papers' verifiers give them: correct before the first error, incorrect from it on."""
  k = first_error(problem, steps, answer)
  return [k == -1 or i < k for i in range(len(steps))]


def step_checks(problem: Problem, steps: Sequence[Step], answer: int | None = None) -> list[bool]:
  """Each step checked on its own, from the student's own previous result rather than the true one.

  check_i = i < len(ops) and lhs_i == v_{i-1} and (op_i, rhs_i) == ops[i] and lhs_i op_i rhs_i == result_i, with
  v_{-1} = the start and v_{i-1} = result_{i-1} as written; the last step of a solution with the problem's step
  count also fails when the answer line differs from its result (as `first_error`; a solution with too few steps
  errs at a step it did not write, so none of its steps fails). A step that continues correctly from an earlier
  wrong value passes, unlike in `process_labels`; the first failing check is still the first error (steps before
  it equal the true ones), so both give the same ProcessBench label. Per-step truths that an earlier step does not
  decide: a model cannot meet them by recalling each training problem's one correct solution (README, "what
  limits the world's PRMs").
  """
  out, prev = [], problem.start
  for i, s in enumerate(steps):
    out.append(i < len(problem.ops) and s.lhs == prev and (s.op, s.rhs) == tuple(problem.ops[i])
               and OPS[s.op](s.lhs, s.rhs) == s.result)
    prev = s.result
  if out and answer is not None and len(steps) == len(problem.ops) and answer != steps[-1].result:
    out[-1] = False
  return out


# ---- corruption model --------------------------------------------------------------------------------------------

CORRUPTIONS = ("wrong_result", "wrong_operand", "dropped_step")


def corrupt(problem: Problem, rng: np.random.Generator, world: WorldConfig, kind: str | None = None,
            at: int | None = None) -> Solution:
  """A solution with one error of `kind` at step `at` (random if None); later steps continue from it consistently."""
  truth = problem.correct_steps()
  kind = kind or CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
  if kind not in CORRUPTIONS:
    raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
  if kind == "dropped_step" and len(truth) < 2:
    kind = "wrong_result"
  at = int(rng.integers(len(truth))) if at is None else at
  ops = list(problem.ops)
  steps: list[Step] = []
  v = problem.start
  for i, (op, x) in enumerate(ops):
    if i == at and kind == "dropped_step":
      continue
    if i == at and kind == "wrong_operand":
      x = _other(x, rng, 1, world.max_operand)
    r = OPS[op](v, x)
    if i == at and kind == "wrong_result":
      r = _other(r, rng, 0, world.max_value)
    r = _clip(r, world)  # stay inside the tokenizer's number range
    steps.append(Step(v, op, x, r))
    v = r
  return Solution(tuple(steps), v)


def _clip(v: int, world: WorldConfig) -> int:
  return min(max(v, 0), world.max_value)


def _other(x: int, rng: np.random.Generator, lo: int, hi: int) -> int:
  """A nearby value != x in [lo, hi] (off-by-a-little, the typical slip)."""
  for _ in range(100):
    y = x + int(rng.choice([-3, -2, -1, 1, 2, 3]))
    if lo <= y <= hi and y != x:
      return y
  return lo if x != lo else lo + 1


def sample_solution(problem: Problem, rng: np.random.Generator, world: WorldConfig, p_error: float) -> Solution:
  """The correct solution with probability 1 - p_error, otherwise a corrupted one."""
  if rng.random() >= p_error:
    return Solution(tuple(problem.correct_steps()), problem.answer)
  return corrupt(problem, rng, world)


# ---- misconceptions ----------------------------------------------------------------------------------------------


def misconceived(world: WorldConfig, lhs: int, op: str, rhs: int) -> int | None:
  """The result the demonstrator believes for `lhs op rhs` when it is one of its misconceptions, else None.

  A fact is misconceived when the CRC-32 of its text falls in the lowest `world.misconceptions` share of the hash
  range; the belief is the true result + 1 or - 1 (by the hash's low bit; the other sign at the range's edge),
  in [0, max_value]. Fixed per world: the same facts are wrong in every demonstration.
  """
  if not world.misconceptions:
    return None
  h = zlib.crc32(f"{lhs} {op} {rhs}".encode())
  if h >= world.misconceptions * 2**32:
    return None
  true = _clip(OPS[op](lhs, rhs), world)
  wrong = true + (1 if h & 1 else -1)
  return wrong if 0 <= wrong <= world.max_value else true - (1 if h & 1 else -1)


def demonstration(problem: Problem, rng: np.random.Generator, world: WorldConfig, p_error: float) -> Solution:
  """An SFT demonstration: `sample_solution` as a demonstrator with the world's misconceptions writes it. Each step
  starts from the value written before it; a misconceived fact gets the believed result, a step the corruption
  model slipped on keeps its slip, every other step is computed right."""
  solution = sample_solution(problem, rng, world, p_error)
  if not world.misconceptions:
    return solution
  steps, v = [], problem.start
  for s in solution.steps:
    slipped = s.result != _clip(OPS[s.op](s.lhs, s.rhs), world)
    believed = misconceived(world, v, s.op, s.rhs)
    r = s.result if slipped else believed if believed is not None else _clip(OPS[s.op](v, s.rhs), world)
    steps.append(Step(v, s.op, s.rhs, r))
    v = r
  return Solution(tuple(steps), v)


# ---- text formats ------------------------------------------------------------------------------------------------

FORMATS = ("steps", "think")


def render_solution(steps: Sequence[Step], answer: int, fmt: str = "steps") -> str:
  """Solution text in the papers' step format ("steps") or the RL policy format ("think")."""
  if fmt == "steps":
    return "\n".join([f"Step {i + 1}: {s.text()}" for i, s in enumerate(steps)] + [f"Answer: {answer}"])
  if fmt == "think":
    body = " ".join(f"<step> {s.text()} </step>" for s in steps)
    return f"<think> {body} </think> <answer> \\boxed{{ {answer} }} </answer>"
  raise ValueError(f"unknown solution format {fmt!r}; known: {', '.join(FORMATS)}")


def prompt_text(problem: Problem) -> str:
  return f"Problem: {problem.text()}\nSolution:\n"


_STEP_RE = re.compile(r"(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)")
_ANSWER_RE = {"steps": re.compile(r"Answer\s*:\s*(-?\d+)\s*$"),
              "think": re.compile(r"<answer>\s*\\boxed\{\s*(-?\d+)\s*\}\s*</answer>\s*$")}


def parse_solution(text: str, fmt: str = "steps") -> tuple[list[Step], int | None]:
  """Steps and final answer read back from a (possibly spaced-out, decoded) solution; answer None if absent."""
  if fmt == "steps":
    parts = [m for m in re.split(r"\n|Step\s*\d+\s*:", text) if _STEP_RE.search(m)]
  elif fmt == "think":
    parts = re.findall(r"<step>(.*?)</step>", text, flags=re.S)
  else:
    raise ValueError(f"unknown solution format {fmt!r}; known: {', '.join(FORMATS)}")
  steps = []
  for p in parts:
    m = _STEP_RE.search(p)
    if m:
      steps.append(Step(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))))
  m = _ANSWER_RE[fmt].search(text.strip())
  return steps, (int(m.group(1)) if m else None)


# ---- tokenizer ---------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Every word the world's formats use (problems, solutions, verifications, judge prompts); numbers are added apart.
WORDS = (
    "\n", "Start", "with", "then", "Problem", "Solution", "Student", "Step", "Answer", ",", ".", ":", "+", "-", "*",
    "=", "(", ")", "/", "?", "<think>", "</think>", "<step>", "</step>", "<answer>", "</answer>", "\\boxed{", "}",
    "Let's", "verify", "step", "by", "The", "the", "is", "correct", "incorrect", "Is", "answer", "Yes", "No",
    "Correct", "Incorrect", "Expected", "Verification", "Critique", "A", "B", "Which", "better", "Judge",
)
_PRE_TOKENIZE = r"\n|\\boxed\{|</?[a-z]+>|Let's|\d+|[A-Za-z]+|[^\s\w]"


def build_tokenizer(max_value: int = 99):
  """A `transformers.PreTrainedTokenizerFast` for the world: specials, the words above, numbers 0..max_value."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + WORDS + tuple(str(n) for n in range(max_value + 1)))}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
      pre_tokenizers.Split(Regex(_PRE_TOKENIZE), behavior="isolated"),
  ])
  tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                 unk_token="<unk>")
  return fast
