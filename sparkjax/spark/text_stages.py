"""SPARK-PRM Stages I and II on real text with Hugging Face models: a generator's solutions to math problems, verified
step by step by a verifier model without the reference answers, the five Stage-I data variants, and optionally a
Stage-II PRM trained on one of them and scored on ProcessBench.

  python -m sparkjax.spark.text_stages --generator G --verifier V --data ../shared/data/gsm8k/train.jsonl \\
      --problems 20 --n 4 --out OUT [--prm_base B --prm_steps 4 --processbench ../shared/data/processbench]

Stage I (`stage1`): each problem goes to the generator in its chat template with an instruction to write numbered
steps and a boxed answer; a solution's steps are its "Step k:" paragraphs (else its blank-line paragraphs) and its
answer the last \\boxed{}; a solution without a boxed answer is unreadable and counted. Verification, consensus,
meta-critique and the reference-guided baseline are `verify.stage1_variants` with the "llm" prompts in the
verifier's chat template (spec: T = 0.8, top_p 0.95; critique and merge greedy). The reference answers are used only
by the reference-guided baseline and, after the fact, to grade each solution's answer with math-verify, which gives
the one exact check real text allows: each variant's final verdicts against the answers' correctness
(`vd.outcome_f1`, positive = a wrong answer). There are no step-level labels.

Stage II (`stage2`): a PRM of one format trained from `--prm_base` on one variant's records for a few steps
(`prm_train.train_prm`, "llm" prompts without a chat template, as `eval.processbench.PRMCritic` reads them), saved
as a HF directory, and scored with `eval.processbench.evaluate` on a spread of each subset.

OUT holds solutions.jsonl (every generated solution, readable or not), the `<variant>.jsonl` files, stage1.json (the
counts and checks), and with Stage II prm/ (the model), processbench/ (results.json, predictions.jsonl) and
stage2.json. A killed run keeps Stage I's finished phases under OUT/partial (continued only with the same settings;
--rows and --prefill_groups may change) and Stage II's PRM once saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import jax

from sparkjax.data import math as math_data
from sparkjax.data.host_grading import GraderPool, last_boxed
from sparkjax.data.jsonl import write_jsonl_atomic
from sparkjax.spark import verdicts as vd
from sparkjax.spark import verify as verify_lib
from sparkjax.text_generation import TextModel

SOLVE_INSTRUCTION = ("{problem}\n\nSolve the problem step by step. Write each step on its own line, starting with "
                     "\"Step 1:\", \"Step 2:\", and so on. End with the final answer in \\boxed{{}}.")
# A step header opens a line, with optional markdown emphasis or heading marks: "Step 2:", "**Step 2.**", "### Step 2)".
_STEP_HEAD = re.compile(r"^[ \t>#*]*step[ \t]*(\d+)[ \t]*\**[ \t]*[:.)][ \t]*\**", re.I | re.M)


@dataclasses.dataclass(frozen=True)
class Stage1Settings:
  """Stage I's sizes and decoding (the CLI's flags)."""

  problems: int = 20
  m: int = 1  # solutions per problem
  n: int = 4  # verifications per solution
  gen_temperature: float = 0.7
  gen_top_p: float = 0.95
  gen_max_new_tokens: int = 384
  temperature: float = 0.8  # verification (spec)
  top_p: float = 0.95
  max_new_tokens: int = 384
  rows: int = 32  # sampler rows per call
  prefill_groups: int = 3  # each call's prompts prefilled in up to this many length groups (`Generator`)
  seed: int = 0


def split_solution(text: str) -> tuple[tuple[str, ...], str | None]:
  """(steps, answer) of a generated solution: the texts after each "Step k:" header (else the blank-line separated
  paragraphs; else the lines), whitespace collapsed to single spaces; the answer is the last \\boxed{} or None.
  Text before the first header (a restatement of the problem) is not a step."""
  answer = last_boxed(text)
  heads = list(_STEP_HEAD.finditer(text))
  if heads:
    pieces = [text[h.end():(heads[i + 1].start() if i + 1 < len(heads) else len(text))] for i, h in enumerate(heads)]
  else:
    pieces = re.split(r"\n[ \t]*\n", text.strip())
    if len(pieces) == 1:
      pieces = text.strip().split("\n")
  steps = tuple(" ".join(p.split()) for p in pieces if p.strip())
  return steps, answer


def generate_items(generator: TextModel, problems: Sequence[math_data.MathRecord], s: Stage1Settings,
                   key) -> tuple[list[verify_lib.Item], list[dict]]:
  """M sampled solutions per problem -> (readable solutions as items, one row per solution for solutions.jsonl)."""
  texts = generator.sample_texts([SOLVE_INSTRUCTION.format(problem=p.problem) for p in problems], s.m,
                                 s.gen_max_new_tokens, s.gen_temperature, key, s.gen_top_p, desc="generate")
  items, rows = [], []
  for i, (p, row) in enumerate(zip(problems, texts)):
    for j, t in enumerate(row):
      steps, answer = split_solution(t)
      ok = bool(steps) and answer is not None
      rows.append(dict(id=f"{p.id}-{j}", problem=p.problem, text=t, steps=list(steps), answer=answer,
                       reference=p.answer, readable=ok))
      if ok:
        items.append(verify_lib.Item(f"{p.id}-{j}", p.problem, steps, answer, p.answer))
  return items, rows


def _outcome_checks(items, variants: dict, correct: dict) -> dict:
  """Per variant: its final verdicts against the answers' math-verify correctness (a solution without a record
  counts as unread)."""
  out = {}
  for name, recs in variants.items():
    by_id = {r["id"]: r["final"] for r in recs}
    out[name] = vd.outcome_f1([by_id.get(it.id) for it in items], [correct[it.id] for it in items])
  return out


def _check_resume(cache: Path, run: dict) -> None:
  """Refuses to continue the phases kept in `cache` under other settings (they would be mixed into one Stage I
  silently); `rows` and `prefill_groups` may change (after running out of memory, say): they group the calls and
  their prompts, not what is computed (up to float rounding)."""
  f = cache / "settings.json"
  run = {k: v for k, v in run.items() if k not in ("rows", "prefill_groups")}
  if f.is_file():
    kept = json.loads(f.read_text())
    diff = [f"{k}: kept {kept.get(k)!r}, now {v!r}" for k, v in run.items() if kept.get(k) != v]
    if diff:
      raise ValueError(f"{cache} holds phases of a Stage I run with other settings ({'; '.join(diff)}); rerun with "
                       f"the same settings, or remove {cache} to start again")
    return
  cache.mkdir(parents=True, exist_ok=True)
  tmp = f.with_suffix(".tmp")
  tmp.write_text(json.dumps(run, indent=1))
  tmp.replace(f)


def stage1(generator_dir: str, verifier_dir: str, problems: Sequence[math_data.MathRecord], s: Stage1Settings,
           out: Path) -> dict:
  """Stage I on real text -> stage1.json's dict (also written to out); see the module docstring. Skipped when
  out/stage1.json exists."""
  from sparkjax.pipelines.spark_prm import phase_cache

  done = out / "stage1.json"
  if done.is_file():
    print(f"stage I: found {done}, skipping", file=sys.stderr)
    return json.loads(done.read_text())
  cache = out / "partial"
  _check_resume(cache, dict(generator=str(generator_dir), verifier=str(verifier_dir),
                            problem_ids=[p.id for p in problems], **dataclasses.asdict(s)))
  k_gen, k_ver, k_ref, k_mc1, k_mc2 = jax.random.split(jax.random.key(s.seed), 5)
  t0 = time.time()

  def gen():
    model = TextModel.from_dir(generator_dir, s.rows, chat=True, prefill_groups=s.prefill_groups)
    return generate_items(model, problems, s, k_gen), time.time() - t0

  (items, rows), gen_seconds = phase_cache(cache, "solutions", gen)
  gc.collect()  # the generator's weights go before the verifier's load
  write_jsonl_atomic(out / "solutions.jsonl", rows)
  print(f"stage I: {len(items)} readable solutions of {len(rows)} ({gen_seconds:.0f}s)", file=sys.stderr)
  if not items:
    raise ValueError(f"stage I: none of the generator's {len(rows)} solutions had steps and a boxed answer; see "
                     f"{out / 'solutions.jsonl'}")
  pool = GraderPool("math_verify", workers=2, timeout=10.0)
  try:
    graded = pool.grade([it.answer for it in items], [it.reference for it in items]).rewards
  finally:
    pool.close()
  correct = {it.id: bool(g) for it, g in zip(items, graded)}
  t1 = time.time()
  verifier = TextModel.from_dir(verifier_dir, s.rows, chat=True, prefill_groups=s.prefill_groups)
  vc = verify_lib.VerifyConfig(n=s.n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                               style="llm")
  variants, parts = verify_lib.stage1_variants(verifier, items, vc, (k_ver, k_ref, k_mc1, k_mc2),
                                               phase=lambda name, fn: phase_cache(cache, name, fn))
  statuses: dict[str, int] = {}
  for row in parts["samples"]:
    for _, v in row:
      statuses[v.status] = statuses.get(v.status, 0) + 1
  table = dict(
      generator=str(generator_dir), verifier=str(verifier_dir), settings=dataclasses.asdict(s),
      problems=len(problems), solutions=len(rows), readable=len(items),
      steps_per_solution=sum(len(it.steps) for it in items) / len(items),
      answers_correct=sum(correct.values()), generate_seconds=gen_seconds, verify_seconds=parts["verify_seconds"],
      verifier_seconds=time.time() - t1, verifications=len(items) * s.n, verification_status=statuses,
      records={k: len(v) for k, v in variants.items()},
      left_out={k: len(items) - len(v) for k, v in variants.items()},
      outcome_vs_answer=_outcome_checks(items, variants, correct))
  verify_lib.write_variants(out, variants)
  done.write_text(json.dumps(table, indent=2))
  shutil.rmtree(cache, ignore_errors=True)
  return table


def stage2(base_dir: str, records_path: Path, fmt: str, steps: int, lr: float, batch_size: int, max_len: int,
           out: Path, seed: int = 0) -> dict:
  """A PRM of format `fmt` trained from base_dir on a Stage-I variant file for `steps` steps (AdamW, constant lr,
  batch_size rows, examples longer than max_len tokens left out) and saved to out/prm; a saved PRM is kept."""
  from sparkjax.config_args import optimizer_config
  from sparkjax.models import hf
  from sparkjax.models import tokenizer as tok_lib
  from sparkjax.pipelines.spark_prm import save_prm
  from sparkjax.spark import prm_examples, prm_train

  prm_dir, done = out / "prm", out / "stage2_train.json"
  if done.is_file() and (prm_dir / "config.json").is_file():
    print(f"stage II: found {prm_dir}, not training again", file=sys.stderr)
    return json.loads(done.read_text())
  records, bad = prm_examples.load_records(records_path)
  if not records:
    raise ValueError(f"{records_path}: no usable Stage-I record ({len(bad)} invalid)")
  tok = tok_lib.load_tokenizer(base_dir)
  cfg = hf.load_config(base_dir, remat=True)
  params, cfg = hf.load_params(base_dir, cfg)
  examples = prm_examples.encode_examples(tok, records, fmt, "llm", length=max_len)
  t0 = time.time()
  params, history = prm_train.train_prm(params, cfg, examples, fmt, optimizer_config(lr, steps), steps, batch_size,
                                        seed, log_every=1)
  save_prm(params, cfg, tok, prm_dir, dict(variant=records_path.stem, format=fmt, base=str(base_dir)))
  res = dict(records=len(records), invalid=len(bad), encoded=len(examples["rows"]), skipped=len(examples["skipped"]),
             steps=steps, lr=lr, batch_size=batch_size, train_seconds=time.time() - t0,
             loss=[h["loss"] for h in history], prm_dir=str(prm_dir))
  done.write_text(json.dumps(res, indent=2))
  return res


def main(argv=None) -> int:
  """SPARK-PRM Stages I and II on real text with Hugging Face models (see the module docstring)."""
  from sparkjax import cli

  cli.quiet_logs()
  ap = argparse.ArgumentParser(prog="python -m sparkjax.spark.text_stages", description=main.__doc__)
  ap.add_argument("--generator", required=True, help="HF directory of the generator (an instruct model)")
  ap.add_argument("--verifier", required=True, help="HF directory of the verifier (an instruct model)")
  ap.add_argument("--data", required=True, help="math problems with reference answers (.jsonl: GSM8K, MATH)")
  ap.add_argument("--split", default="train")
  ap.add_argument("--out", required=True)
  d = Stage1Settings()
  for f in dataclasses.fields(Stage1Settings):
    ap.add_argument(f"--{f.name}", type=type(getattr(d, f.name)), default=getattr(d, f.name))
  ap.add_argument("--prm_base", default="", help="HF directory the Stage-II PRM starts from; empty: no Stage II")
  ap.add_argument("--prm_variant", default="step_consistency", choices=verify_lib.VARIANTS)
  ap.add_argument("--prm_format", default="prm_cot", choices=("prm", "prm_cot", "orm"))
  ap.add_argument("--prm_steps", type=int, default=4)
  ap.add_argument("--prm_lr", type=float, default=1e-6)
  ap.add_argument("--prm_batch", type=int, default=2)
  ap.add_argument("--prm_max_len", type=int, default=1024)
  ap.add_argument("--processbench", default="", help="ProcessBench directory to score the PRM on")
  ap.add_argument("--pb_limit", type=int, default=10, help="records per ProcessBench subset (spread)")
  ap.add_argument("--pb_max_new_tokens", type=int, default=384)
  args = ap.parse_args(argv)

  def run() -> int:
    s = Stage1Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Stage1Settings)})
    if s.problems < 1 or s.m < 1 or s.n < 1:
      raise ValueError(f"--problems={s.problems} --m={s.m} --n={s.n}: each must be >= 1")
    out = cli.check_output_dir(args.out, "--out")
    data = math_data.load_math(args.data, split=args.split)
    if len(data.records) < s.problems:
      raise ValueError(f"{args.data}: {len(data.records)} readable problems, --problems={s.problems} asked")
    step = len(data.records) / s.problems  # spread over the file
    problems = [data.records[int(i * step)] for i in range(s.problems)]
    table = stage1(args.generator, args.verifier, problems, s, out)
    print(json.dumps({k: table[k] for k in ("readable", "answers_correct", "records", "verification_status")}),
          file=sys.stderr)
    if not args.prm_base:
      return 0
    res = stage2(args.prm_base, out / f"{args.prm_variant}.jsonl", args.prm_format, args.prm_steps, args.prm_lr,
                 args.prm_batch, args.prm_max_len, out, s.seed)
    if args.processbench:
      from sparkjax.eval import processbench

      critic = processbench.PRMCritic(res["prm_dir"], args.prm_format, max_new_tokens=args.pb_max_new_tokens)
      t0 = time.time()
      pb = processbench.evaluate(args.processbench, processbench.SUBSETS, critic, out / "processbench",
                                 limit=args.pb_limit, limit_mode="spread", batch_size=8, config=critic.config)
      res["processbench"] = pb
      res["processbench_seconds"] = time.time() - t0
      print(processbench.format_table(pb))
    (out / "stage2.json").write_text(json.dumps(res, indent=2))
    return 0

  return cli.run("text_stages", run)


if __name__ == "__main__":
  raise SystemExit(main())
