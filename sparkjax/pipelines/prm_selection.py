"""The selection set of the `spark_prm` pipeline, and one Stage II run trained again and scored on it
(`sparkjax.tools.prm_selection` is the command line; README "The selection set").

The selection set is where the config's Stage II choices (batch, steps, share, learning rate) are made: the
generator's solutions (m per problem, sampled as Stage I samples them, key `SELECTION_KEY`) to training-split problems
of stream `SELECTION_STREAM` that Stage I never drew, so neither the PRMs' training data nor the held-out ProcessBench
the table reports is looked at.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

SELECTION_STREAM = 97  # no config stream uses it (data.*_seed are 1-6)
SELECTION_KEY = 123
# Draws scanned for distinct unseen problems: the config's world has 475 problems, 380 of them in the training split.
SCAN = 20000


def selection_problems(config, world, limit: int = 0) -> list:
  """Distinct training-split problems of stream `SELECTION_STREAM` that Stage I never drew, in stream order."""
  from sparkjax.data import arith
  from sparkjax.pipelines import spark_prm

  seen = {p.text() for p in spark_prm.stage1_problems(config, world)}
  out, texts = [], set()
  for i in range(SCAN):
    p = arith.problem_at(SELECTION_STREAM, i, world)
    if p.text() not in seen and p.text() not in texts:
      texts.add(p.text())
      out.append(p)
      if limit and len(out) == limit:
        break
  return out


def selection_items(config, workdir: Path, generator, world, m: int, limit: int = 0) -> list:
  """The selection set's solutions with exact labels (`spark_prm.solutions`), kept in the workdir after the first
  call with the same m and limit."""
  import jax

  from sparkjax.pipelines import spark_prm

  path = workdir / f"selection_items-m{m}{f'-p{limit}' if limit else ''}.json"
  if path.is_file():
    rows = json.loads(path.read_text())
    return [spark_prm.verify_lib.Item(*[tuple(x) if isinstance(x, list) else x for x in row]) for row in rows]
  problems = selection_problems(config, world, limit)
  items, _, _, _ = spark_prm.solutions(generator, problems, m, config.stage1.generate, jax.random.key(SELECTION_KEY),
                                       "d")
  path.write_text(json.dumps([dataclasses.astuple(it) for it in items]))
  return items


def run(config, workdir: Path, run_name: str, seed: int | None, m: int, limit: int) -> dict:
  """Trains `run_name` as the pipeline would and scores it on the selection set; returns the result dict."""
  from sparkjax.data import world_data
  from sparkjax.data.grading import make_suffix_reward
  from sparkjax.pipelines import arith_rl, common, spark_prm
  from sparkjax.spark import world_verifier as wv
  from sparkjax.train import metrics as metrics_lib

  variant, _, fmt = run_name.partition(":")
  if variant not in spark_prm.DATA_VARIANTS or fmt not in spark_prm.prm_examples.FORMATS:
    raise ValueError(f"--run={run_name}: expected 'variant:format' with a variant in "
                     f"{', '.join(spark_prm.DATA_VARIANTS)} and a format in "
                     f"{', '.join(spark_prm.prm_examples.FORMATS)}")
  stage1_file = workdir / "stage1" / f"{variant}.jsonl"
  if not (workdir / "stage1" / "quality.json").is_file() or not stage1_file.is_file():
    raise ValueError(f"--workdir={workdir}: no complete Stage I there ({stage1_file} or stage1/quality.json is "
                     "missing); run the spark_prm pipeline on it first")
  world, tokenizer = arith_rl.world_and_tokenizer(config, workdir)
  encoder = world_data.WorldEncoder(world, tokenizer, "steps")
  cfg = arith_rl.model_config(config, tokenizer)
  place = common.Placement(config, cfg)
  template, slot, once = encoder.answer_template()
  eval_batch = place.replicate(world_data.eval_set(encoder, config.data.eval_seed, config.data.eval_size))
  evaluate = arith_rl.make_evaluator(cfg, encoder, make_suffix_reward(template, slot, once), eval_batch,
                                     encoder.solution_len)
  off = metrics_lib.Writer(workdir / "tensorboard", enabled=False)
  gen_params, _, _ = arith_rl.sft_phase(config, workdir, cfg, encoder, evaluate, off, place)  # resumes: trained
  generator = spark_prm.text_model(gen_params, cfg, tokenizer, place, config.stage1.rows)
  items = selection_items(config, workdir, generator, world, m, limit)
  c = config.stage2
  plan = spark_prm.run_plan(c, variant, fmt)
  records, left_out = spark_prm.run_records(run_name, stage1_file, plan.label_field)
  if not records:
    raise ValueError(f"--run={run_name}: no usable record in {stage1_file}")
  seed = config.seed if seed is None else seed
  t0 = time.time()
  params, history, rows = spark_prm.train_run(c, cfg, tokenizer, gen_params, records, plan, seed)
  target_len = wv.VerifierEncoder(world, tokenizer).target_len
  res, _ = spark_prm.score_prm(params, cfg, tokenizer, fmt, items, c.max_new_tokens or target_len, c.score_batch)
  return dict(run=run_name, seed=seed, steps=plan.steps, batch=plan.batch, lr=plan.optimizer.lr,
              f1=res.get("f1"), acc_err=res.get("acc_err"), acc_cor=res.get("acc_cor"),
              outcome_f1=res["outcome"]["f1"], selection_solutions=len(items),
              selection_with_error=sum(not it.gold_final for it in items),
              selection_problems=len({it.problem for it in items}), train_records=len(records), train_rows=rows,
              left_out_records=left_out, final_loss=history[-1]["loss"] if history else None,
              seconds=round(time.time() - t0, 1))
