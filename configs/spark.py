"""The main job: the whole SPARK-PRM pipeline in the arithmetic world (pipeline `spark`, sparkjax/pipelines/spark.py).

Command:   python -m sparkjax.main --config=configs/spark.py --workdir=/tmp/sparkjax_spark
Smoke:     python -m sparkjax.main --config=configs/spark.py:runlocal --workdir=/tmp/sparkjax_spark_smoke
Hardware:  a 2-core CPU; see README (top) for the measured time and printed comparison.
Args:      runlocal (a seconds-to-minutes smoke run), iterations=N (Stage III GRPO iterations).

Generator SFT -> verifier -> Stage I (self-consistency labels on 768 unlabelled problems) -> a PRM-CoT on the
step-consistency labels (Stage II, scored on held-out problems) -> Stage III: GRPO with that PRM-CoT as the reward
beside the RLVR baseline, from one policy SFT'd with misconceptions. configs/spark_prm.py (Stages I-II in full) and
configs/spark_rl.py (every reward and design) are the larger experiments this one is cut from.
Restart the same command after a crash or kill: every stage resumes from what it left in the workdir.
"""

import importlib.util
from pathlib import Path

from sparkjax.config_args import parse_arg


def _sibling(name: str):
  spec = importlib.util.spec_from_file_location(f"_sparkjax_config_{name}", Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, iterations=300)
  spark_prm, spark_rl = _sibling("spark_prm"), _sibling("spark_rl")
  c = spark_prm.get_config("runlocal" if arg.runlocal else None)
  c.pipeline = "spark"
  if not arg.runlocal:
    # Stages I-II cut to what Stage III needs, one PRM-CoT (the format the paper's RL uses).
    # 768 problems x 4 solutions x 8 verifications; the PRM-CoT's 500 steps as configs/spark_prm.py's. With 384
    # problems and 300 steps (one run, AMD EPYC, 10 min 42 s in all) the PRM-CoT scored F1 58.3 and GRPO with it
    # fell to 9.3% greedy held-out accuracy.
    c.stage1.update(problems=768, n_list=[1, 4, 8])
    c.stage2.runs = ["step_consistency:prm_cot"]
    c.stage2.update(heldout_problems=200)
  else:
    c.stage2.runs = ["step_consistency:prm_cot"]
  spark_rl.stage3_fields(c, arg.iterations, ("rlvr", "step_consistency_prm_cot"))
  if arg.runlocal:
    spark_rl.stage3_smoke(c)
  return c
