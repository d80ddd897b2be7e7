"""ProcessBench: find the earliest wrong step of a math solution (Zheng et al., 2024; Qwen/ProcessBench).

Four subsets (gsm8k 400, math 1000, olympiadbench 1000, omnimath 1000 records). A record holds `problem`, `steps`
(list of str) and `label`, the 0-based index of the earliest wrong step or -1 when every step is correct.
Per subset the score is the F1 of two accuracies (see `score`); the benchmark score is the plain mean of the F1s.

  python -m sparkjax.eval.processbench --model /tmp/smollm2 --out /tmp/pb --limit 50 --limit_mode spread

Parts: `load_subset` (reader with per-record validation), `score` (the official metric), `evaluate` (batches records
through any `predict_fn` and writes results.json + predictions.jsonl), `GenerativeCritic` (a HF model prompted with
the official critique template and decoded with sparkjax's jitted sampler) and the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from sparkjax.data.jsonl import write_jsonl_atomic

SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")
HF_DATASET = "Qwen/ProcessBench"
# The repo root's sibling `shared/` (as in tests/conftest.py), found from this file so any cwd works.
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "processbench"
REQUIRED_FIELDS = ("id", "problem", "steps", "label")
LIMIT_MODES = ("prefix", "spread")

# Verbatim from the official repo (code/templates/critique_template.txt), `{{}}` being str.format's escaped braces.
CRITIQUE_TEMPLATE = (
    "The following is a math problem and a solution (split into paragraphs, enclosed with tags and indexed from 0):\n"
    "\n"
    "[Math Problem]\n"
    "\n"
    "{problem}\n"
    "\n"
    "[Solution]\n"
    "\n"
    "{tagged_response}\n"
    "\n"
    "Your task is to review and critique the solution paragraph by paragraph. Once you identify an error in a "
    "paragraph, return the index of the paragraph where the earliest error occurs. Otherwise, return the index of -1 "
    "(which typically denotes \"not found\").\n"
    "\n"
    "Please put your final answer (i.e., the index) in \\boxed{{}}.")

# The official extractor: the last `\boxed{...}` with no `}` inside. Unlike a brace-matching scan it still finds an
# earlier complete box when a generation is cut off inside a later one, which decides the score of such outputs.
_BOXED_RE = re.compile(r"\\boxed\{([^}]*)\}")


# ----------------------------------------------------------------------------------------------------------- reader
@dataclasses.dataclass(frozen=True)
class Record:
  """One valid ProcessBench record; `index` is its 0-based position in the subset's file (or HF split)."""

  subset: str
  index: int
  id: str
  problem: str
  steps: tuple[str, ...]
  label: int  # earliest wrong step in [0, len(steps) - 1], or -1 for a fully correct solution
  generator: str | None = None
  final_answer_correct: bool | None = None


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """A record that failed validation: excluded from scoring, listed in results.json with the reason."""

  subset: str
  index: int
  id: str | None
  reason: str


def _check_record(raw: Any) -> str | None:
  """Why `raw` is not a usable record, or None if it is."""
  if not isinstance(raw, dict):
    return f"expected a JSON object, got {type(raw).__name__}"
  missing = [k for k in REQUIRED_FIELDS if k not in raw]
  if missing:
    return f"missing field(s) {', '.join(missing)}"
  if isinstance(raw["id"], bool) or not isinstance(raw["id"], (str, int)):
    return f"id must be a string, got {type(raw['id']).__name__}"
  if not isinstance(raw["problem"], str) or not raw["problem"].strip():
    return "problem must be a non-empty string"
  steps = raw["steps"]
  if not isinstance(steps, list) or not steps:
    return "steps must be a non-empty list of strings" + ("" if isinstance(steps, list) else
                                                          f", got {type(steps).__name__}")
  bad = [i for i, s in enumerate(steps) if not isinstance(s, str)]
  if bad:
    return f"steps must be a non-empty list of strings; step {bad[0]} is {type(steps[bad[0]]).__name__}"
  label = raw["label"]
  if isinstance(label, bool) or not isinstance(label, int):
    return f"label must be an integer, got {label!r}"
  if not -1 <= label <= len(steps) - 1:
    return f"label {label} outside [-1, {len(steps) - 1}] for {len(steps)} steps"
  return None


def parse_records(raws: Sequence[Any], subset: str,
                  indices: Sequence[int] | None = None) -> tuple[list[Record], list[BadRecord]]:
  """Validates raw records (dicts) into `Record`s; every invalid one becomes a `BadRecord` with its reason.

  Checks: required fields id, problem, steps, label; steps a non-empty list of str; label an int in
  [-1, len(steps) - 1]; ids unique within the subset (predictions are keyed by id).
  indices: each raw record's position in its file (default 0, 1, ...), kept as `index`.
  """
  good, bad, seen = [], [], {}
  for i, raw in zip(indices if indices is not None else range(len(raws)), raws):
    rid = raw.get("id") if isinstance(raw, dict) else None
    rid = None if rid is None else str(rid)
    reason = _check_record(raw)
    if reason is None and rid in seen:
      reason = f"duplicate id (first seen at record {seen[rid]})"
    if reason is not None:
      bad.append(BadRecord(subset, i, rid, reason))
      continue
    seen[rid] = i
    fac = raw.get("final_answer_correct")
    good.append(Record(subset=subset, index=i, id=rid, problem=raw["problem"], steps=tuple(raw["steps"]),
                       label=raw["label"], generator=raw.get("generator"),
                       final_answer_correct=fac if isinstance(fac, bool) else None))
  return good, bad


def _looks_like_path(source: str) -> bool:
  """Hub names are `name` or `owner/name`; anything else that names no directory is a missing local path."""
  return source.startswith(("/", ".", "~")) or source.count("/") > 1 or Path(source).exists()


def _selection(n_total: int, limit: int | None, mode: str) -> list[int] | None:
  """Indices kept by a limit (None: all). prefix: 0..limit-1; spread: floor(i * n_total / limit), evenly spaced."""
  if limit is None or limit >= n_total:
    return None
  if mode == "prefix":
    return list(range(limit))
  return [i * n_total // limit for i in range(limit)]


def _read_local(path: Path) -> list:
  if not path.is_file():
    have = sorted(p.stem for p in path.parent.glob("*.json"))
    raise FileNotFoundError(f"{path}: no such ProcessBench subset file (subsets in {path.parent}: "
                            f"{', '.join(have) or 'none'})")
  expected = "a JSON list of ProcessBench records (objects with id, problem, steps, label)"
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected {expected}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                     f"expected {expected}") from None
  if not isinstance(data, list):
    raise ValueError(f"{path}: top-level JSON is a {type(data).__name__}; expected {expected}")
  return data


def _read_hf(name: str, subset: str) -> list:
  import datasets

  try:
    ds = datasets.load_dataset(name, split=subset)
  except Exception as e:  # datasets raises many types (network, missing split, ...); name what was asked for.
    raise ValueError(f"could not load Hugging Face dataset {name!r} split {subset!r}: {e}") from e
  return [dict(r) for r in ds]


def load_subset(source: str | os.PathLike, subset: str,
                limit: int | None = None, limit_mode: str = "prefix") -> tuple[list[Record], list[BadRecord]]:
  """Reads one subset: (valid records in file order, bad records with reasons).

  source: a local directory holding `{subset}.json` (a JSON list of records), or a Hugging Face dataset name such as
    "Qwen/ProcessBench" (split = subset) when it is not a local directory.
  limit: keep only `limit` records of the file/split, chosen deterministically before validation (bad records among
    them are still reported; `Record.index` stays the position in the full file).
  limit_mode: "prefix" keeps the first `limit` records. "spread" keeps records floor(i * N / limit), i < limit,
    evenly spaced over the file. The shared files list their erroneous records first (the first 200 of gsm8k, the
    first ~500 of the others), so a prefix of up to 200 holds no correct record and acc_cor (so F1) is undefined;
    a spread selection keeps roughly the subset's mix of the two kinds.
  Raises ValueError naming the file when the whole file is not a JSON list; bad single records never raise.
  """
  if limit is not None and limit < 1:
    raise ValueError(f"limit={limit}: expected a positive number of records (or None for all)")
  if limit_mode not in LIMIT_MODES:
    raise ValueError(f"limit_mode={limit_mode!r}: expected one of {LIMIT_MODES}")
  src = Path(source).expanduser()
  if src.is_dir():
    raws = _read_local(src / f"{subset}.json")
  elif _looks_like_path(str(source)):
    raise FileNotFoundError(f"ProcessBench data directory {str(source)!r} does not exist (or is not a directory); "
                            f"expected a directory with {', '.join(s + '.json' for s in SUBSETS)} or a Hugging Face "
                            f"dataset name such as {HF_DATASET!r}")
  else:
    raws = _read_hf(str(source), subset)
  keep = _selection(len(raws), limit, limit_mode)
  if keep is None:
    return parse_records(raws, subset)
  return parse_records([raws[i] for i in keep], subset, indices=keep)


# ----------------------------------------------------------------------------------------------------------- metric
def score(labels: Sequence[int], preds: Sequence[int | None]) -> dict:
  """The official ProcessBench metric of one subset.

    acc_err = 100 * #{i : label_i != -1 and pred_i == label_i} / #{i : label_i != -1}
    acc_cor = 100 * #{i : label_i == -1 and pred_i == -1} / #{i : label_i == -1}
    f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor)   (0 when both are 0)

  A None prediction (no usable critic output) equals no label, so it is wrong for both kinds; `unparseable` counts
  them. An accuracy over zero records is undefined (the official script gets NaN): it is None here, and so is f1.
  Accuracies and f1 are percentages in [0, 100].
  """
  if len(labels) != len(preds):
    raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
  n_err = sum(1 for y in labels if y != -1)
  n_cor = len(labels) - n_err
  hit_err = sum(1 for y, p in zip(labels, preds) if y != -1 and p is not None and p == y)
  hit_cor = sum(1 for y, p in zip(labels, preds) if y == -1 and p is not None and p == -1)
  acc_err = 100.0 * hit_err / n_err if n_err else None
  acc_cor = 100.0 * hit_cor / n_cor if n_cor else None
  if acc_err is None or acc_cor is None:
    f1 = None
  elif acc_err + acc_cor == 0:
    f1 = 0.0
  else:
    f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor)
  return dict(acc_err=acc_err, acc_cor=acc_cor, f1=f1, n=len(labels), n_err=n_err, n_cor=n_cor,
              unparseable=sum(1 for p in preds if p is None))


def mean_f1(f1s: Sequence[float | None]) -> float | None:
  """Plain mean of the subsets' F1s; None if any is undefined (a mean over fewer subsets is not comparable)."""
  if not f1s or any(f is None for f in f1s):
    return None
  return sum(f1s) / len(f1s)


# -------------------------------------------------------------------------------------------------------- evaluator
@dataclasses.dataclass(frozen=True)
class Prediction:
  """A critic's answer for one record.

  index: predicted earliest wrong step (0-based) or -1 for "no error"; None when there is no usable answer.
  status: "ok"; "unparseable" (no integer in the last \\boxed{}, or an index outside [-1, n_steps - 1]);
    "too_long" (the prompt did not fit the model's context, so the model was not run). Non-ok statuses have index None.
  """

  index: int | None
  raw: str = ""
  status: str = "ok"
  reason: str = ""
  finished: bool | None = None  # generation ended with a stop token (None: not generated)


STATUSES = ("ok", "unparseable", "too_long")


def _checked(pred: Any, rec: Record) -> Prediction:
  """Enforces the Prediction contract so every predict_fn is scored the same way."""
  if not isinstance(pred, Prediction):
    raise TypeError(f"predict_fn returned {type(pred).__name__} for record {rec.id!r}; expected a Prediction")
  if pred.status not in STATUSES:
    raise ValueError(f"prediction for record {rec.id!r} has status {pred.status!r}; expected one of {STATUSES}")
  if pred.status != "ok" or pred.index is None:
    return dataclasses.replace(pred, index=None, status="unparseable" if pred.status == "ok" else pred.status,
                               reason=pred.reason or "no index")
  if isinstance(pred.index, bool) or not isinstance(pred.index, int):
    raise TypeError(f"prediction for record {rec.id!r} has index {pred.index!r}; expected an int or None")
  if not -1 <= pred.index <= len(rec.steps) - 1:
    return dataclasses.replace(pred, index=None, status="unparseable",
                               reason=f"index {pred.index} outside [-1, {len(rec.steps) - 1}]")
  return pred


def _length_key(rec: Record) -> int:
  return len(rec.problem) + sum(len(s) for s in rec.steps)


def _fmt_time(s: float) -> str:
  s = int(s)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def evaluate(source: str | os.PathLike, subsets: Sequence[str], predict_fn: Callable[[list[Record]], list[Prediction]],
             out_dir: str | os.PathLike, limit: int | None = None, batch_size: int = 8, sort_by_length: bool = True,
             config: dict | None = None, progress: bool = True, limit_mode: str = "prefix") -> dict:
  """Runs `predict_fn` over ProcessBench subsets and writes `out_dir/results.json` and `out_dir/predictions.jsonl`.

  predict_fn: a batch of <= batch_size records -> one Prediction per record, in order.
  limit, limit_mode: records kept per subset (see `load_subset`). A subset left with only one kind of record gets
    acc_err or acc_cor (and f1) None and a warning on stderr and in its "warning" field.
  sort_by_length: batch records of similar text length together (less padding per batch); results do not depend on
    the order except through the critic's own batching.
  config: extra entries (the critic's settings) stored under "config" in results.json.
  Both files are rewritten atomically after every subset, with "complete": false until the last one is done.
  Every finished batch is also appended to `out_dir/partial.jsonl` (deleted once the run completes): a run started
  again on the same out_dir with the same settings (the run config, critic settings included) predicts only the
  records not in it; one with other settings ignores and replaces it, with a warning. Resumed records keep their
  predictions; the rest are batched afresh, so a batching-sensitive critic may differ from an unbroken run in them.
  Returns the results dict: per subset acc_err, acc_cor, f1 (percent, `score`), n, n_err, n_cor, unparseable,
  too_long, unfinished, n_bad, bad_records; mean_f1 (`mean_f1`); config; elapsed_s (this process only);
  resumed_records (predictions taken from partial.jsonl). `unparseable` (no usable index in the critic's output) and
  `too_long` (prompt over the context budget, not run) are disjoint; both are None predictions, scored as wrong.
  `unfinished` counts generations cut off at max_new_tokens; bad records are not in n.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: expected >= 1")
  if not subsets or len(set(subsets)) != len(subsets):
    raise ValueError(f"subsets={list(subsets)}: expected a non-empty list of distinct names")
  # Load and validate everything before the first (slow) prediction so a data error costs no model time.
  data = {s: load_subset(source, s, limit, limit_mode) for s in subsets}
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  total = sum(len(recs) for recs, _ in data.values())
  run_config = dict(source=str(source), subsets=list(subsets), limit=limit, limit_mode=limit_mode,
                    batch_size=batch_size, sort_by_length=sort_by_length, **(config or {}))
  partial = out_dir / PARTIAL_FILE
  resumed = _read_partial(partial, run_config)
  known = {(s, r.index) for s, (recs, _) in data.items() for r in recs}
  resumed = {k: v for k, v in resumed.items() if k in known}
  if resumed:
    print(f"processbench: resuming, {len(resumed)} of {total} records already predicted in {partial}",
          file=sys.stderr, flush=True)
  _start_partial(partial, run_config, resumed)
  results: dict[str, Any] = dict(mean_f1=None, subsets={}, config=run_config, complete=False,
                                 resumed_records=len(resumed))
  pred_lines: list[dict] = []
  t_start = time.monotonic()
  done_all = len(resumed)
  warnings = {}
  for subset, (records, bad) in data.items():
    n_err = sum(r.label != -1 for r in records)
    if records and n_err in (0, len(records)):
      kind = "correct (label -1)" if n_err == len(records) else "erroneous"
      hint = "a larger limit" if limit_mode == "spread" else "limit_mode='spread'"
      warnings[subset] = (f"no {kind} records among the {len(records)} selected, so its accuracy and F1 are undefined"
                          + (f" (limit={limit}, limit_mode={limit_mode!r}; try {hint})" if limit else ""))
      print(f"warning: processbench {subset}: {warnings[subset]}", file=sys.stderr, flush=True)
    preds: list[Prediction | None] = [resumed.get((subset, r.index)) for r in records]
    todo = [i for i, p in enumerate(preds) if p is None]
    order = sorted(todo, key=lambda i: _length_key(records[i])) if sort_by_length else todo
    for start in range(0, len(order), batch_size):
      idx = order[start:start + batch_size]
      batch = [records[i] for i in idx]
      out = predict_fn(batch)
      if len(out) != len(batch):
        raise ValueError(f"predict_fn returned {len(out)} predictions for a batch of {len(batch)} records")
      for i, rec, p in zip(idx, batch, out):
        preds[i] = _checked(p, rec)
      _append_partial(partial, [dict(subset=subset, record=records[i].index, pred=dataclasses.asdict(preds[i]))
                                for i in idx])
      done_all += len(batch)
      if progress:
        el = time.monotonic() - t_start
        ran = done_all - len(resumed)
        rate = ran / el if el > 0 else 0.0
        eta = (total - done_all) / rate if rate > 0 else 0.0
        print(f"processbench {subset}: {len(records) - len(order) + start + len(batch)}/{len(records)} | all "
              f"{done_all}/{total} records, {rate:.2f} rec/s, elapsed {_fmt_time(el)}, eta {_fmt_time(eta)}",
              file=sys.stderr, flush=True)
    m = score([r.label for r in records], [p.index for p in preds])
    m.update(unparseable=sum(1 for p in preds if p.status == "unparseable"),
             too_long=sum(1 for p in preds if p.status == "too_long"),
             unfinished=sum(1 for p in preds if p.finished is False), n_bad=len(bad),
             bad_records=[dict(index=b.index, id=b.id, reason=b.reason) for b in bad])
    if subset in warnings:
      m["warning"] = warnings[subset]
    results["subsets"][subset] = m
    for r, p in zip(records, preds):
      pred_lines.append(dict(subset=subset, id=r.id, index=r.index, label=r.label, pred=p.index, status=p.status,
                             reason=p.reason, finished=p.finished, raw=p.raw))
    results["elapsed_s"] = round(time.monotonic() - t_start, 2)
    _write_outputs(out_dir, results, pred_lines)
  results["mean_f1"] = mean_f1([m["f1"] for m in results["subsets"].values()])
  results["complete"] = True
  _write_outputs(out_dir, results, pred_lines)
  partial.unlink(missing_ok=True)
  return results


PARTIAL_FILE = "partial.jsonl"


def _read_partial(path: Path, run_config: dict) -> dict[tuple[str, int], Prediction]:
  """Predictions kept by an interrupted run with the same settings: {(subset, index): Prediction}. A torn last
  line (a kill during the append) is skipped; a file from other settings gives {} and a warning."""
  if not path.exists():
    return {}
  lines = path.read_text(encoding="utf-8").splitlines()
  try:
    header = json.loads(lines[0])["config"] if lines else None
  except (json.JSONDecodeError, KeyError, TypeError):
    header = None
  want = json.loads(json.dumps(run_config))  # as it reads back (tuples become lists)
  if header != want:
    header = header if isinstance(header, dict) else {}
    differ = sorted(k for k in set(header) | set(want) if header.get(k) != want.get(k))
    print(f"warning: processbench: {path} holds predictions of a run with other settings (differing: "
          f"{', '.join(differ) or 'unreadable header'}); starting afresh and replacing it", file=sys.stderr, flush=True)
    return {}
  out = {}
  fields = {f.name for f in dataclasses.fields(Prediction)}
  for line in lines[1:]:
    try:
      row = json.loads(line)
      out[(row["subset"], row["record"])] = Prediction(**{k: row["pred"][k] for k in fields})
    except (json.JSONDecodeError, KeyError, TypeError):
      continue
  return out


def _start_partial(path: Path, run_config: dict, kept: dict[tuple[str, int], Prediction]) -> None:
  """Rewrites partial.jsonl atomically: the settings, then the kept predictions."""
  rows = [dict(config=run_config)]
  rows += [dict(subset=s, record=i, pred=dataclasses.asdict(p)) for (s, i), p in kept.items()]
  write_jsonl_atomic(path, rows)


def _append_partial(path: Path, rows: list[dict]) -> None:
  with open(path, "a", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _write_outputs(out_dir: Path, results: dict, pred_lines: list[dict]) -> None:
  write_jsonl_atomic(out_dir / "predictions.jsonl", pred_lines)
  path = out_dir / "results.json"
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def format_table(results: dict) -> str:
  """The per-subset scores as a fixed-width text table."""
  def f(x):
    return "   n/a" if x is None else f"{x:6.1f}"

  lines = [f"{'subset':<14} {'n':>5} {'acc_err':>7} {'acc_cor':>7} {'F1':>6} {'unparse':>7} {'unfin':>6} "
           f"{'toolong':>7} {'bad':>4}"]
  for name, m in results["subsets"].items():
    lines.append(f"{name:<14} {m['n']:>5} {f(m['acc_err']):>7} {f(m['acc_cor']):>7} {f(m['f1'])} "
                 f"{m['unparseable']:>7} {m['unfinished']:>6} {m['too_long']:>7} {m['n_bad']:>4}")
  lines.append(f"{'mean F1':<14} {'':>5} {'':>7} {'':>7} {f(results['mean_f1'])}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- generative critic
def build_prompt(record: Record) -> str:
  """The official critique prompt; step i is tagged `<paragraph_i>\\n...\\n</paragraph_i>`, blank-line separated."""
  tagged = "\n\n".join(f"<paragraph_{i}>\n{s}\n</paragraph_{i}>" for i, s in enumerate(record.steps))
  return CRITIQUE_TEMPLATE.format(problem=record.problem, tagged_response=tagged)


def parse_critique(text: str, n_steps: int) -> tuple[int | None, str]:
  """(index, reason) from a critique: int(content of the last \\boxed{...}), as the official script does.

  index is None, with the reason, when there is no box, its content is not an integer, or the integer is outside
  [-1, n_steps - 1].
  """
  boxes = _BOXED_RE.findall(text)
  if not boxes:
    return None, "no \\boxed{}"
  content = boxes[-1].strip()
  try:
    idx = int(content)
  except ValueError:
    return None, f"\\boxed{{{content[:40]}}} is not an integer"
  if not -1 <= idx <= n_steps - 1:
    return None, f"index {idx} outside [-1, {n_steps - 1}]"
  return idx, ""


def prompt_bucket(n: int) -> int:
  """Padded prompt length for a longest prompt of n tokens: a power of two or three quarters of one (>= 16).

  `sampling.bucket_length` alone pads up to 2x; ProcessBench prompts run 300-3000 tokens and prefill dominates the
  CPU cost, so the 3/4 points (384, 768, 1536, ...) cap the padding at 1.33x for twice the compiled shapes.
  """
  from sparkjax import sampling

  p = sampling.bucket_length(n)
  return p * 3 // 4 if p >= 32 and n <= p * 3 // 4 else p


class GenerativeCritic:
  """A HF causal LM prompted with the critique template, decoded by a `sparkjax.text_generation.Generator`.

  Each call splits its prompts into up to `prefill_groups` length groups, each padded to its own bucketed length
  (`prompt_bucket`, `sampling.group_prompts`): a few long prompts no longer pad the whole batch (on the 50-record
  spreads, 0.49-0.66x the padded prefill tokens of one group with 3 groups). One program is compiled per distinct
  grouping. A short last batch is not padded with dummy rows: under sort-by-length it holds the longest
  prompts, where a wasted row costs far more prefill than one extra compilation.
  Prompts that do not fit are not truncated: a prompt of L tokens needs L + max_new_tokens <= max_len (default the
  model's max_position_embeddings); longer ones get status "too_long" (index None, scored as wrong) and are not run.
  """

  def __init__(self, model_dir: str | os.PathLike, *, max_new_tokens: int = 512,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, dtype: str = "float32",
               max_len: int | None = None, prefill_groups: int = 3):
    from sparkjax import sampling, text_generation
    from sparkjax.models import hf, tokenizer as tok_lib

    self.model_dir = str(model_dir)
    sampling.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    cfg = hf.load_config(model_dir, param_dtype=dtype, compute_dtype=dtype)
    self.max_len = max_len or cfg.max_position_embeddings
    if self.max_len <= max_new_tokens:
      raise ValueError(f"max_len={self.max_len} leaves no room for a prompt with max_new_tokens={max_new_tokens}")
    self.tokenizer = tok_lib.load_tokenizer(model_dir)
    if not self.tokenizer.chat_template:
      raise ValueError(f"{model_dir}: the tokenizer has no chat template; the critique prompt is a chat message")
    self.params, self.cfg = hf.load_params(model_dir, cfg)
    pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
    self.sp = sampling.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                      top_k=top_k, stop_tokens=tok_lib.stop_tokens(self.tokenizer, model_dir),
                                      pad_id=pad)
    self.seed, self.dtype = seed, dtype
    self._calls = 0
    # All of a call's prompts in one sampler call, without dummy rows (see the class docstring).
    self.generator = text_generation.Generator(self.cfg, pad, rows=None, bucket=prompt_bucket, fill_last=False,
                                               prefill_groups=prefill_groups)

  @property
  def config(self) -> dict:
    """Settings that determine the predictions (stored in results.json)."""
    return dict(model=self.model_dir, model_type=self.cfg.model_type, max_new_tokens=self.sp.max_new_tokens,
                temperature=self.sp.temperature, top_p=self.sp.top_p, top_k=self.sp.top_k, seed=self.seed,
                dtype=self.dtype, max_len=self.max_len, prefill_groups=self.generator.prefill_groups,
                template="official critique_template.txt")

  def prompt_ids(self, record: Record) -> list[int]:
    """Token ids of the critique prompt as a single user turn, with the assistant turn opened."""
    from sparkjax.models import tokenizer as tok_lib

    return tok_lib.encode_prompt(self.tokenizer, build_prompt(record), chat=True)

  def __call__(self, records: list[Record]) -> list[Prediction]:
    import jax

    ids = [self.prompt_ids(r) for r in records]
    budget = self.max_len - self.sp.max_new_tokens
    out: list[Prediction | None] = [None] * len(records)
    run = []
    for i, p in enumerate(ids):
      if len(p) > budget:
        out[i] = Prediction(None, status="too_long", reason=f"prompt of {len(p)} tokens + max_new_tokens="
                            f"{self.sp.max_new_tokens} exceeds max_len={self.max_len}")
      else:
        run.append(i)
    if run:
      rng = jax.random.fold_in(jax.random.key(self.seed), self._calls)
      self._calls += 1
      done = self.generator.generate(self.params, [ids[i] for i in run], self.sp, rng, max_prompt_len=budget)
      for (completion,), i in zip(done, run):
        text = self.tokenizer.decode(completion.tokens, skip_special_tokens=True)
        idx, reason = parse_critique(text, len(records[i].steps))
        out[i] = Prediction(idx, raw=text, status="ok" if idx is not None else "unparseable", reason=reason,
                            finished=completion.finished)
    return out


class PRMCritic:
  """A PRM trained by `sparkjax.spark.prm_train` (formats "prm", "prm_cot", "orm" or "disc"): the steps go into the
  PRM's own input format (`spark.prm_examples.build_prompt`, style "llm") and its verdicts give the first-error index
  (`spark.prm_scorers.predict`; an ORM can only say -1 or "the last step")."""

  def __init__(self, model_dir: str | os.PathLike, fmt: str, *, max_new_tokens: int = 512, dtype: str = "float32"):
    from sparkjax.models import hf, tokenizer as tok_lib

    self.model_dir, self.fmt, self.max_new_tokens, self.dtype = str(model_dir), fmt, max_new_tokens, dtype
    cfg = hf.load_config(model_dir, param_dtype=dtype, compute_dtype=dtype)
    self.tokenizer = tok_lib.load_tokenizer(model_dir)
    self.params, self.cfg = hf.load_params(model_dir, cfg)

  @property
  def config(self) -> dict:
    return dict(model=self.model_dir, model_type=self.cfg.model_type, format=self.fmt,
                max_new_tokens=self.max_new_tokens, dtype=self.dtype, temperature=0.0)

  def __call__(self, records: list[Record]) -> list[Prediction]:
    from sparkjax.spark import prm_scorers

    recs = [dict(id=r.id, problem=r.problem, steps=list(r.steps)) for r in records]  # the answer is in the last step
    outputs: list[tuple[str, bool]] = []  # stays empty where verdicts are read on device (world tokenizer)
    preds, _ = prm_scorers.predict(self.params, self.cfg, self.tokenizer, self.fmt, recs,
                                   max_new_tokens=self.max_new_tokens, batch=len(recs), style="llm", outputs=outputs)
    outputs = outputs or [("", None)] * len(preds)
    return [Prediction(p, raw=text, status="ok" if p is not None else "unparseable",
                       reason="" if p is not None else "the PRM's verdicts could not be read for every step",
                       finished=finished)
            for p, (text, finished) in zip(preds, outputs)]


# -------------------------------------------------------------------------------------------------------------- CLI
def _define_flags() -> None:
  """Defined only when run as a program, so importing this module leaves absl's global flags alone."""
  from absl import flags

  flags.DEFINE_string("model", None, "Hugging Face model directory (config.json + safetensors + tokenizer).")
  flags.DEFINE_string("out", None, "Output directory for results.json and predictions.jsonl. A run killed midway "
                      "goes on from its finished batches (out/partial.jsonl) when started again with the same flags.")
  flags.DEFINE_string("data", str(DEFAULT_DATA), "Directory with {subset}.json, or a Hugging Face dataset name "
                      f"(e.g. {HF_DATASET}).")
  flags.DEFINE_list("subsets", list(SUBSETS), "Comma-separated subsets to evaluate.")
  flags.DEFINE_integer("limit", None, "Evaluate only N records of each subset (chosen by --limit_mode).")
  flags.DEFINE_enum("limit_mode", "prefix", list(LIMIT_MODES), "prefix: the first N records (the shared files put "
                    "erroneous records first, so a short prefix has no correct ones); spread: N evenly spaced records.")
  flags.DEFINE_integer("batch_size", 8, "Records per generation batch.")
  flags.DEFINE_integer("max_new_tokens", 512, "Critique tokens to generate per record.")
  flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy (the official setting).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1].")
  flags.DEFINE_integer("top_k", 0, "Top-k filter; 0 = off.")
  flags.DEFINE_integer("seed", 0, "PRNG seed (matters only with temperature > 0).")
  flags.DEFINE_integer("max_len", None, "Context budget (prompt + critique tokens); default the model's.")
  flags.DEFINE_integer("prefill_groups", 3, "A batch's prompts are prefilled in up to this many length groups, each "
                       "padded to its own length (1 = all padded to the longest; results equal up to float rounding).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")
  flags.DEFINE_enum("format", "critic", ["critic", "prm", "prm_cot", "orm", "disc"], "critic: the official critique "
                    "prompt (any instruct model); otherwise a PRM trained by sparkjax.spark.prm_train in that format.")
  flags.mark_flags_as_required(["model", "out"])


def main(argv) -> int:
  del argv
  from sparkjax import cli

  cli.quiet_logs()
  return cli.run("processbench", _run_cli)


def _run_cli() -> int:
  from absl import flags

  from sparkjax import cli

  FLAGS = flags.FLAGS
  # Everything cheap is checked before the model loads: flags, the output directory, the data.
  if FLAGS.batch_size < 1:
    raise ValueError(f"--batch_size={FLAGS.batch_size}: expected >= 1")
  if FLAGS.max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens={FLAGS.max_new_tokens}: expected >= 1")
  if FLAGS.limit is not None and FLAGS.limit < 1:
    raise ValueError(f"--limit={FLAGS.limit}: expected >= 1 (or leave it out for every record)")
  for subset in FLAGS.subsets:
    load_subset(FLAGS.data, subset, FLAGS.limit, FLAGS.limit_mode)
  cli.check_output_dir(FLAGS.out, "--out")
  t0 = time.time()
  if FLAGS.format == "critic":
    critic = GenerativeCritic(FLAGS.model, max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                              top_p=FLAGS.top_p, top_k=FLAGS.top_k, seed=FLAGS.seed, dtype=FLAGS.dtype,
                              max_len=FLAGS.max_len, prefill_groups=FLAGS.prefill_groups)
  else:
    critic = PRMCritic(FLAGS.model, FLAGS.format, max_new_tokens=FLAGS.max_new_tokens, dtype=FLAGS.dtype)
  print(f"loaded {critic.cfg.model_type} ({critic.cfg.num_params() / 1e6:.1f}M params) in {time.time() - t0:.1f}s",
        file=sys.stderr)
  results = evaluate(FLAGS.data, FLAGS.subsets, critic, FLAGS.out, limit=FLAGS.limit, limit_mode=FLAGS.limit_mode,
                     batch_size=FLAGS.batch_size, config=critic.config)
  print(format_table(results))
  print(f"wrote {Path(FLAGS.out) / 'results.json'} and predictions.jsonl in {results['elapsed_s']:.0f}s",
        file=sys.stderr)
  return 0


if __name__ == "__main__":
  import sparkjax.cli  # noqa: F401  (before jax/transformers: it quiets their start-up)
  from absl import app

  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
