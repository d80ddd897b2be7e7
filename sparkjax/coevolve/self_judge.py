"""Test-time self-judge and reflect (shared/papers/spark-coevolve.md, "Test time"): answer greedily -> judge the
answer with the pointwise prompt -> if the verdict is not "Yes", reflect (the reflection prompt with that answer)
and take the new answer -> at most `rounds` reflections; after the last one its answer is returned unjudged.

The loop is batched over questions (every round one greedy generation call for the questions still open), works on
any `text_generation.TextModel`, and reports what the paper leaves out: accuracy with and without the loop and the
judge's own accuracy on the first answers, since a weak judge lowers accuracy (49.1 -> 39.9 in the paper).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from sparkjax.coevolve import judge_format as jf


@dataclasses.dataclass
class Trace:
  """One question's way through the loop."""

  answers: list[str]  # the first answer, then each reflection's
  verdicts: list[str | None]  # the judge's normalised verdict on each judged answer (None: unreadable)

  @property
  def final(self) -> str:
    return self.answers[-1]


def self_judge(generate: Callable[[list[str]], list[str]], questions: Sequence[str], answer_prompt: Callable[[str], str],
               rounds: int = 2, seed: int = 0) -> list[Trace]:
  """The loop over `questions`. `generate(prompts) -> texts` is a greedy generator (e.g. `greedy_generator`);
  `answer_prompt(question)` the first prompt. Judge and reflection prompts are drawn from `judge_format`'s phrasings
  with rng `seed` (fixed, so an evaluation is repeatable)."""
  if rounds < 0:
    raise ValueError(f"rounds={rounds}: expected >= 0 reflections")
  rng = np.random.default_rng(seed)
  traces = [Trace([a], []) for a in generate([answer_prompt(q) for q in questions])]
  open_ = list(range(len(questions)))
  for _ in range(rounds):
    if not open_:
      break
    judged = generate([jf.render("pointwise", rng, questions[i], traces[i].final) for i in open_])
    still = []
    for i, text in zip(open_, judged):
      p = jf.parse_boxed(text)
      verdict = jf.normalize_verdict(p.value) if p.status == "ok" else None
      traces[i].verdicts.append(verdict)
      if verdict != "Yes":
        still.append(i)
    if not still:
      break
    new = generate([jf.render("reflection", rng, questions[i], traces[i].final) for i in still])
    for i, text in zip(still, new):
      traces[i].answers.append(text)
    open_ = still
  return traces


def score(traces: Sequence[Trace], correct: Callable[[str, int], bool]) -> dict:
  """Accuracy without the loop (first answers) and with it (final answers), and the judge on the first answers:
  accuracy of its first verdict against `correct(answer, question index)`, false-positive rate (says Yes to a wrong
  answer, among wrong answers), unreadable verdicts; plus how many answers each loop changed for better or worse."""
  first = [correct(t.answers[0], i) for i, t in enumerate(traces)]
  final = [correct(t.final, i) for i, t in enumerate(traces)]
  judged = [(t.verdicts[0], ok) for t, ok in zip(traces, first) if t.verdicts]
  wrong = [v for v, ok in judged if not ok]
  n = max(len(traces), 1)
  return dict(questions=len(traces), accuracy_without=sum(first) / n, accuracy_with=sum(final) / n,
              judge_accuracy=(sum((v == "Yes") == ok for v, ok in judged) / len(judged)) if judged else None,
              judge_false_positive=(sum(v == "Yes" for v in wrong) / len(wrong)) if wrong else None,
              judge_unreadable=sum(v is None for v, _ in judged),
              fixed=sum(f and not a for a, f in zip(first, final)), broken=sum(a and not f for a, f in zip(first, final)),
              reflections=sum(len(t.answers) - 1 for t in traces))


def greedy_generator(model, max_new_tokens: int, key=None) -> Callable[[list[str]], list[str]]:
  """`generate(prompts) -> texts` of a `text_generation.TextModel`, greedy (T = 0)."""
  key = jax.random.key(0) if key is None else key
  return lambda prompts: [row[0] for row in model.sample_texts(prompts, 1, max_new_tokens, 0.0, key)] if prompts else []


def main(argv=None) -> int:
  """`python -m sparkjax.coevolve.self_judge --model DIR --data FILE.jsonl --out DIR`: the loop on math problems
  with a Hugging Face model (its chat template), graded by math-verify; writes results.json (the scores) and
  traces.jsonl (every answer and verdict) into --out and prints the scores."""
  import argparse
  import json
  import sys

  from sparkjax import cli, text_generation
  from sparkjax.config_args import QWEN_MATH_INSTRUCTION
  from sparkjax.data import math as math_data
  from sparkjax.data.host_grading import GraderPool
  from sparkjax.models import hf

  ap = argparse.ArgumentParser(prog="python -m sparkjax.coevolve.self_judge", description=main.__doc__.split("\n")[0])
  ap.add_argument("--model", required=True, help="a Hugging Face model directory")
  ap.add_argument("--data", required=True, help="math problems: a .jsonl file (GSM8K, MATH) or a HF dataset name")
  ap.add_argument("--split", default="test")
  ap.add_argument("--limit", type=int, default=50, help="the first N problems")
  ap.add_argument("--rounds", type=int, default=2, help="reflections at most")
  ap.add_argument("--max_new_tokens", type=int, default=512)
  ap.add_argument("--rows", type=int, default=16, help="prompts per sampler call")
  ap.add_argument("--out", required=True, help="directory for results.json and traces.jsonl")
  args = ap.parse_args(argv)
  try:
    out = cli.check_output_dir(args.out, "--out")
    cfg = hf.load_config(args.model)
    data = math_data.load_math(args.data, split=args.split, limit=args.limit)
    if not data.records:
      raise ValueError(f"{args.data}: no readable problem ({data.report()})")
    model = text_generation.TextModel.from_dir(args.model, args.rows, chat=True, cfg=cfg)
  except (ValueError, OSError) as e:
    print(f"self_judge: error: {cli.one_line(e)}", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  questions = [r.problem for r in data.records]
  traces = self_judge(greedy_generator(model, args.max_new_tokens), questions,
                      lambda q: QWEN_MATH_INSTRUCTION.format(problem=q), args.rounds)
  pool = GraderPool("math_verify", workers=2, timeout=10.0)
  try:
    golds = [r.answer for r in data.records]
    first = pool.grade([t.answers[0] for t in traces], golds).rewards
    final = pool.grade([t.final for t in traces], golds).rewards
  finally:
    pool.close()
  graded = {(i, t.answers[0]): bool(first[i]) for i, t in enumerate(traces)}
  graded |= {(i, t.final): bool(final[i]) for i, t in enumerate(traces)}
  result = score(traces, lambda answer, i: graded[(i, answer)])
  result |= dict(model=str(args.model), data=str(args.data), rounds=args.rounds, max_new_tokens=args.max_new_tokens)
  (out / "results.json").write_text(json.dumps(result, indent=2))
  with open(out / "traces.jsonl", "w") as f:
    for r, t in zip(data.records, traces):
      f.write(json.dumps(dict(id=r.id, gold=r.answer, answers=t.answers, verdicts=t.verdicts)) + "\n")
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
