"""SPARK-PRM Stage III in the arithmetic world (pipeline `spark_rl`, sparkjax/pipelines/spark_rl.py): GRPO with the
PRMs of a `configs/spark_prm.py` run as the reward, beside RLVR and a random reward, from one SFT'd policy.

Command:   python -m sparkjax.main --config=configs/spark_prm.py --workdir=/tmp/spark_prm       # the PRMs
           python -m sparkjax.main --config=configs/spark_rl.py --workdir=/tmp/spark_rl \\
               --config.stage3.prm_root=/tmp/spark_prm/prms
Smoke:     add `:runlocal` (tiny sizes; still needs a prm_root holding the PRMs its runs name).
Hardware:  a 2-core CPU. Expect: see README "SPARK-PRM Stage III in the world" for the measured table and time.
Args:      runlocal, iterations=N.

The world must be the one the PRMs were trained in (configs/spark_prm.py's; checked against each PRM's prm.json and
tokenizer). The policy's demonstrator has misconceptions (facts it always gets wrong), so RL has errors to remove
that a greedy policy inherited. Every run starts from the same SFT checkpoint with the same prompts, seeds and
iterations; held-out accuracy is measured on the world's held-out problems, which no training stream draws.
"""

import ml_collections

from sparkjax.config_args import grpo_loss_fields, optimizer_config, parse_arg


def stage3_fields(c, iterations: int, runs: tuple[str, ...]):
  """The Stage III blocks (policy, rl, stage3), shared with configs/spark.py."""
  # The policy: the PRMs' model size, SFT'd in the RL format on demonstrations with misconceptions 0.2 (one fact in
  # five always off by one) and the imperfect generator's slips (p_error 0.5).
  c.policy = ml_collections.ConfigDict(dict(misconceptions=0.2, train_seed=7))
  c.policy.sft = ml_collections.ConfigDict(dict(steps=300, batch_size=64, accum=1, p_error=0.5))
  c.policy.sft.optimizer = optimizer_config(3e-3, 300, warmup_steps=20, schedule="cosine")

  c.rl = ml_collections.ConfigDict()
  c.rl.iterations = iterations
  c.rl.batch_size = 128  # 16 prompts x 8 samples
  c.rl.group_size = 8
  c.rl.update(grpo_loss_fields())
  c.rl.eval_every = 20
  # lr 3e-4: of two pilots (RLVR and PRM-CoT, 300 iterations, one run each, AMD EPYC), 1e-4 left RLVR's greedy
  # accuracy where SFT left it (0.570) and 3e-4 moved it (training answer accuracy 0.44 -> 0.62).
  c.rl.optimizer = optimizer_config(3e-4, iterations, schedule="constant")

  c.stage3 = ml_collections.ConfigDict()
  c.stage3.prm_root = ""  # a directory of PRM directories (spark_prm's WORKDIR/prms)
  # REWARD[/DESIGN][/format_off]: REWARD is rlvr, random or a PRM directory name; DESIGN one of
  # spark.rewards.REWARD_DESIGNS (default process_outcome); format_off drops the format constraint (hack control).
  c.stage3.runs = runs
  # Format guards: the world's problems have 2-3 operations, one step each (checked against the world).
  c.stage3.min_steps = 2
  c.stage3.max_steps = 3
  c.stage3.prm_max_new_tokens = 0  # 0 = the longest verification the world's format can produce
  c.stage3.disc_threshold = 0.5
  c.stage3.rl_seed = 8
  # 0, 1, 2, ...: another RL replicate from the same SFT policy (other prompt order and sampling keys); copy a
  # finished workdir's stage3/checkpoints/policy_sft (and tokenizer) into the new workdir to skip the SFT.
  c.stage3.replicate = 0
  c.stage3.eval_seed = 9
  c.stage3.eval_size = 256  # distinct held-out problems (the small world's held-out split has 107)
  c.stage3.eval_samples = 8


# A tuple, so that --config.stage3.runs="('rlvr', 'step_consistency_prm_cot')" can override it.
RUNS = ("rlvr", "random", "step_consistency_prm_cot", "step_consistency_prm", "step_consistency_orm",
        "step_consistency_disc", "step_consistency_prm_cot/step_augmented",
        "step_consistency_prm_cot/selective_advantage", "step_consistency_prm_cot/global_step",
        "step_consistency_prm_cot/process_outcome/format_off")


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, iterations=300)
  c = ml_collections.ConfigDict()
  c.pipeline = "spark_rl"
  c.seed = 0
  # configs/spark_prm.py's world and model: the PRMs' (a PRM reads the policy's tokens, so the vocabulary and the
  # problems must be theirs).
  c.world = ml_collections.ConfigDict(dict(min_ops=2, max_ops=3, max_operand=3, max_value=12, ops="+-",
                                           heldout_every=5))
  c.model = ml_collections.ConfigDict(dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                                           num_kv_heads=1, dtype="float32"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tp=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2))
  stage3_fields(c, arg.iterations, RUNS)
  if arg.runlocal:
    stage3_smoke(c)
    c.checkpoint.every = 1
  return c


def stage3_smoke(c):
  """The Stage III blocks at smoke size (`:runlocal`), shared with configs/spark.py."""
  c.policy.sft.update(steps=60, batch_size=32)
  c.policy.sft.optimizer.total_steps = 60
  c.rl.update(iterations=2, batch_size=32, group_size=4, eval_every=1)  # 8 prompts: split over up to 8 devices
  c.rl.optimizer.total_steps = 2
  c.stage3.update(eval_size=8, eval_samples=2)
