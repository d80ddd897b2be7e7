"""CPU debug config of SPARK-PRM Stage III on real text (pipeline `hf_grpo` with `reward.kind = "prm"`): a small real
model as both the policy and, frozen, the generative PRM (`reward.prm_dir = "@policy"`), on GSM8K, with the format
constraint and the paper's step guards; the PRM is decoded greedily on the host side of the split iteration.

Command:   python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --gguf-only   # once: the cached GGUF
           python -m sparkjax.main --config=configs/hf_grpo_prm_cpu.py --workdir=/tmp/hf_grpo_prm_cpu
Hardware:  any CPU with ~20 GB of memory.
Measured:  on the 2-core AMD EPYC, Qwen2.5-Coder-0.5B-Instruct as policy and, frozen, PRM (the defaults): 5 min 54 s
           for the 3 iterations (54-71 s each) with the GGUF conversion, peak RSS 17.4 GB. One of the 24 rollouts was
           format-valid and went to the PRM, whose output the parser could not read: every reward 0, held-out greedy
           accuracy 1/4 before and after.
Args:      iterations=N (default 3), model_dir=PATH (a HF directory instead of the cached GGUF), prm_dir=PATH (a
           trained generative PRM instead of the policy's own weights).

This checks the path (prompting for the format, the format check on decoded text, the PRM prompt in the verifier
format, greedy PRM decoding, host verdict parsing, rewards, update), not learning: an instruct model that was not
trained as a verifier rarely writes verdicts the parser can read, and those rows earn 0 (counted as
score_prm_parsed).
"""

from pathlib import Path

from sparkjax.config_args import SPARK_FORMAT_INSTRUCTION, parse_arg, qwen_coder_cpu_grpo

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, iterations=3, model_dir="", prm_dir="@policy")
  c = qwen_coder_cpu_grpo(arg.model_dir, arg.iterations, prompts=2, shared=SHARED)  # 8 rollouts, one per micro-batch
  c.data.template = SPARK_FORMAT_INSTRUCTION
  # GSM8K solutions take 2-8 steps; the paper's guards are 4-20 steps.
  c.reward.update(kind="prm", prm_dir=arg.prm_dir, prm_format="prm_cot", design="process_outcome", min_steps=2,
                  max_steps=20, prm_max_new_tokens=256, prm_rows=8)
  c.checkpoint.every = 1
  c.eval.every = 3
  return c
