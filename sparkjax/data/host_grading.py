"""Host-side answer grading (math-verify) in worker processes with a timeout per item.

A prediction that makes the grader hang costs only that item: after `timeout` seconds it scores 0, is counted in
`timeouts`, the stuck worker pool is replaced and the remaining items are graded. Grader exceptions are counted in
`errors`. Neither is ever silent: both counts are returned with the rewards.
"""

from __future__ import annotations

import multiprocessing as mp
import re
from typing import NamedTuple, Sequence

import numpy as np


def math_verify_grade(pred: str, gold: str) -> float:
  """1.0 iff math-verify finds the gold answer equal to the prediction's final answer (gold parsed first)."""
  from math_verify import parse, verify

  return float(verify(parse(gold), parse(pred)))


def last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} (braces matched), or None."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  depth, i = 0, start + len("\\boxed{") - 1
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i + 1:j].strip()
  return None


def world_grade(pred: str, gold: str) -> float:
  """The arithmetic world's answer check on decoded text: one answer marker, at the end, equal to gold."""
  m = re.search(r"Answer\s*:\s*(-?\d+)\s*<eos>\s*$", pred)
  if m is None or pred.count("Answer") != 1:
    m = re.search(r"<answer>\s*\\boxed\{\s*(-?\d+)\s*\}\s*</answer>\s*<eos>\s*$", pred)
    if m is None or pred.count("<answer>") != 1 or pred.count("\\boxed{") != 1:
      return 0.0
  return float(int(m.group(1)) == int(gold))


GRADERS = {"math_verify": math_verify_grade, "world": world_grade}




class Graded(NamedTuple):
  rewards: np.ndarray  # [N] float32
  timeouts: int
  errors: int


class GraderPool:
  """Grades (prediction, gold) pairs in `workers` processes.

  grader: a name in GRADERS or a module-level function (pred, gold) -> float (it is pickled by reference).
  """

  def __init__(self, grader="math_verify", workers: int = 2, timeout: float = 10.0):
    if isinstance(grader, str):
      if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; known: {', '.join(GRADERS)}")
      grader = GRADERS[grader]
    self.fn, self.workers, self.timeout = grader, workers, timeout
    self._ctx = mp.get_context("spawn")
    self._pool = None

  def _get_pool(self):
    if self._pool is None:
      self._pool = self._ctx.Pool(self.workers)
    return self._pool

  def grade(self, preds: Sequence[str], golds: Sequence[str]) -> Graded:
    if len(preds) != len(golds):
      raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
    results: dict[int, float] = {}
    timeouts = errors = 0
    pending = list(range(len(preds)))
    while pending:
      pool = self._get_pool()
      jobs = {i: pool.apply_async(self.fn, (preds[i], golds[i])) for i in pending}
      hung = None
      for i in pending:
        try:
          results[i] = float(jobs[i].get(timeout=self.timeout))
        except mp.TimeoutError:
          hung = i
          break
        except Exception:  # a grader crash on one item scores that item 0 and is counted
          results[i] = 0.0
          errors += 1
      if hung is None:
        break
      results[hung] = 0.0
      timeouts += 1
      for j in pending:  # keep what finished before replacing the stuck pool
        if j not in results and jobs[j].ready():
          try:
            results[j] = float(jobs[j].get(0))
          except Exception:
            results[j] = 0.0
            errors += 1
      self.close()
      pending = [i for i in pending if i not in results]
    return Graded(np.asarray([results[i] for i in range(len(preds))], np.float32), timeouts, errors)

  def close(self):
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()
      self._pool = None
