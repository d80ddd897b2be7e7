"""Real math data: GSM8K, MATH / MATH-500, and the Qwen2.5-Math eval sets as (problem, gold answer) records.

A source is a local `.jsonl` file or a Hugging Face dataset name (`name` or `name:config`, read through `datasets`).
The schema is recognised per record:
  - question + answer with a `#### X` line (GSM8K): gold = X without thousands separators (a multi-line answer
    with no such line is a worked solution without its final answer, and is reported);
  - problem/question + answer (MATH-500, AIME, AMC): gold = answer;
  - question + final_answer (OlympiadBench, a list written as a string): gold = the answers joined by ", ";
  - problem + solution (MATH, Minerva): gold = the last \\boxed{...} of the solution.
A record with no problem text or no readable gold answer is reported (line and reason) and left out; it is never
silently dropped. A source with no usable record is an error naming it.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

from sparkjax.data.host_grading import last_boxed
from sparkjax.data.jsonl import iter_jsonl


@dataclasses.dataclass(frozen=True)
class MathRecord:
  problem: str
  answer: str  # gold answer text, graded with math-verify
  id: str  # the record's own id if it has one, else its line / row number


@dataclasses.dataclass
class MathData:
  source: str
  records: list[MathRecord]
  bad: list[tuple[str, str]]  # (line or row, reason) of each record left out

  def report(self) -> str:
    if not self.bad:
      return f"{self.source}: {len(self.records)} records"
    shown = "; ".join(f"{where}: {why}" for where, why in self.bad[:3])
    return (f"{self.source}: {len(self.records)} records, {len(self.bad)} left out ({shown}"
            f"{'; ...' if len(self.bad) > 3 else ''})")


def _text(rec: dict, *keys: str) -> str | None:
  for k in keys:
    v = rec.get(k)
    if isinstance(v, str) and v.strip() and v.strip() != "None":
      return v.strip()
  return None


def _gold(rec: dict) -> tuple[str | None, str]:
  """(gold answer or None, reason when None)."""
  answer = rec.get("answer")
  if isinstance(answer, (int, float)) and not isinstance(answer, bool):
    return str(answer), ""
  if isinstance(answer, str) and "####" in answer:
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return (gold, "") if gold else (None, "empty '####' answer line")
  if isinstance(answer, str) and ("\n" in answer.strip() or "<<" in answer):
    # A worked GSM8K solution whose final '#### X' line is missing: the whole text is no gold answer.
    return None, "'answer' is a worked solution with no final '#### X' line"
  if isinstance(answer, str) and answer.strip():
    return answer.strip(), ""
  final = rec.get("final_answer")
  if final is not None:
    try:
      items = ast.literal_eval(final) if isinstance(final, str) else final
    except (ValueError, SyntaxError):
      items = [final]
    items = [str(x).strip() for x in (items if isinstance(items, (list, tuple)) else [items]) if str(x).strip()]
    return (", ".join(items), "") if items else (None, "empty 'final_answer'")
  solution = rec.get("solution")
  if isinstance(solution, str):
    boxed = last_boxed(solution)
    return (boxed, "") if boxed else (None, "'solution' has no \\boxed{} answer")
  return None, "no 'answer', 'final_answer' or 'solution' field"


def parse_record(rec: dict, where: str) -> tuple[MathRecord | None, str]:
  """(record, "") or (None, reason) for one raw row."""
  problem = _text(rec, "problem", "question")
  if problem is None:
    return None, "no 'problem' or 'question' text"
  context = _text(rec, "context")
  if context:
    problem = f"{context}\n{problem}"
  gold, why = _gold(rec)
  if gold is None:
    return None, why
  rid = rec.get("id", rec.get("unique_id", rec.get("idx", where)))
  return MathRecord(problem, gold, str(rid)), ""


def _rows(source: str, split: str, limit: int | None):
  path = Path(source)
  if path.suffix == ".jsonl" or path.exists():
    if path.is_dir():
      raise ValueError(f"data source {source!r} is a directory; give a .jsonl file")
    for i, rec in enumerate(iter_jsonl(path, limit=limit), 1):
      yield f"{path.name}:{i}", rec
    return
  import datasets

  name, _, config = source.partition(":")
  try:
    ds = datasets.load_dataset(name, config or None, split=split)
  except Exception as e:  # the hub client raises many types; say which source failed and why
    raise FileNotFoundError(f"data source {source!r}: not a local file and not loadable from the Hugging Face hub "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  for i, rec in enumerate(ds):
    if limit is not None and i >= limit:
      return
    yield f"{name}[{split}][{i}]", dict(rec)


def load_math(source: str | os.PathLike, split: str = "train", limit: int | None = None) -> MathData:
  """Reads up to `limit` rows (a prefix) of a local .jsonl or a HF dataset into records; see the module docstring."""
  source = str(source)
  records, bad = [], []
  for where, rec in _rows(source, split, limit):
    r, why = parse_record(rec, where)
    if r is None:
      bad.append((where, why))
    else:
      records.append(r)
  if not records:
    raise ValueError(f"data source {source!r}: no usable record (expected problem/question text and an answer); "
                     + (f"first problem: {bad[0][0]}: {bad[0][1]}" if bad else "it is empty"))
  return MathData(source, records, bad)


def prompt_dataset(prompts: list[list[int]], length: int, pad_id: int, seed: int, global_batch: int,
                   process_index: int = 0, process_count: int = 1):
  """An endless grain stream of this process's rows of each global batch of prompts, reshuffled every epoch.

  Rows: prompt [length] int32 (left-padded), prompt_mask [length] bool, target = the prompt's index in `prompts`
  (the grader looks its gold answer up by it). Process p holds rows [p * b, (p + 1) * b) of every global batch, so
  the global batch is the same for any number of processes; the iterator's state is checkpointable.
  """
  import grain
  import numpy as np

  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} does not divide over {process_count} processes")
  n, local = len(prompts), global_batch // process_count
  order: dict[int, np.ndarray] = {}

  def row(j):
    g = (j // local) * global_batch + process_index * local + j % local
    epoch = g // n
    if epoch not in order:
      order.clear()  # one epoch's permutation at a time
      order[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    i = int(order[epoch][g % n])
    p = prompts[i]
    tokens = np.full(length, pad_id, np.int32)
    mask = np.zeros(length, bool)
    tokens[length - len(p):], mask[length - len(p):] = p, True
    return dict(prompt=tokens, prompt_mask=mask, target=np.int32(i))

  ds = grain.MapDataset.range(0, 2**62).map(lambda j: row(int(j)))
  return ds.batch(local, drop_remainder=True).to_iter_dataset()
