"""SPARK-PRM Stage III at the paper's scale: GRPO of Qwen2.5-Math-7B (after its format SFT) with a 14B generative
PRM-CoT as the reward, sized for a TPU slice (pipeline `hf_grpo` with `reward.kind = "prm"`).

Command:   on every worker of the slice: python -m sparkjax.main --config=configs/qwen25_math_7b_spark_prm.py:\\
               model_dir=POLICY,prm_dir=PRM --workdir=WORKDIR   (launch_tpu/up.sh starts it)
           Memory plan: python -m sparkjax.tools.plan --config configs/qwen25_math_7b_spark_prm.py --topology v5p-64
Hardware:  the plan, with libtpu 0.0.42.1 (XLA compiled for each topology; mesh data=1, fsdp=-1, tp=4), per chip:
           v5p-32 (16 chips, the smallest v5p slice it fits): policy sampler 77.99 GiB of 95 (KV cache 56.00), GRPO
           update 61.78 GiB, the PRM's decode of 64 rollouts per call 59.46 GiB (the policy's state and the PRM's
           1.72 GiB of bf16 weights resident in each): FITS. v5p-64: 39.38 / 34.73 / 30.25 GiB. v5p-16: DOES NOT
           FIT (the sampler needs >= 120.8 GiB of temporaries). 256 rollouts per PRM call do not fit on v5p-64
           (107.54 GiB: the prefill's attention scores over 4,608-token inputs), hence prm_rows 64.
Args:      model_dir=PATH (the format-SFT'd policy), prm_dir=PATH (a Qwen2.5-14B-Instruct PRM-CoT trained in Stage
           II), design=process_outcome|step_augmented, microbatches=N.
Not run:   no TPU is available to this project; the same pipeline runs on the CPU with small models through
           configs/hf_grpo_prm_cpu.py.

The paper's settings (shared/papers/spark-prm.md, Stage III): the RLVR config's GRPO (configs/qwen25_math_7b_grpo.py:
256 prompts x 16 samples, 2048 + 2048 tokens, lr 1e-6, KL 0.001 k3, clip 0.2); the PRM decoded greedily on each
rollout; the format constraint with 4-20 step guards. The PRM is scored on the host side of the split iteration
(`spark.host_prm_reward`), so the designs are the scalar ones; the token-level designs run in the world's device path.
"""

import importlib.util
from pathlib import Path

from sparkjax.config_args import SPARK_FORMAT_INSTRUCTION, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, microbatches=64, model_dir="", prm_dir="", design="process_outcome")
  spec = importlib.util.spec_from_file_location("_rlvr_7b", Path(__file__).with_name("qwen25_math_7b_grpo.py"))
  rlvr = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(rlvr)
  c = rlvr.get_config(f"microbatches={arg.microbatches},model_dir={arg.model_dir}")
  c.data.template = SPARK_FORMAT_INSTRUCTION
  # The PRM input: the verifier prompt around the policy's prompt and response (<= 2048 + 2048 tokens) plus its
  # instructions; the PRM-CoT writes a rationale and a verdict per step, up to 2048 tokens. 64 rollouts per call:
  # 64 calls score an iteration's 4096 rollouts.
  c.reward.update(kind="prm", prm_dir=arg.prm_dir, prm_format="prm_cot", design=arg.design, min_steps=4,
                  max_steps=20, prm_max_new_tokens=2048, prm_rows=64)
  c.reward.prm_preset = "qwen25_14b"  # the PRM's shapes, for the memory plan
  c.reward.prm_max_prompt_len = 4608
  return c
