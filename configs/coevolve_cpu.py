"""CPU debug config of SPARK-CoEvolve on real text (pipeline `hf_grpo` with `coevolve.enabled`): a small real
instruct model on GSM8K, GRPO with math-verify, its rollouts recycled into judge and reflection examples on the host,
and reward-period updates of the same weights when the judge cache holds a batch.

Command:   python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --gguf-only   # once: the cached GGUF
           python -m sparkjax.main --config=configs/coevolve_cpu.py --workdir=/tmp/coevolve_cpu
Hardware:  any CPU with ~20 GB of memory.
Measured:  on the 2-core AMD EPYC (other jobs sharing the cores), Qwen2.5-Coder-0.5B-Instruct: 33 min 22 s for the 4
           iterations (247-479 s each: rollouts and update, then a judge update in every iteration), peak RSS 18.4 GB.
           Policy reward 0.125 / 0.062 / 0.062 / 0.188; 16 examples recycled (6 pointwise, 2 pairwise, 8
           reflection); of the 64 judge rows 20 readable, 42 without a box; judge reward 0.06 / 0.06 / 0.0 / 0.25;
           held-out greedy accuracy 1/4 before and after.
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
