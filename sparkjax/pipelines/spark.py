"""Pipeline `spark`: the whole SPARK-PRM method in the arithmetic world, every stage scored against exact labels.

  1. Stages I-II (`spark_prm`): generator SFT, verifier, Stage I (self-consistency, meta-critique, reference-guided
     labels), Stage II PRMs, each scored with the ProcessBench metric on held-out problems;
  2. Stage III (`spark_rl`): a policy SFT'd with misconceptions, then GRPO with a Stage-II PRM as the reward beside
     the RLVR baseline, from the same checkpoint and budget;
  3. the comparison: held-out greedy and sampled accuracy, the PRM's F1, the hack rate (summary.json, printed).
Each stage resumes from what it left in the workdir, so a killed run restarted with the same command continues.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparkjax import config_check, distributed
from sparkjax.pipelines import arith_rl, common, spark_prm, spark_rl
from sparkjax.spark import stage3_report


def check_config(ch: config_check.Checks):
  """spark_prm's fields, Stage III's, and that every PRM a Stage III run names is one Stage II trains."""
  spark_prm.check_config(ch)
  spark_rl.check_stage3(ch, ch.mesh())
  trained = {spark_prm.prm_dir_name(str(r)) for r in (ch.get("stage2.runs", None) or [])}
  for spec in spark_rl.run_specs(ch):
    if spec.reward not in spark_rl.BASELINES and spec.reward not in trained:
      ch.fail("stage3.runs", spec.name, f"names PRM {spec.reward!r}, which stage2.runs does not train (it trains "
              f"{', '.join(sorted(trained)) or 'none'}; a run VARIANT:FORMAT is saved as VARIANT_FORMAT)")


def comparison(prm_summary: dict, report: dict) -> dict:
  """The main job's headline: per Stage III run, held-out greedy / sampled accuracy after SFT and after RL, its
  PRM's ProcessBench F1 (Stage II) and the hack rate; plus the verifier's sampled step accuracy."""
  stage2 = {spark_prm.prm_dir_name(k): v for k, v in prm_summary["stage2"].items()}
  rows = {}
  for name, r in report["runs"].items():
    f1 = stage2.get(r["reward"], {}).get("f1")  # None for the baselines
    last = r["history"][str(report["iterations"])]
    rows[name] = dict(greedy_accuracy=last["greedy_accuracy"], accuracy=last["accuracy"], prm_processbench_f1=f1,
                      hack_rate=stage3_report.hack_rate(r),
                      prm_false_positive=r["train"].get("score_prm_false_positive", {}).get("end"))
  return dict(sft=dict(greedy_accuracy=report["sft"]["greedy_accuracy"], accuracy=report["sft"]["accuracy"]),
              runs=rows, verifier_sampled_step_accuracy=prm_summary["headline"].get("verifier_sampled_step_accuracy"))


def comparison_text(comp: dict) -> str:
  pct = lambda x: "—" if x is None else f"{100 * x:.1f}"
  lines = ["| Stage III reward | held-out greedy % | held-out sampled % | PRM ProcessBench F1 | hack rate % |",
           "|---|---|---|---|---|",
           f"| (SFT policy) | {pct(comp['sft']['greedy_accuracy'])} | {pct(comp['sft']['accuracy'])} | | |"]
  for name, r in comp["runs"].items():
    f1 = "—" if r["prm_processbench_f1"] is None else f"{r['prm_processbench_f1']:.1f}"
    lines.append(f"| {name} | {pct(r['greedy_accuracy'])} | {pct(r['accuracy'])} | {f1} | {pct(r['hack_rate'])} |")
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  workdir = Path(workdir)
  prm_summary = spark_prm.run(config, str(workdir))
  world, tokenizer = arith_rl.world_and_tokenizer(config, workdir)
  cfg = arith_rl.model_config(config, tokenizer)
  place = common.Placement(config, cfg)
  report = spark_rl.stage3(config, workdir, workdir / "prms", cfg, tokenizer, place)
  comp = comparison(prm_summary, report)
  summary = dict(comparison=comp, stage3_claims=report["claims"], stage3_seconds={
      k: v["seconds"] for k, v in report["runs"].items()} | dict(policy_sft=report["sft"]["seconds"]))
  if distributed.is_main():
    (workdir / "spark_summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + comparison_text(comp))
  return summary
