"""Pipeline `spark_prm`: SPARK-PRM Stages I and II in the arithmetic world, every stage scored against exact labels.

Reads top to bottom:
  1. generator: a small policy SFT'd on an imperfect generator's demonstrations (the `arith_rl` SFT phase);
  2. verifier: the generator's weights SFT'd on the world's verification transcripts, written by a teacher that knows
     the exact labels but errs at rate `verifier.eps` per step (sparkjax/spark/world_verifier.py);
  3. Stage I on unlabelled problems: M solutions each, N verifications each, consensus, meta-critique,
     reference-guided -> one dataset file per variant (sparkjax/spark/verify.py), and the verifier's quality table;
  4. Stage II: a PRM trained on each variant (and ORM / PRM-CoT / discriminative on step-level consistency), each
     scored with the ProcessBench metric on a held-out world set.
Every stage keeps its output in the workdir (checkpoints, dataset files, summary.json) and is skipped when its
output is already there, so a killed run continues where it stopped; inside Stage I each finished phase (solutions,
verifications, meta-critiques, reference-guided) is kept until the stage completes (`phase_cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sparkjax import config_check, distributed, text_generation
from sparkjax.data import arith, world_data
from sparkjax.data.grading import make_suffix_reward
from sparkjax.eval import processbench
from sparkjax.models import hf
from sparkjax.pipelines import arith_rl, common
from sparkjax.spark import prm_examples, prm_scorers, prm_train
from sparkjax.spark import stage_report
from sparkjax.spark import verdicts as vd
from sparkjax.spark import verify as verify_lib
from sparkjax.spark import world_verifier as wv
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import sft, state as state_lib
from sparkjax.train.checkpoint import Checkpointer

_num = stage_report.num
# Stage I's dataset files: the SPARK variants, and the exact-label upper bound (`gold_records`).
DATA_VARIANTS = (*verify_lib.VARIANTS, "gold")


# ---- config ------------------------------------------------------------------------------------------------------


def check_config(ch: config_check.Checks):
  """Everything known from the config alone (run by `main` before any work; see sparkjax/config_check.py)."""
  config_check.check_world(ch)
  # The held-out ProcessBench must be problems no training stream sees (the world's split, arith.split_of).
  ch.int_range("world.heldout_every", 2)
  ch.int_range("data.eval_size", 1)
  config_check.check_world_model(ch)
  mesh = ch.mesh()
  arith_rl.check_sft(ch, "sft", mesh)
  arith_rl.check_sft(ch, "verifier", mesh, accum=False)
  ch.float_range("verifier.eps", 0.0, 1.0)
  ch.boolean("verifier.by_task", optional=True)
  ch.int_range("verifier.verify_first", 0, optional=True)
  verify_first = ch.get("verifier.verify_first", None)
  if verify_first and not ch.get("verifier.by_task", False):
    ch.fail("verifier.verify_first", verify_first, "needs verifier.by_task=True")
  for k in ("problems", "m", "rows"):
    ch.int_range(f"stage1.{k}", 1)
  ch.int_range("stage1.balance_per_side", 0)
  ch.rows_over_data("stage1.rows", ch.get("stage1.rows", None), mesh)
  n_list = ch.get("stage1.n_list")
  if not n_list or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in n_list):
    ch.fail("stage1.n_list", n_list, "expected a non-empty list of self-consistency sizes >= 1")
  for part, lo_open in (("generate", True), ("verify", False)):
    ch.float_range(f"stage1.{part}.temperature", 0.0, lo_open=lo_open)
    ch.float_range(f"stage1.{part}.top_p", 0.0, 1.0, lo_open=True)
    ch.int_range(f"stage1.{part}.max_new_tokens", 1 if part == "generate" else 0)
  ch.satisfies("stage1.consensus", lambda c: vd.ConsensusConfig(**dict(c)))
  runs = ch.get("stage2.runs") or []
  for run in runs:
    variant, _, fmt = str(run).partition(":")
    if variant not in DATA_VARIANTS or fmt not in prm_examples.FORMATS:
      ch.fail("stage2.runs", run, f"expected 'variant:format' with a variant in {', '.join(DATA_VARIANTS)} and a "
              f"format in {', '.join(prm_examples.FORMATS)}")
  if not runs:
    ch.fail("stage2.runs", runs, "expected at least one 'variant:format' run")
  for k in ("steps", "batch_size", "score_batch", "heldout_problems", "heldout_m"):
    ch.int_range(f"stage2.{k}", 1)
  ch.int_range("stage2.max_new_tokens", 0)
  ch.int_range("stage2.heldout_balance", 0)
  for field, what in (("format_steps", "number of steps"), ("format_batch", "batch size")):
    per_format = ch.get(f"stage2.{field}")
    for fmt, n in (dict(per_format) if per_format else {}).items():
      if fmt not in prm_examples.FORMATS or isinstance(n, bool) or not isinstance(n, int) or n < 1:
        ch.fail(f"stage2.{field}.{fmt}", n, f"expected a format in {', '.join(prm_examples.FORMATS)} mapped to an "
                f"integer {what} >= 1")
  fb = ch.get("stage2.format_batch")
  bs = ch.get("stage2.batch_size", None)
  ch.int_range("stage2.length_buckets", 0, bs if isinstance(bs, int) and not isinstance(bs, bool) else None,
               optional=True)
  lb = ch.get("stage2.length_buckets", 0)
  for fmt, n in (dict(fb) if fb else {}).items():
    if isinstance(lb, int) and isinstance(n, int) and 1 <= n < lb:
      ch.fail("stage2.length_buckets", lb, f"expected at most stage2.format_batch.{fmt}={n} (a batch's micro-batches)")
  ch.float_range("stage2.correct_share", 0.0, 1.0, hi_open=True, optional=True)
  ch.boolean("stage2.disc_until_first_error", optional=True)
  ch.boolean("stage2.disc_balance_classes", optional=True)
  ch.boolean("stage2.disc_gold_step_checks", optional=True)
  ch.optimizer("stage2.optimizer")
  config_check.check_checkpoint(ch)


# ---- models ------------------------------------------------------------------------------------------------------


def train_verifier(config, workdir: Path, cfg, tokenizer, world, init_params, writer, place: common.Placement):
  """The verifier: `init_params` SFT'd on teacher transcripts (verify / reference / critique / merge tasks)."""
  c = config.verifier
  tx, schedule = state_lib.make_optimizer(c.optimizer)
  encoder = wv.VerifierEncoder(world, tokenizer)
  data = wv.verifier_dataset(encoder, config.data.verifier_seed, c.batch_size, c.eps, p_error=c.p_error,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             by_task=c.get("by_task", False), verify_first=c.get("verify_first", 0))
  it = iter(data)
  state = jax.jit(lambda p: state_lib.create_state(p, tx, config.seed + 2), out_shardings=place.state(tx))(
      init_params)
  ckpt = Checkpointer(workdir / "checkpoints" / "verifier", max_to_keep=config.checkpoint.keep)
  resumed = ckpt.resume(state, it.set_state, common.say)
  if resumed is not None:
    state, _ = resumed
    common.say(f"verifier: resumed from step {int(state.step)}")
  step_fn = sft.make_sft_step(cfg, tx, schedule, 1, state_sharding=place.state(tx),
                              batch_sharding=place.rows)
  state = common.train_loop("verifier", state, step_fn, it, c.steps, ckpt, writer, place, config.checkpoint.every,
                            "verifier.batch_size")
  ckpt.close()
  return state.params


def text_model(params, cfg, tokenizer, place, rows: int) -> text_generation.TextModel:
  eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
  decode = lambda ids: tokenizer.decode([t for t in ids if t not in (eos, pad)])
  return text_generation.TextModel(params, cfg, tokenizer.encode, decode, (eos,), pad, rows, place.params, place.mesh)


# ---- stage I -----------------------------------------------------------------------------------------------------


def solutions(generator: text_generation.TextModel, problems: list[arith.Problem], m: int, c, key,
              prefix: str) -> tuple[list[verify_lib.Item], list[int], int, dict]:
  """M sampled solutions per problem as items with exact labels; (items, problem index of each, unreadable,
  {item id: (arith.Problem, arith.Solution)})."""
  texts = generator.sample_texts([arith.prompt_text(p) for p in problems], m, c.max_new_tokens, c.temperature, key,
                                 c.top_p, desc="generate")
  items, owner, unreadable, parsed = [], [], 0, {}
  for i, (p, row) in enumerate(zip(problems, texts)):
    for j, t in enumerate(row):
      steps, answer = arith.parse_solution(t)
      if not steps or answer is None:
        unreadable += 1
        continue
      sol = arith.Solution(tuple(steps), answer)
      fields = wv.solution_fields(p, sol)
      gold_steps, gold_final = wv.gold(p, sol)
      items.append(verify_lib.Item(f"{prefix}{i}-{j}", fields["problem"], tuple(fields["steps"]),
                                   str(fields["answer"]), str(p.answer), tuple(gold_steps), gold_final))
      owner.append(i)
      parsed[items[-1].id] = (p, sol)
  return items, owner, unreadable, parsed


def gold_records(items, parsed: dict) -> list[dict]:
  """The exact-label upper bound of Stage II as a data variant: each solution's exact verdicts and final answer
  verdict, with the world teacher's verification at eps 0 as the rationale, so a PRM-CoT target agrees with its
  labels, and each step's own check (`step_checks`, `arith.step_checks`) for the discriminative PRM
  (`stage2.disc_gold_step_checks`). Not a SPARK variant: it uses the labels SPARK does without."""
  out = []
  for it in items:
    problem, sol = parsed[it.id]
    # eps 0: the teacher draws nothing, so any generator gives the same text.
    text, steps, final = wv.teach_verification(problem, sol, np.random.default_rng(0), 0.0)
    out.append(dict(verify_lib.record(it, "gold", steps, final, text),
                    step_checks=arith.step_checks(problem, sol.steps, sol.answer)))
  return out


def first_errors(steps_list, items) -> list[int | None]:
  """ProcessBench predictions from per-item step verdicts: first incorrect step, -1 if none, None if unread."""
  return [None if s is None or len(s) != len(it.steps) else next((i for i, ok in enumerate(s) if not ok), -1)
          for s, it in zip(steps_list, items)]


def gold_first_error(it: verify_lib.Item) -> int:
  return next((i for i, ok in enumerate(it.gold_verdicts) if not ok), -1)


def quality(items, steps_list, finals) -> dict:
  """Exact-label scores of one way of labelling: step F1 (positive = incorrect step), outcome F1 (positive = wrong
  answer) and the ProcessBench first-error F1."""
  steps_list = [vd.propagate(s) if s is not None else None for s in steps_list]
  gold_steps = [list(it.gold_verdicts) for it in items]
  pb = processbench.score([gold_first_error(it) for it in items], first_errors(steps_list, items))
  return dict(step=vd.step_f1(steps_list, gold_steps), outcome=vd.outcome_f1(finals, [it.gold_final for it in items]),
              processbench=pb)


def phase_cache(directory: Path | None, name: str, fn):
  """fn()'s result, kept in directory/name.pkl once computed, so that a Stage I killed mid-way recomputes only its
  unfinished phases on restart (each phase is deterministic: the kept result is what a recomputation would give).
  directory None: no cache. Written atomically (a kill during the write leaves no name.pkl)."""
  if directory is None:
    return fn()
  f = directory / f"{name}.pkl"
  if f.is_file():
    common.say(f"stage I: {name} read from {f}")
    return pickle.loads(f.read_bytes())
  out = fn()
  directory.mkdir(parents=True, exist_ok=True)
  tmp = f.with_suffix(".tmp")
  tmp.write_bytes(pickle.dumps(out))
  tmp.replace(f)
  return out


def stage1_cache_dir(config, out_dir: Path) -> Path | None:
  """Where Stage I keeps its finished phases: per Stage-I settings, world, seeds and model schedules (another
  config starts afresh). Single-process runs only: on several hosts a phase one process skipped and another ran
  would leave the sampler's collectives unmatched."""
  if jax.process_count() > 1:
    return None
  key = json.dumps([config.stage1.to_dict(), config.world.to_dict(), config.data.to_dict(), config.seed,
                    config.get("sft", {}) and config.sft.to_dict(), config.get("verifier", {}) and
                    config.verifier.to_dict()], sort_keys=True, default=str)
  return out_dir / f"partial-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def stage1_problems(config, world) -> list[arith.Problem]:
  """Stage I's unlabelled problems (the training split of stream `data.stage1_seed`)."""
  return [arith.problem_at(config.data.stage1_seed, i, world) for i in range(config.stage1.problems)]


def stage1(config, workdir: Path, generator, verifier, key, target_len: int) -> tuple[dict, dict]:
  """Stage I on unlabelled problems -> (dataset paths by variant, verifier quality table). `target_len`: the longest
  verification (tokens, eos included), the generation budget when `stage1.verify.max_new_tokens` is 0."""
  c, vc_cfg = config.stage1, config.stage1.verify
  out_dir = workdir / "stage1"
  done = out_dir / "quality.json"
  if done.is_file():
    common.say(f"stage I: found {out_dir}, skipping")
    return {v: out_dir / f"{v}.jsonl" for v in DATA_VARIANTS}, json.loads(done.read_text())
  world = arith.WorldConfig(**config.world)
  problems = stage1_problems(config, world)
  k_gen, k_ver, k_ref, k_mc1, k_mc2 = jax.random.split(key, 5)
  cache = stage1_cache_dir(config, out_dir)
  items, owner, unreadable, parsed = phase_cache(cache, "solutions", lambda: solutions(
      generator, problems, c.m, c.generate, k_gen, "s"))
  if c.balance_per_side:
    items = verify_lib.balance(items, owner, c.balance_per_side, np.random.default_rng(config.seed))
  if not items:
    raise ValueError(f"stage I: none of the generator's {unreadable} solutions could be read (steps and an answer "
                     "line); train the generator longer (config sft.steps)")
  common.say(f"stage I: {len(items)} solutions to verify ({unreadable} generated solutions unreadable, "
             f"{sum(not it.gold_final for it in items)} with an error)")
  vc = verify_lib.VerifyConfig(n=max(c.n_list), temperature=vc_cfg.temperature, top_p=vc_cfg.top_p,
                               max_new_tokens=vc_cfg.max_new_tokens or target_len, style="world",
                               consensus=vd.ConsensusConfig(**c.consensus))

  variants, parts = verify_lib.stage1_variants(verifier, items, vc, (k_ver, k_ref, k_mc1, k_mc2), c.n_list[-1],
                                               lambda name, fn: phase_cache(cache, name, fn))
  samples, verify_seconds = parts["samples"], parts["verify_seconds"]
  rows = len(items) * vc.n
  table = dict(solutions=len(items), with_error=sum(not it.gold_final for it in items), n_max=vc.n,
               verify_seconds=verify_seconds, verifications=rows,
               unparseable=sum(not v.ok for row in samples for _, v in row))
  # Single verification: the first sample of each item.
  single = [verify_lib.labels(row[0][1], len(it.steps)) for it, row in zip(items, samples)]
  table["single"] = quality(items, [s for s, _ in single], [f for _, f in single])
  # How good each sample is on its own and how much they disagree: what voting has to work with.
  table["sampled"] = stage_report.sampled_diagnostics(items, samples)
  # Self-consistency with the first n samples.
  for n in c.n_list:
    cons = verify_lib.consistency_records(items, samples, vc.consensus, n)
    table[f"step_consensus@{n}"] = quality(items, [s.steps for s in cons["_step"]], [s.final for s in cons["_step"]])
    table[f"outcome_consensus@{n}"] = quality(
        items, [verify_lib.labels(samples[i][o.chosen][1], len(it.steps))[0] if o.chosen is not None else None
                for i, (it, o) in enumerate(zip(items, cons["_outcome"]))], [o.final for o in cons["_outcome"]])
  # Meta-critique of a single verification, and of the outcome-consensus verification.
  for name, merged in parts["merged"].items():
    labels = [verify_lib.labels(v, len(it.steps)) for it, (_, v, _) in zip(items, merged)]
    table[name] = quality(items, [s for s, _ in labels], [f for _, f in labels])
  # Reference-guided baseline: one verification whose prompt holds the expected answer.
  labels = [verify_lib.labels(row[0][1], len(it.steps)) for it, row in zip(items, parts["reference"])]
  table["reference_guided"] = quality(items, [s for s, _ in labels], [f for _, f in labels])
  variants["gold"] = gold_records(items, parsed)
  # Solutions whose labels could not be formed (no parseable vote / merged output) are counted, not hidden.
  table["records"] = {k: len(v) for k, v in variants.items()}
  table["left_out"] = {k: len(items) - len(v) for k, v in variants.items()}
  paths = verify_lib.write_variants(out_dir, variants) if distributed.is_main() else {
      v: out_dir / f"{v}.jsonl" for v in variants}
  if distributed.is_main():
    done.write_text(json.dumps(table, indent=2))
    if cache is not None:
      shutil.rmtree(cache, ignore_errors=True)  # Stage I is complete: its phases are not read again
  distributed.barrier("stage1")
  return paths, table


# ---- stage II ----------------------------------------------------------------------------------------------------


def heldout(config, generator, key) -> list[verify_lib.Item]:
  """The held-out world ProcessBench: generator solutions with exact first-error labels to problems of the world's
  held-out split, which the generator's, the verifier's and Stage I's streams never draw."""
  c = config.stage2
  world = arith.WorldConfig(**config.world)
  problems = [arith.problem_at(config.data.heldout_seed, i, world, "heldout") for i in range(c.heldout_problems)]
  items, owner, _, _ = solutions(generator, problems, c.heldout_m, config.stage1.generate, key, "h")
  if c.heldout_balance:
    items = verify_lib.balance(items, owner, c.heldout_balance, np.random.default_rng(config.seed + 7))
  return items


def heldout_summary(config, world, items) -> dict:
  """Sizes of the held-out set, and how many of its distinct problems Stage I drew (0 by construction, counted)."""
  seen = {p.text() for p in stage1_problems(config, world)}
  problems = {it.problem for it in items}
  return dict(solutions=len(items), with_error=sum(not it.gold_final for it in items), distinct_problems=len(problems),
              distinct_problems_in_stage1=len(problems & seen))


def score_prm(params, cfg, tokenizer, fmt: str, items, max_new_tokens: int, batch: int) -> tuple[dict, list]:
  """ProcessBench metric of a trained PRM on the held-out items (and outcome F1 from its final verdicts)."""
  records = [dict(id=it.id, problem=it.problem, steps=list(it.steps), answer=it.answer) for it in items]
  preds, finals = prm_scorers.predict(params, cfg, tokenizer, fmt, records, max_new_tokens=max_new_tokens, batch=batch)
  labels = [gold_first_error(it) for it in items]
  res = processbench.score(labels, preds) if fmt != "orm" else {}
  res["outcome"] = vd.outcome_f1(finals, [it.gold_final for it in items])
  return res, preds


def run_schedule(c, fmt: str):
  """(steps, optimizer config) of a Stage II run of format `fmt`: `stage2.format_steps[fmt]` when set, with the
  schedule stretched to it (total_steps = steps), else `stage2.steps` and `stage2.optimizer` as they are."""
  steps = (c.get("format_steps") or {}).get(fmt)
  if steps is None:
    return c.steps, c.optimizer
  optimizer = ml_collections.ConfigDict(c.optimizer.to_dict())
  optimizer.total_steps = steps
  return steps, optimizer


def run_batch(c, fmt: str) -> int:
  """Rows per update of a Stage II run of format `fmt`: `stage2.format_batch[fmt]` when set, else
  `stage2.batch_size`."""
  return (c.get("format_batch") or {}).get(fmt, c.batch_size)


def run_records(run: str, path, label_field: str) -> tuple[list[dict], int]:
  """The usable records of Stage II run `run` from its variant's Stage-I file, and how many were left out (wrong
  schema, or without the run's `label_field`, `RunPlan.label_field`: a file from an older run); each kind is
  reported."""
  records, bad = prm_examples.load_records(path)
  if bad:
    common.say(f"stage II {run}: {len(bad)} records of {path} left out: {bad[:2]}")
  unlabelled = [r.get("id") for r in records if label_field not in r]
  if unlabelled:
    common.say(f"stage II {run}: {len(unlabelled)} records of {path} have no {label_field!r} (a file from an older "
               f"run?), left out: {unlabelled[:2]}")
    records = [r for r in records if label_field in r]
  return records, len(bad) + len(unlabelled)


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """How a Stage II run trains: its format, label field, share of repeated all-correct rows, discriminative options
  (`prm_train.train_prm`'s until_first_error / balance_classes), steps, optimizer config and batch (rows)."""
  fmt: str
  label_field: str
  share: float
  disc: dict
  steps: int
  optimizer: Any
  batch: int


def run_plan(c, variant: str, fmt: str) -> RunPlan:
  """The `RunPlan` of a Stage II run from the config's `stage2` fields."""
  # The exact-label discriminative PRM may train on each step's own check rather than the propagated verdicts
  # that verifiers (and so the SPARK variants) give: the ProcessBench label is the same (README).
  label_field = ("step_checks" if fmt == "disc" and variant == "gold" and c.get("disc_gold_step_checks", False)
                 else "verdicts")
  share = c.get("correct_share", 0.0) if fmt in prm_examples.GENERATIVE_FORMATS else 0.0
  disc = (dict(until_first_error=c.get("disc_until_first_error", False),
               balance_classes=c.get("disc_balance_classes", False)) if fmt == "disc" else {})
  steps, optimizer = run_schedule(c, fmt)
  return RunPlan(fmt, label_field, share, disc, steps, optimizer, run_batch(c, fmt))


def run_fingerprint(records, plan: RunPlan) -> str:
  """One (training data, schedule) of a run: records changed since (a Stage-I file rewritten) or another schedule
  train a fresh PRM rather than resuming the old one or keeping its result. The share joins only when set, so runs
  without it keep their checkpoints' names."""
  key = [records, plan.steps, plan.batch, plan.optimizer.to_dict(), plan.disc, plan.label_field]
  return hashlib.sha256(json.dumps(key + ([plan.share] if plan.share else []), sort_keys=True,
                                   default=str).encode()).hexdigest()[:12]


def train_run(c, cfg, tokenizer, base_params, records, plan: RunPlan, seed: int, writer=None, ckpt=None,
              checkpoint_every: int = 100):
  """Trains one Stage II PRM from `base_params` on `records` as `plan` says (`prm_train.train_prm`, micro-batched by
  `stage2.length_buckets`); returns (params, metrics history, training rows)."""
  label_ids = prm_examples.label_token_ids(tokenizer) if plan.fmt == "disc" else None
  examples = (prm_examples.encode_discriminative(tokenizer, records, label_field=plan.label_field)
              if plan.fmt == "disc" else
              prm_examples.encode_examples(tokenizer, prm_examples.repeat_correct(records, plan.share), plan.fmt,
                                           "world"))
  params, history = prm_train.train_prm(base_params, cfg, examples, plan.fmt, plan.optimizer, plan.steps, plan.batch,
                                        seed, writer=writer, label_ids=label_ids, ckpt=ckpt,
                                        checkpoint_every=checkpoint_every,
                                        length_buckets=c.get("length_buckets", 0), **plan.disc)
  return params, history, len(examples["tokens"])


PRM_META = "prm.json"  # read by spark_rl.load_world_prm


def prm_dir_name(run: str) -> str:
  """The directory under WORKDIR/prms of the Stage II run "variant:format" ("variant_format")."""
  return run.replace(":", "_")


def save_prm(params, cfg, tokenizer, out_dir: Path, meta: dict | None = None):
  """A trained PRM as a Hugging Face directory (config.json, model.safetensors, the world tokenizer, and `meta` --
  its data variant, format and world -- as prm.json), for Stage III and `sparkjax.eval.processbench --format`. A
  PRM trained again replaces its directory only once the new one is complete."""
  host = jax.tree.map(common.host, params)  # a gather every process joins, before only the main one writes
  if not distributed.is_main():
    return
  tmp = out_dir.with_name(out_dir.name + ".new")
  if tmp.exists():
    shutil.rmtree(tmp)
  def extra(d):
    tokenizer.save_pretrained(str(d))
    if meta is not None:
      (Path(d) / PRM_META).write_text(json.dumps(meta, indent=2))

  hf.save_params(host, cfg, tmp, extra_files=extra)
  if out_dir.exists():
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)


def stage2(config, workdir: Path, cfg, tokenizer, base_params, paths: dict, items, writer, target_len: int) -> dict:
  """Trains one PRM per (data variant, format) in `stage2.runs` and scores it; results kept per run."""
  c = config.stage2
  results_path = workdir / "stage2.json"
  results = json.loads(results_path.read_text()) if results_path.is_file() else {}
  for run in c.runs:
    variant, fmt = run.split(":")
    if variant not in paths:
      raise ValueError(f"config stage2.runs names {variant!r}; known data variants: {', '.join(paths)}")
    plan = run_plan(c, variant, fmt)
    records, left_out = run_records(run, paths[variant], plan.label_field)
    fingerprint = run_fingerprint(records, plan)
    if run in results and results[run].get("fingerprint") == fingerprint:
      common.say(f"stage II {run}: done before (ProcessBench F1 {_num(results[run].get('f1'))})")
      continue
    if run in results:
      common.say(f"stage II {run}: its records or schedule changed since its kept result (or that result names "
                 "none); training it again")
    if not records:  # reported in the table; the other runs go on
      common.say(f"stage II {run}: no usable record in {paths[variant]}; not trained")
      results[run] = dict(error=f"no usable record in {paths[variant]}", train_records=0, fingerprint=fingerprint,
                          bad_records=left_out, outcome=dict(f1=None))
      continue
    t0 = time.time()
    ckpt = Checkpointer(workdir / "checkpoints" / "prm" / f"{prm_dir_name(run)}-{fingerprint}",
                        max_to_keep=config.checkpoint.keep)
    try:
      params, history, rows = train_run(c, cfg, tokenizer, base_params, records, plan, config.seed, writer=writer,
                                        ckpt=ckpt, checkpoint_every=config.checkpoint.every)
    finally:
      ckpt.close()
    res, _ = score_prm(params, cfg, tokenizer, fmt, items, c.max_new_tokens or target_len, c.score_batch)
    prm_dir = workdir / "prms" / prm_dir_name(run)
    save_prm(params, cfg, tokenizer, prm_dir, dict(variant=variant, format=fmt, world=config.world.to_dict()))
    res.update(fingerprint=fingerprint, train_records=len(records), train_rows=rows,
               correct_share=plan.share, bad_records=left_out, label_field=plan.label_field,
               train_steps=plan.steps, train_batch=plan.batch, train_seconds=time.time() - t0,
               final_loss=history[-1]["loss"] if history else None, prm_dir=str(prm_dir))
    results[run] = res
    common.say(f"stage II {run}: ProcessBench F1 {_num(res.get('f1'))} (acc_err {_num(res.get('acc_err'))}, "
               f"acc_cor {_num(res.get('acc_cor'))}), outcome F1 {_num(res['outcome']['f1'], 3)}; {len(records)} "
               f"records, {time.time() - t0:.0f}s")
    if distributed.is_main():
      results_path.write_text(json.dumps(results, indent=2))
  return results


# ---- the run -----------------------------------------------------------------------------------------------------


def run(config, workdir: str) -> dict:
  """The whole pipeline; writes summary.json (every figure, `headline` and `claims` first), results.md (the
  table) and f1_vs_n.png (Stage I F1 against N) into the workdir, and returns the summary."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  seconds, t = {}, time.time()

  def lap(phase: str):
    nonlocal t
    seconds[phase] = round(time.time() - t, 1)
    t = time.time()

  world, tokenizer = arith_rl.world_and_tokenizer(config, workdir)
  encoder = world_data.WorldEncoder(world, tokenizer, "steps")
  cfg = arith_rl.model_config(config, tokenizer)
  place = common.Placement(config, cfg)
  writer = metrics_lib.Writer(workdir / "tensorboard", enabled=distributed.is_main())
  template, slot, once = encoder.answer_template()
  eval_batch = place.replicate(world_data.eval_set(encoder, config.data.eval_seed, config.data.eval_size))
  evaluate = arith_rl.make_evaluator(cfg, encoder, make_suffix_reward(template, slot, once), eval_batch,
                                     encoder.solution_len)
  common.say(f"model: {cfg.num_params() / 1e6:.2f}M params")

  gen_params, acc, greedy = arith_rl.sft_phase(config, workdir, cfg, encoder, evaluate, writer, place)
  common.say(f"generator: held-out accuracy {acc:.3f} (sampled), {greedy:.3f} (greedy)")
  lap("generator")
  ver_params = train_verifier(config, workdir, cfg, tokenizer, world, gen_params, writer, place)
  lap("verifier")
  key = jax.random.key(config.seed + 11)
  generator = text_model(gen_params, cfg, tokenizer, place, config.stage1.rows)
  verifier = text_model(ver_params, cfg, tokenizer, place, config.stage1.rows)
  target_len = wv.VerifierEncoder(world, tokenizer).target_len
  paths, quality_table = stage1(config, workdir, generator, verifier, jax.random.fold_in(key, 1), target_len)
  lap("stage1")
  items = heldout(config, generator, jax.random.fold_in(key, 2))
  common.say(f"held-out world ProcessBench: {len(items)} solutions, {sum(not it.gold_final for it in items)} with "
             "an error")
  lap("heldout")
  results = stage2(config, workdir, cfg, tokenizer, gen_params, paths, items, writer, target_len)
  lap("stage2")
  writer.close()
  # A phase skipped because its output was found (a resumed run) shows the seconds of that skip.
  seconds["total"] = round(sum(seconds.values()), 1)
  n_list = list(config.stage1.n_list)
  claim_list = stage_report.claims(quality_table, results, n_list)
  summary = dict(headline=stage_report.headline(quality_table, results, n_list), claims=claim_list,
                 seconds=seconds, generator=dict(accuracy=acc, greedy_accuracy=greedy), stage1=quality_table,
                 stage2=results, heldout=heldout_summary(config, world, items))
  md = stage_report.table_markdown(quality_table, results, claim_list)
  if distributed.is_main():
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    (workdir / "results.md").write_text(md + "\n")
    stage_report.plot_f1_vs_n(quality_table, n_list, workdir / "f1_vs_n.png")
    print(md)
    common.say("phase seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
  return summary
