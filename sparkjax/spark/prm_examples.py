"""SPARK-PRM Stage II data: Stage-I records read and checked, and encoded as training and scoring rows.

Four PRM formats (spec, Stage II):

  "orm"      orm_prompt      -> "Yes" | "No"                                   (generative, SFT)
  "prm"      verifier_prompt -> "Step k: Correct|Incorrect" lines + final line   (generative, SFT)
  "prm_cot"  verifier_prompt -> the kept rationale (verifier format)             (generative, SFT)
  "disc"     problem + steps, each step followed by a separator token; p(correct) is read at each separator from
             the logits of two label tokens (like Qwen2.5-Math-PRM), trained with binary cross-entropy.

The PRMs are trained by `prm_train` and scored by `prm_scorers`.

Shapes: B rows, T tokens, P prompt tokens, S step slots (separators / verdicts).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import numpy as np

from sparkjax import sampling
from sparkjax.data.jsonl import iter_jsonl
from sparkjax.spark import verdicts as V
from sparkjax.train import sft

FORMATS = ("orm", "prm", "prm_cot", "disc")
GENERATIVE_FORMATS = ("orm", "prm", "prm_cot")


# ---- Stage-I records ---------------------------------------------------------------------------------------------

# field -> (accepted types, description). `answer` also accepts a JSON integer (world answers are numbers); bools are
# refused everywhere a number or string is expected, as JSON true/false there is a writer bug, not a value.
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str,), "a string"),
    "problem": ((str,), "a string"),
    "steps": ((list,), "a list of strings"),
    "answer": ((str, int), "a string"),
    "verdicts": ((list,), "a list of booleans"),
    "final": ((bool,), "a boolean"),
    "rationale": ((str,), "a string"),
}


def validate_record(rec: Any) -> str | None:
  """Why a Stage-I record cannot be trained on (every problem found, joined by "; "), or None when it is valid.

  A valid record has the fields of `_FIELDS` with their types, at least one step, only string steps, only boolean
  verdicts, and exactly one verdict per step.
  """
  if not isinstance(rec, dict):
    return f"expected a JSON object, got {type(rec).__name__}"
  problems = []
  for name, (types, what) in _FIELDS.items():
    if name not in rec:
      problems.append(f"missing field {name!r}")
    elif (isinstance(rec[name], bool) and bool not in types) or not isinstance(rec[name], types):
      problems.append(f"field {name!r} is {type(rec[name]).__name__}, expected {what}")
  steps, verdicts = rec.get("steps"), rec.get("verdicts")
  if isinstance(steps, list):
    if not steps:
      problems.append("no steps")
    elif not all(isinstance(s, str) for s in steps):
      problems.append("field 'steps' holds a non-string item")
  if isinstance(verdicts, list) and not all(isinstance(v, bool) for v in verdicts):
    problems.append("field 'verdicts' holds a non-boolean item")
  if isinstance(steps, list) and isinstance(verdicts, list) and len(steps) != len(verdicts):
    problems.append(f"{len(verdicts)} verdicts for {len(steps)} steps")
  checks = rec.get("step_checks")  # optional: the exact-label records' per-step checks (arith.step_checks)
  if checks is not None:
    if not isinstance(checks, list) or not all(isinstance(v, bool) for v in checks):
      problems.append("field 'step_checks' is not a list of booleans")
    elif isinstance(steps, list) and len(checks) != len(steps):
      problems.append(f"{len(checks)} step_checks for {len(steps)} steps")
  return "; ".join(problems) or None


def check_records(records: Sequence[Any]) -> tuple[list[dict], list[dict]]:
  """Splits records into (valid, bad); bad entries are {"index" (0-based position), "id", "reason"}."""
  good, bad = [], []
  for i, rec in enumerate(records):
    reason = validate_record(rec)
    if reason is None:
      good.append(rec)
    else:
      rid = rec.get("id") if isinstance(rec, dict) else None
      bad.append(dict(index=i, id=rid if isinstance(rid, str) else None, reason=reason))
  return good, bad


def load_records(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
  """Stage-I records of a .jsonl file: (valid records, bad = [{"index", "id", "reason"}]).

  Records failing `validate_record` are reported, never dropped silently and never fatal. A line that is not JSON
  at all is a damaged file, not a bad record: `iter_jsonl` raises with the file and line.
  """
  return check_records(list(iter_jsonl(path)))


# ---- generative examples -----------------------------------------------------------------------------------------


def repeat_correct(records: Sequence[dict], share: float) -> list[dict]:
  """The records with those judged all-correct repeated until they make up at least `share` of the rows.

  A record is all-correct when every entry of its own `verdicts` is True (a SPARK variant's labels, no reference).
  With c such records among n, the all-correct ones are cycled, in order, to k = max(c, ceil(share * (n - c) /
  (1 - share))) rows, so k / (k + n - c) >= share; every record appears at least once, the others exactly once and
  first. Unchanged when share is 0, no record is all-correct, or the share is already reached.

  Args:
    records: checked Stage-I records (`check_records`).
    share: the wanted share of all-correct rows, in [0, 1).
  """
  if not 0.0 <= share < 1.0:
    raise ValueError(f"share={share!r}: expected a share of rows in [0, 1)")
  good, rest = [], []
  for r in records:
    (good if all(r["verdicts"]) else rest).append(r)
  # The epsilon keeps an exact quotient exact under float rounding (0.3 * 7 / 0.7 = 3.0000000000000004 -> 3, not 4).
  k = max(len(good), int(np.ceil(share * len(rest) / (1.0 - share) - 1e-9)))
  if not good or k == len(good):
    return list(records)
  return rest + [good[i % len(good)] for i in range(k)]


def build_example(rec: dict, fmt: str, style: str = "world") -> tuple[str, str]:
  """(prompt_text, target_text) of one record in a generative format.

  "orm": orm_prompt -> render_orm(final); "prm": verifier_prompt -> render_prm(verdicts, final); "prm_cot":
  verifier_prompt -> the record's rationale. Prompts carry the record's answer ("Answer: X" after the steps).
  """
  problem, steps, answer = rec["problem"], rec["steps"], rec["answer"]
  if fmt == "orm":
    return V.orm_prompt(problem, steps, answer=answer, style=style), V.render_orm(rec["final"])
  prompt = V.verifier_prompt(problem, steps, answer=answer, style=style)
  if fmt == "prm":
    return prompt, V.render_prm(rec["verdicts"], rec["final"])
  if fmt == "prm_cot":
    return prompt, rec["rationale"].strip()
  raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(GENERATIVE_FORMATS)}")


def build_prompt(rec: dict, fmt: str, style: str = "world") -> str:
  """The scoring prompt of a record (or of any dict with problem / steps / answer): `build_example`'s prompt."""
  if fmt == "orm":
    return V.orm_prompt(rec["problem"], rec["steps"], answer=rec.get("answer"), style=style)
  if fmt in ("prm", "prm_cot"):
    return V.verifier_prompt(rec["problem"], rec["steps"], answer=rec.get("answer"), style=style)
  raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(GENERATIVE_FORMATS)}")


def pad_id(tokenizer) -> int:
  """The padding id: the tokenizer's pad token, else its eos (Llama-style tokenizers have no pad token)."""
  pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  if pid is None:
    raise ValueError("the tokenizer has neither a pad nor an eos token")
  return int(pid)


def _report(skipped: list[dict], what: str) -> None:
  if skipped:
    first = skipped[0]
    print(f"prm: {len(skipped)} {what} not encoded (first: id={first['id']!r}: {first['reason']})", file=sys.stderr)


def encode_examples(tokenizer, records: Sequence[dict], fmt: str, style: str = "world",
                    length: int | None = None) -> dict:
  """SFT batch of a generative format: prompt + target + eos, loss on target and eos, right-padded.

  Args:
    tokenizer: a `transformers` tokenizer; the prompt is encoded with its special tokens (a bos where the model
      wants one), the target without, then eos.
    records: valid Stage-I records.
    fmt: "orm", "prm" or "prm_cot".
    style: prompt style, "world" or "llm".
    length: the padded length T; None = the longest example. Longer examples are left out and reported.

  Returns:
    dict(tokens [N, T] int32, loss_mask [N, T] float32 (1 on target + eos), mask [N, T] bool (real tokens),
    rows [N] int32 (each row's index into `records`), skipped = [{"index", "id", "reason"}]).
  """
  if not records:
    raise ValueError("no records to encode")
  eos = tokenizer.eos_token_id
  prompts, targets, rows, skipped = [], [], [], []
  for i, rec in enumerate(records):
    prompt, target = build_example(rec, fmt, style)
    p = tokenizer.encode(prompt)
    t = tokenizer.encode(target, add_special_tokens=False) + [eos]
    if length is not None and len(p) + len(t) > length:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(p) + len(t)} tokens > length {length}"))
      continue
    prompts.append(p)
    targets.append(t)
    rows.append(i)
  _report(skipped, f"{fmt} examples")
  if not rows:
    raise ValueError(f"no {fmt} example fits in length {length} ({len(skipped)} skipped)")
  batch = sft.pad_examples(prompts, targets, pad_id(tokenizer), length)
  return dict(batch, rows=np.asarray(rows, np.int32), skipped=skipped)


def encode_prompts(tokenizer, records: Sequence[dict], fmt: str, style: str = "world",
                   length: int | None = None) -> dict:
  """Left-padded scoring prompts of a generative format (the input of `prm_scorers.make_generative_scorer`'s function).

  Returns:
    dict(prompt [N, P] int32, prompt_mask [N, P] bool, rows [N] int32, skipped); P = `length` or the longest prompt
    bucketed to a power of two (`sampling.bucket_length`); longer prompts are left out and reported.
  """
  if not records:
    raise ValueError("no records to encode")
  ids, rows, skipped = [], [], []
  for i, rec in enumerate(records):
    p = tokenizer.encode(build_prompt(rec, fmt, style))
    if length is not None and len(p) > length:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(p)} prompt tokens > length {length}"))
      continue
    ids.append(p)
    rows.append(i)
  _report(skipped, f"{fmt} prompts")
  if not rows:
    raise ValueError(f"no {fmt} prompt fits in length {length} ({len(skipped)} skipped)")
  tokens, mask = sampling.pad_prompts(ids, pad_id(tokenizer), length)
  return dict(prompt=tokens, prompt_mask=mask, rows=np.asarray(rows, np.int32), skipped=skipped)


# ---- discriminative examples -------------------------------------------------------------------------------------


def single_token_id(tokenizer, token: str | int) -> int:
  """The id of a token given as an id or as text that encodes to exactly one token (e.g. "\\n", "Correct")."""
  if isinstance(token, (int, np.integer)):
    return int(token)
  ids = tokenizer.encode(token, add_special_tokens=False)
  if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
    raise ValueError(f"{token!r} is not one known token of this tokenizer (encodes to "
                     f"{tokenizer.convert_ids_to_tokens(ids)})")
  return int(ids[0])


def label_token_ids(tokenizer, correct: str | int = "Correct", incorrect: str | int = "Incorrect") -> tuple[int, int]:
  """(correct id, incorrect id): the two tokens whose logits give a discriminative PRM's p(correct)."""
  ids = (single_token_id(tokenizer, correct), single_token_id(tokenizer, incorrect))
  if ids[0] == ids[1]:
    raise ValueError(f"the correct and incorrect label tokens are the same token {ids[0]}")
  return ids


def disc_prefix(problem: str) -> str:
  """The discriminative input before the steps: "Problem: ...\\nStudent Solution:\\n" (world words only)."""
  return f"Problem: {problem.strip()}\nStudent Solution:\n"


def encode_discriminative(tokenizer, records: Sequence[dict], sep: str | int = "\n", max_steps: int | None = None,
                          length: int | None = None, label_field: str = "verdicts") -> dict:
  """Discriminative PRM batch: prefix, then per step "Step k: <step>" followed by the separator token.

  The model's logits AT each separator position (its next-token prediction after reading step k) give step k's
  p(correct). Labels are the records' `label_field` (True -> 1.0): `verdicts` (propagated, as verifiers give them),
  or `step_checks` (each step checked on its own, `arith.step_checks`; exact-label records only).

  Args:
    tokenizer: a `transformers` tokenizer (the prefix is encoded with its special tokens, steps without).
    records: valid Stage-I records, or any dicts with problem / steps and, for training, verdicts.
    sep: the separator, as text encoding to one token or as an id.
    max_steps: S, the step slots; None = the most steps of any record. Records with more steps are reported.
    length: the padded length T; None = the longest input. Longer inputs are reported.
    label_field: the record field holding the labels. Records without `verdicts` (scoring records) are labelled all
      correct; another field must be in every record (ValueError naming the record otherwise).

  Returns:
    dict(tokens [N, T] int32 right-padded, mask [N, T] bool, sep_positions [N, S] int32 (-1 = no step),
    labels [N, S] float32, label_mask [N, S] bool, rows [N] int32, skipped = [{"index", "id", "reason"}]).
  """
  if not records:
    raise ValueError("no records to encode")
  sep_id = single_token_id(tokenizer, sep)
  S = max_steps or max(len(r["steps"]) for r in records)
  seqs, seps, labels, rows, skipped = [], [], [], [], []
  for i, rec in enumerate(records):
    if len(rec["steps"]) > S:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(rec['steps'])} steps > max_steps {S}"))
      continue
    if label_field != "verdicts" and label_field not in rec:
      raise ValueError(f"record {rec.get('id')!r} (index {i}) has no field {label_field!r} to label its steps with")
    ids = tokenizer.encode(disc_prefix(rec["problem"]))
    pos = []
    for k, step in enumerate(rec["steps"], 1):
      ids += tokenizer.encode(f"Step {k}: {step.strip()}", add_special_tokens=False)
      pos.append(len(ids))
      ids.append(sep_id)
    if length is not None and len(ids) > length:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(ids)} tokens > length {length}"))
      continue
    seqs.append(ids)
    seps.append(pos)
    labels.append([float(v) for v in rec.get(label_field, [True] * len(pos))])
    rows.append(i)
  _report(skipped, "discriminative examples")
  if not rows:
    raise ValueError(f"no discriminative example fits (max_steps {S}, length {length}; {len(skipped)} skipped)")
  T = length or max(len(s) for s in seqs)
  N = len(seqs)
  out = dict(tokens=np.full((N, T), pad_id(tokenizer), np.int32), mask=np.zeros((N, T), bool),
             sep_positions=np.full((N, S), -1, np.int32), labels=np.zeros((N, S), np.float32),
             label_mask=np.zeros((N, S), bool))
  for n, (ids, pos, lab) in enumerate(zip(seqs, seps, labels)):
    out["tokens"][n, :len(ids)] = ids
    out["mask"][n, :len(ids)] = True
    out["sep_positions"][n, :len(pos)] = pos
    out["labels"][n, :len(lab)] = lab
    out["label_mask"][n, :len(pos)] = True
  return dict(out, rows=np.asarray(rows, np.int32), skipped=skipped)
