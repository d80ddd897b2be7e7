"""SPARK-PRM verification text: formats, the one tolerant parser, self-consistency, and exact world metrics.

Three output formats (spec, Stage I and II), written by `render_*` and all read back by `parse_verification`:

  verifier / PRM-CoT:  Step 1: 7 + 5 = 12. The step is correct.
                       Step 2: 12 * 3 = 35. The step is incorrect.
                       Is the answer correct (Yes/No)? No
  PRM:                 Step 1: Correct
                       Step 2: Incorrect
                       Is the answer correct (Yes/No)? No
  ORM:                 No

The input prompts come in two styles: "world" uses only words of the arithmetic world's tokenizer (`arith.WORDS`), so a
world model reads them without <unk>; "llm" adds plain-English instructions for real instruction-tuned models.

Self-consistency (parallel scaling) reduces N parsed verifications of one solution to one verdict per step and one
final verdict, and picks the one rationale kept as the training target. `step_f1` / `outcome_f1` score verdicts
against the world's exact labels (positive class = an error).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

STYLES = ("world", "llm")
FINAL_QUESTION = "Is the answer correct (Yes/No)?"

# ---- rendering ---------------------------------------------------------------------------------------------------


def _yes_no(final: bool) -> str:
  return "Yes" if final else "No"


def _final_line(final: bool) -> str:
  return f"{FINAL_QUESTION} {_yes_no(final)}"


def render_verification(analyses: Sequence[str], verdicts: Sequence[bool], final: bool) -> str:
  """Verifier / PRM-CoT text: per step `Step k: <analysis> The step is correct|incorrect.`, then the final line.

  Args:
    analyses: one short analysis per step (may be empty; a missing closing period is added so the verdict reads as
      its own sentence).
    verdicts: one verdict per step, True = correct.
    final: the final verdict, True = the answer is correct.

  Returns:
    The text, lines joined by "\\n", no trailing newline.
  """
  if len(analyses) != len(verdicts):
    raise ValueError(f"got {len(analyses)} analyses for {len(verdicts)} verdicts")
  lines = []
  for k, (analysis, ok) in enumerate(zip(analyses, verdicts), 1):
    analysis = analysis.strip()
    if analysis and analysis[-1] not in ".!?:":
      analysis += "."
    verdict = f"The step is {'correct' if ok else 'incorrect'}."
    lines.append(f"Step {k}: {analysis} {verdict}" if analysis else f"Step {k}: {verdict}")
  return "\n".join(lines + [_final_line(final)])


def render_prm(verdicts: Sequence[bool], final: bool) -> str:
  """PRM text: lines `Step k: Correct|Incorrect` (k 1-based), then `Is the answer correct (Yes/No)? Yes|No`."""
  lines = [f"Step {k}: {'Correct' if ok else 'Incorrect'}" for k, ok in enumerate(verdicts, 1)]
  return "\n".join(lines + [_final_line(final)])


def render_orm(final: bool) -> str:
  """ORM text: `Yes` (the answer is correct) or `No`."""
  return _yes_no(final)


def propagate(verdicts: Sequence[bool]) -> list[bool]:
  """Errors propagate: v'_i = v_i and v'_{i-1} (every step after the first incorrect one is incorrect)."""
  out, ok = [], True
  for v in verdicts:
    ok = ok and bool(v)
    out.append(ok)
  return out


# ---- prompts -----------------------------------------------------------------------------------------------------

# A one-shot example of the whole output: without it the 1.5B Qwen2.5 verifier copied each step, ran out of tokens
# or ended without the final line (README, "Stages I-II on real text").
LLM_FORMAT_EXAMPLE = "Example of the format, for a three-step solution whose second step is wrong:\n" + (
    render_verification(["12 / 3 = 4 is right", "4 * 5 is 20, not 25", "It builds on the wrong result of step 2"],
                        [True, False, False], False))
_LLM_FORMAT = (
    "For each step k, write a paragraph starting with \"Step k:\" that gives a short analysis of the step and ends "
    "with the sentence \"The step is correct.\" or \"The step is incorrect.\". Once a step is incorrect, every later "
    "step is incorrect too. After the last step, write the final line \"Is the answer correct (Yes/No)? X\" with X "
    "being Yes or No. Keep each analysis to one or two sentences and do not copy the step.\n\n" + LLM_FORMAT_EXAMPLE)
_LLM_VERIFY = "Below are a math problem and a student's step-by-step solution. Verify the solution step by step. "
_LLM_REFERENCE = "The expected final answer is given as a reference; still judge every step on its own. "
_LLM_CRITIQUE = (
    "Below are a math problem, a student's step-by-step solution and a step-by-step verification of that solution. "
    "Critique the verification: for every step, say whether its verdict is right, point out any step it misjudged "
    "and any error it missed, and say whether its final Yes/No verdict is right. Do not write a new verification.")
_LLM_MERGE = (
    "Below are a math problem, a student's step-by-step solution, a step-by-step verification of that solution and "
    "a critique of the verification. Merge the verification and the critique into one improved verification. ")


def _check_style(style: str) -> None:
  if style not in STYLES:
    raise ValueError(f"style={style!r}: expected one of {', '.join(STYLES)}")


def _solution_block(steps: Sequence[str], answer: str | int | None) -> str:
  lines = [f"Step {k}: {str(s).strip()}" for k, s in enumerate(steps, 1)]
  if answer is not None:
    lines.append(f"Answer: {answer}")
  return "\n".join(lines)


def _prompt(style: str, instructions: str, problem: str, sections: list[tuple[str, str]], tail: str) -> str:
  """`Problem: ...`, then `Header:\nbody` sections, then `tail`; "llm" adds instructions and blank lines."""
  if style == "world":
    return f"Problem: {problem.strip()}\n" + "".join(f"{h}:\n{b}\n" for h, b in sections) + tail + "\n"
  return (f"{instructions}\n\nProblem: {problem.strip()}\n\n" + "".join(f"{h}:\n{b}\n\n" for h, b in sections)
          + tail + "\n")


def verifier_prompt(problem: str, steps: Sequence[str], reference: str | int | None = None, *,
                    answer: str | int | None = None, style: str = "world") -> str:
  """The verifier / PRM / PRM-CoT input: problem, numbered student steps, "Let's verify step by step.".

  Args:
    problem: the problem text.
    steps: the solution's steps without the "Step k:" prefix (added here, k 1-based).
    reference: the expected answer; when given, an "Expected answer: X" line is added (reference-guided baseline).
    answer: the solution's own final answer; when given, an "Answer: X" line follows the steps.
    style: "world" (only `arith.WORDS` and numbers) or "llm" (adds format instructions).

  Returns:
    The prompt, ending in a newline, e.g. (world)
    "Problem: ...\\nStudent Solution:\\nStep 1: ...\\nAnswer: 36\\nExpected answer: 36\\nLet's verify step by step.\\n".
  """
  _check_style(style)
  tail = "Let's verify step by step."
  instructions = _LLM_VERIFY + _LLM_FORMAT
  if reference is not None:
    instructions = _LLM_VERIFY + _LLM_REFERENCE + _LLM_FORMAT
    tail = f"Expected answer: {reference}" + ("\n" if style == "world" else "\n\n") + tail
  return _prompt(style, instructions, problem, [("Student Solution", _solution_block(steps, answer))], tail)


def orm_prompt(problem: str, steps: Sequence[str], *, answer: str | int | None = None, style: str = "world") -> str:
  """The ORM input: "Problem: ...\\nSolution:\\nStep 1: ...\\nIs the answer correct (Yes/No)?\\n" (target Yes/No).

  The spec's ORM input carries no instructions, so "llm" differs only by blank lines between the parts.
  """
  _check_style(style)
  sol = _solution_block(steps, answer)
  if style == "world":
    return f"Problem: {problem.strip()}\nSolution:\n{sol}\n{FINAL_QUESTION}\n"
  return f"Problem: {problem.strip()}\n\nSolution:\n{sol}\n\n{FINAL_QUESTION}\n"


def critique_prompt(problem: str, steps: Sequence[str], verification: str, *, answer: str | int | None = None,
                    style: str = "world") -> str:
  """Meta-critique, round 1: problem, student steps and one verification, ending in "Critique:".

  World: "Problem: ...\\nStudent Solution:\\n...\\nVerification:\\n<verification>\\nCritique:\\n".
  """
  _check_style(style)
  sections = [("Student Solution", _solution_block(steps, answer)), ("Verification", verification.strip())]
  return _prompt(style, _LLM_CRITIQUE, problem, sections, "Critique:")


def merge_prompt(problem: str, steps: Sequence[str], verification: str, critique: str, *,
                 answer: str | int | None = None, style: str = "world") -> str:
  """Meta-critique, round 2: merge a verification and its critique into one verification in the verifier format.

  World: "Problem: ...\\nStudent Solution:\\n...\\nVerification:\\n<v>\\nCritique:\\n<c>\\nLet's verify step by
  step.\\n"; the output is read with `parse_verification` like any verification.
  """
  _check_style(style)
  sections = [("Student Solution", _solution_block(steps, answer)), ("Verification", verification.strip()),
              ("Critique", critique.strip())]
  return _prompt(style, _LLM_MERGE + _LLM_FORMAT, problem, sections, "Let's verify step by step.")


# ---- parsing -----------------------------------------------------------------------------------------------------

# Parse statuses, most severe first; a text with several problems gets the first one (its reason lists all).
STATUSES = ("ok", "unparseable", "duplicate_step", "step_order", "missing_step", "missing_verdict",
            "conflicting_final", "missing_final", "missing_steps", "step_count_mismatch")


@dataclasses.dataclass(frozen=True)
class Verification:
  """One parsed verification.

  Attributes:
    steps: per-step verdicts as written (True = correct; not propagated), or None when no complete, well-numbered
      list of step verdicts could be read (also for the ORM format).
    final: the final verdict (True = "Yes", the answer is correct), or None when not readable.
    status: one of `STATUSES`; "ok" only when everything expected was read.
    reason: human-readable account of what was read or what was missing.
  """

  steps: tuple[bool, ...] | None
  final: bool | None
  status: str
  reason: str

  @property
  def ok(self) -> bool:
    return self.status == "ok"


_FINAL_RE = re.compile(
    r"is\s+the\s+(?:final\s+)?answer\s+correct\s*(?:\(\s*yes\s*(?:/|or)\s*no\s*\))?\s*\??\s*[:\-]?\s*(yes|no)\b",
    re.I)
# A step header must open a line: "Step 2" inside an analysis ("as in Step 2, ...") is not a header.
_HEADER_RE = re.compile(r"^[ \t]*step[ \t]*(\d+)\b[ \t]*[:.)\-]?", re.I | re.M)
_BARE_RE = re.compile(r"\s*(yes|no)[ \t]*[.!]?[ \t]*(?:\n|$)", re.I)
# Verdict words; a "not" / "n't" up to two words before flips them ("not quite correct", "isn't correct").
_WORD = r"(?P<w>incorrect|correct|wrong|erroneous|right|invalid|valid)"
_NEG = r"(?P<neg>\bnot\s+(?:\w+\s+){0,2}|n't\s+(?:\w+\s+){0,2})?"
_EXPLICIT_RES = (
    # "The step is (therefore) incorrect", "This step is not correct", "The step isn't right".
    re.compile(r"\b(?:the|this)\s+step\s+(?:is|was)(?:\s+(?:therefore|thus|hence|also))?\s*" + _NEG
               + r"\b" + _WORD + r"\b", re.I),
    # "Verdict: Incorrect", "Judgement - correct".
    re.compile(r"\b(?:verdict|judgement|judgment|conclusion|assessment|label)\s*[:\-]\s*" + _NEG + r"\b" + _WORD
               + r"\b", re.I),
    # PRM form: the verdict right after the header, "Step 2: Incorrect", "Step 2 is correct".
    re.compile(r"^\s*[:.\-)]?\s*(?:is\s+)?" + _NEG + r"\b" + _WORD + r"\b", re.I),
)
# Fallback when no explicit verdict: any verdict word; "right"/"valid" are too common in prose to count here.
_LOOSE_RE = re.compile(_NEG + r"\b(?P<w>incorrect|correct|wrong|erroneous)\b", re.I)
_POSITIVE = {"correct", "right", "valid"}


def _normalize(text: str) -> str:
  """Strips what models wrap verdicts in: CRLF, thinking, \\boxed{}/\\text{}, $, markdown emphasis/headers/bullets."""
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  end = text.lower().rfind("</think>")
  if end >= 0:  # a thinking model's drafts would otherwise read as duplicate steps
    text = text[end + len("</think>"):]
  for _ in range(3):  # innermost first: \boxed{\text{No}}
    text = re.sub(r"\\(?:boxed|text|textbf|mathrm)\s*\{\s*([^{}]*?)\s*\}", r"\1", text)
  text = text.replace("$", "")
  text = re.sub(r"\*\*|__", "", text)
  # *italic* / _italic_ only when the marks hug words, so arithmetic "3 * 4" keeps its operator.
  text = re.sub(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])", r"\1", text)
  text = re.sub(r"(?<!\w)_(?=\S)([^_\n]+?)(?<=\S)_(?!\w)", r"\1", text)
  text = re.sub(r"^[ \t]*(?:#+|>|[-+*](?=[ \t]))[ \t]*", "", text, flags=re.M)
  return text


def _polarity(m: re.Match) -> bool:
  """True = correct: a positive word without negation, or a negated negative one ("not wrong")."""
  return (m.group("w").lower() in _POSITIVE) != bool(m.group("neg"))


def _block_verdict(block: str) -> tuple[bool | None, str]:
  """The verdict of one step's text: the last explicit verdict, else the agreeing loose verdict words."""
  explicit = [m for r in _EXPLICIT_RES for m in r.finditer(block)]
  if explicit:
    return _polarity(max(explicit, key=lambda m: m.start())), ""
  loose = {_polarity(m) for m in _LOOSE_RE.finditer(block)}
  if len(loose) == 1:
    return loose.pop(), ""
  return None, "conflicting verdict words" if loose else "no verdict"


def _snippet(text: str, n: int = 60) -> str:
  text = " ".join(text.split())
  return repr(text if len(text) <= n else text[:n] + "...")


def _numbering_problem(numbers: list[int]) -> tuple[str, str] | None:
  if numbers == list(range(1, len(numbers) + 1)):
    return None
  read = ", ".join(map(str, numbers))
  dup = sorted({n for n in numbers if numbers.count(n) > 1})
  if dup:
    return "duplicate_step", f"step {', '.join(map(str, dup))} listed more than once (step numbers read: {read})"
  if numbers != sorted(numbers):
    return "step_order", f"steps out of order (step numbers read: {read})"
  missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
  what = f"missing step number(s) {', '.join(map(str, missing))}" if missing else "steps do not start at 1"
  return "missing_step", f"{what} (step numbers read: {read})"


def parse_verification(text: str, num_steps: int | None = None) -> Verification:
  """Reads a verifier / PRM-CoT, PRM or ORM output.

  Rules: a step is a line opening with `Step k` (any case/spacing, markdown allowed); its verdict is the last explicit
  verdict in its text ("The step is [not] correct|incorrect|wrong", "Verdict: X", or a verdict word right after the
  header as in the PRM format), else the verdict words in it if they all agree, else it is unreadable. The final
  verdict is the answer of `Is the answer correct (Yes/No)? X` (X may be bold or boxed); text after it is ignored and
  all such lines must agree. A text that is only `Yes` / `No` on its first line is the ORM format (steps None). Text
  inside a thinking block (before `</think>`) is ignored. "incorrect", "not correct", "wrong" never read as correct.

  Args:
    text: the raw or tokenizer-decoded output.
    num_steps: the solution's step count, when known; a different count gives status "step_count_mismatch" (steps
      still returned as read) and no steps at all gives "missing_steps".

  Returns:
    A `Verification`; anything not read is None, never assumed correct, and `status` says why it is not "ok".
  """
  t = _normalize(text)
  if not t.strip():
    return Verification(None, None, "unparseable", "empty output")
  problems: list[tuple[str, str]] = []
  finals = list(_FINAL_RE.finditer(t))
  final = None
  if finals:
    answers = {m.group(1).lower() == "yes" for m in finals}
    if len(answers) > 1:
      problems.append(("conflicting_final", f"the final line is given {len(finals)} times with different answers"))
    else:
      final = answers.pop()
  region = t[:finals[0].start()] if finals else t
  headers = list(_HEADER_RE.finditer(region))

  if not headers:
    if not finals:
      m = _BARE_RE.match(t)
      if m:
        if num_steps is not None:
          return Verification(None, m.group(1).lower() == "yes", "missing_steps",
                              f"bare Yes/No (ORM format), no 'Step k:' lines (expected {num_steps})")
        return Verification(None, m.group(1).lower() == "yes", "ok", "bare Yes/No (ORM format)")
      return Verification(None, None, "unparseable",
                          f"no 'Step k:' lines, no final '{FINAL_QUESTION} X' line and no bare Yes/No in {_snippet(t)}")
    if num_steps is not None:
      problems.append(("missing_steps", f"only the final verdict was read, no 'Step k:' lines (expected {num_steps})"))
    if not problems:
      return Verification(None, final, "ok", "final verdict only, no step verdicts")
    status = min(problems, key=lambda p: STATUSES.index(p[0]))[0]
    return Verification(None, final, status, "; ".join(r for _, r in problems))

  numbers = [int(h.group(1)) for h in headers]
  bounds = [h.end() for h in headers]
  blocks = [region[b:e] for b, e in zip(bounds, [h.start() for h in headers[1:]] + [len(region)])]
  verdicts, unread = [], []
  for n, block in zip(numbers, blocks):
    v, why = _block_verdict(block)
    verdicts.append(v)
    if v is None:
      unread.append(f"step {n}: {why} in {_snippet(block)}")
  numbering = _numbering_problem(numbers)
  if numbering:
    problems.append(numbering)
  if unread:
    problems.append(("missing_verdict", "; ".join(unread)))
  steps = None if numbering or unread else tuple(verdicts)
  if not finals:
    problems.append(("missing_final", f"no final '{FINAL_QUESTION} Yes|No' line"))
  if steps is not None and num_steps is not None and len(steps) != num_steps:
    problems.append(("step_count_mismatch", f"read {len(steps)} step verdicts, the solution has {num_steps} steps"))
  if not problems:
    return Verification(steps, final, "ok", f"{len(steps)} step verdicts and the final verdict")
  status = min(problems, key=lambda p: STATUSES.index(p[0]))[0]
  return Verification(steps, final, status, "; ".join(r for _, r in problems))


def first_error_index(v: Verification) -> int | None:
  """Predicted first-error index: 0-based index of the first step read as incorrect, -1 if none, None if no steps."""
  if v.steps is None:
    return None
  return next((i for i, ok in enumerate(v.steps) if not ok), -1)


# ---- self-consistency --------------------------------------------------------------------------------------------

TIE_RULES = ("incorrect", "correct", "first")
MISMATCH_RULES = ("drop", "pad")


@dataclasses.dataclass(frozen=True)
class ConsensusConfig:
  """How self-consistency handles what the paper leaves unspecified.

  Attributes:
    tie: an even split (possible when N is even). "incorrect" (default, conservative: a disputed step or answer is
      not rewarded), "correct", or "first" = the verdict of the first parseable verification (what the generation
      order happens to give; a random but reproducible choice).
    mismatch: verifications whose step count differs from the solution's. "drop" (default) = they take no part in
      step-level voting; "pad" = extra steps are cut off and missing steps count as incorrect votes (a verifier that
      stopped early did not vouch for the remaining steps).
    propagate: apply `propagate` to the step consensus (default True, as the spec's verifier marks every step after
      the first error incorrect; per-step majorities need not be monotone on their own).
  """

  tie: str = "incorrect"
  mismatch: str = "drop"
  propagate: bool = True

  def __post_init__(self):
    if self.tie not in TIE_RULES:
      raise ValueError(f"ConsensusConfig.tie={self.tie!r}: expected one of {', '.join(TIE_RULES)}")
    if self.mismatch not in MISMATCH_RULES:
      raise ValueError(f"ConsensusConfig.mismatch={self.mismatch!r}: expected one of {', '.join(MISMATCH_RULES)}")
    if not isinstance(self.propagate, bool):
      raise ValueError(f"ConsensusConfig.propagate={self.propagate!r}: expected True or False")


@dataclasses.dataclass(frozen=True)
class Consensus:
  """Result of self-consistency over N verifications of one solution.

  Attributes:
    steps: per-step consensus verdicts (True = correct), None at outcome level or when nobody voted.
    final: consensus final verdict (True = "Yes"), None when nobody voted.
    votes: how many verifications took part in the vote.
    unparseable: how many had nothing usable (no final verdict at outcome level, no step verdicts at step level).
    mismatched: how many had a step count different from the solution's (step level; dropped or padded).
    chosen: index into the input list of the rationale kept as the training target, None when nobody voted.
    exact: whether `chosen` agrees with the consensus exactly.
  """

  steps: tuple[bool, ...] | None
  final: bool | None
  votes: int
  unparseable: int
  mismatched: int
  chosen: int | None
  exact: bool


def _majority(ballots: list[bool], tie: str, first: bool) -> bool:
  yes = sum(ballots)
  no = len(ballots) - yes
  if yes != no:
    return yes > no
  return {"incorrect": False, "correct": True, "first": first}[tie]


def outcome_consensus(vs: Sequence[Verification], cfg: ConsensusConfig = ConsensusConfig()) -> Consensus:
  """Outcome-level self-consistency: y* = majority of the final Yes/No verdicts that were read (ties by `cfg.tie`).

  The chosen rationale is the first verification whose final verdict equals y*, preferring one with status "ok" (a
  training target should be well-formed) over one with, say, unreadable steps. Always exact when anyone voted.
  """
  voters = [i for i, v in enumerate(vs) if v.final is not None]
  if not voters:
    return Consensus(None, None, 0, len(vs), 0, None, False)
  final = _majority([vs[i].final for i in voters], cfg.tie, vs[voters[0]].final)
  agree = [i for i in voters if vs[i].final == final]
  chosen = next((i for i in agree if vs[i].ok), agree[0])
  return Consensus(None, final, len(voters), len(vs) - len(voters), 0, chosen, True)


def step_consensus(vs: Sequence[Verification], num_steps: int,
                   cfg: ConsensusConfig = ConsensusConfig()) -> Consensus:
  """Step-level self-consistency: v_i* = majority over the step-i verdicts (ties by `cfg.tie`); final = all(v*).

  Verifications without step verdicts are unparseable; ones with a step count != `num_steps` are mismatched and
  dropped or padded per `cfg.mismatch`. With `cfg.propagate`, v* is propagated before the final verdict is taken.
  The chosen rationale is the first voter with `num_steps` steps whose steps and final verdict equal the consensus
  (exact); if none, the voter with the fewest steps disagreeing with v* (ties -> lowest index; exact=False).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps}: a solution has at least one step")
  voters: list[tuple[int, tuple[bool, ...]]] = []
  unparseable = mismatched = 0
  for i, v in enumerate(vs):
    if v.steps is None:
      unparseable += 1
      continue
    s = tuple(bool(x) for x in v.steps)
    if len(s) != num_steps:
      mismatched += 1
      if cfg.mismatch == "drop":
        continue
      s = s[:num_steps] + (False,) * (num_steps - len(s))
    voters.append((i, s))
  if not voters:
    return Consensus(None, None, 0, unparseable, mismatched, None, False)
  steps = [_majority([s[j] for _, s in voters], cfg.tie, voters[0][1][j]) for j in range(num_steps)]
  if cfg.propagate:
    steps = propagate(steps)
  steps = tuple(steps)
  final = all(steps)
  for i, s in voters:
    if len(vs[i].steps) == num_steps and s == steps and vs[i].final == final:
      return Consensus(steps, final, len(voters), unparseable, mismatched, i, True)
  chosen = min(voters, key=lambda p: (sum(a != b for a, b in zip(p[1], steps)), p[0]))[0]
  return Consensus(steps, final, len(voters), unparseable, mismatched, chosen, False)


# ---- ground-truth metrics ----------------------------------------------------------------------------------------


def _prf(tp: int, fp: int, fn: int) -> dict:
  """Precision tp/(tp+fp), recall tp/(tp+fn), F1 = 2PR/(P+R); each 0.0 when its denominator is 0."""
  p = tp / (tp + fp) if tp + fp else 0.0
  r = tp / (tp + fn) if tp + fn else 0.0
  return {"f1": 2 * p * r / (p + r) if p + r else 0.0, "precision": p, "recall": r}


def step_f1(pred: Sequence[Sequence[bool] | None], gold: Sequence[Sequence[bool]]) -> dict:
  """Detection of incorrect steps over all steps of all solutions (positive class = an incorrect step).

  Args:
    pred: per solution, predicted step verdicts (True = correct) or None when unparseable.
    gold: per solution, true step labels (e.g. `arith.process_labels`).

  Returns:
    {"f1", "precision", "recall", "accuracy", "tp", "fp", "fn", "tn", "steps", "unparseable", "mismatched",
    "no_prediction"}. A gold step without a prediction (all steps of an unparseable solution, the tail of a too
    short one) is a miss (fn) if it is incorrect and is never counted as right in accuracy = (tp + tn) / steps;
    predictions past the gold length are ignored. "mismatched" counts solutions whose predicted length differs.
  """
  if len(pred) != len(gold):
    raise ValueError(f"got {len(pred)} predictions for {len(gold)} gold solutions")
  tp = fp = fn = tn = unparseable = mismatched = no_prediction = 0
  for p, g in zip(pred, gold):
    if p is None:
      unparseable += 1
      p = ()
    elif len(p) != len(g):
      mismatched += 1
    for j, good in enumerate(g):
      if j >= len(p):
        no_prediction += 1
        fn += not good
      elif not good:
        tp += not p[j]
        fn += bool(p[j])
      else:
        fp += not p[j]
        tn += bool(p[j])
  steps = sum(len(g) for g in gold)
  return {**_prf(tp, fp, fn), "accuracy": (tp + tn) / steps if steps else 0.0, "tp": tp, "fp": fp, "fn": fn,
          "tn": tn, "steps": steps, "unparseable": unparseable, "mismatched": mismatched,
          "no_prediction": no_prediction}


def outcome_f1(pred: Sequence[bool | None], gold: Sequence[bool]) -> dict:
  """Detection of incorrect final answers (positive class = "No").

  Args:
    pred: per solution, the predicted final verdict (True = correct) or None when unparseable.
    gold: per solution, whether its answer is correct.

  Returns:
    {"f1", "precision", "recall", "accuracy", "tp", "fp", "fn", "tn", "n", "unparseable"}; a None prediction is a
    miss (fn) when the answer is wrong and never counts as right in accuracy = (tp + tn) / n.
  """
  if len(pred) != len(gold):
    raise ValueError(f"got {len(pred)} predictions for {len(gold)} gold solutions")
  tp = fp = fn = tn = unparseable = 0
  for p, good in zip(pred, gold):
    if p is None:
      unparseable += 1
      fn += not good
    elif not good:
      tp += not p
      fn += bool(p)
    else:
      fp += not p
      tn += bool(p)
  n = len(gold)
  return {**_prf(tp, fp, fn), "accuracy": (tp + tn) / n if n else 0.0, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
          "n": n, "unparseable": unparseable}
