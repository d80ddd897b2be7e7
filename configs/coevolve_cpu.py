"""CPU debug config of SPARK-CoEvolve on real text (pipeline `hf_grpo` with `coevolve.enabled`): a small real
instruct model on GSM8K, GRPO with math-verify, its rollouts recycled into judge and reflection examples on the host,
and reward-period updates of the same weights when the judge cache holds a batch.

Command:   python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --gguf-only   # once: the cached GGUF
           python -m sparkjax.main --config=configs/coevolve_cpu.py --workdir=/tmp/coevolve_cpu
Hardware:  any CPU; see README "SPARK-CoEvolve" for what a run on this project's 2-core machine measured.
Args:      iterations=N (default 4), model_dir=PATH (a HF directory instead of the cached GGUF).

This checks the path (recycling decoded rollouts, judge prompts in the chat template, judge sampling, the one
judge parser, math-verify on reflection answers, the update, the cache in the checkpoint), not learning. The
recycled examples are written to WORKDIR/judge_examples.jsonl.
"""

from pathlib import Path

from sparkjax.config_args import parse_arg, qwen_coder_cpu_grpo

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, iterations=4, model_dir="")
  c = qwen_coder_cpu_grpo(arg.model_dir, arg.iterations, prompts=4, shared=SHARED)  # 16 rollouts, 2 per micro-batch
  # 4 prompts give at most 2 judge + 2 reflection examples per iteration; a batch of 4 judge prompts x 4 samples.
  # Judge prompts show only the final answers (the released code), so they stay short.
  c.coevolve.update(enabled=True, max_judge=2, max_reflection=2, judge_batch=4, judge_group_size=4,
                    max_prompt_len=384, max_new_tokens=192)
  c.checkpoint.every = 1
  c.eval.every = 4
  return c
