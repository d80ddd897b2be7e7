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

from sparkjax.config_args import hf_grpo_config, parse_arg
from sparkjax.tools import fetch_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = "qwen2.5-coder-0.5b-instruct"


def get_config(arg=None):
  arg = parse_arg(arg, iterations=4, model_dir="")
  c = hf_grpo_config(
      preset="", model_dir=arg.model_dir,
      train_path=str(SHARED / "data" / "gsm8k" / "train.jsonl"),
      eval_path=str(SHARED / "data" / "gsm8k" / "test.jsonl"),
      max_prompt_len=256, max_new_tokens=192, prompts=4, group_size=4, iterations=arg.iterations, lr=1e-6,
      mesh=dict(data=-1, fsdp=1, tp=1), dtype="float32", param_dtype="float32", remat=True, eval_size=4,
      eval_batch=4,
      # As configs/hf_grpo_prm_cpu.py: 0.63B float32 parameters, Adam moments and the reference take ~10 GB; the
      # updates run their rows one micro-batch of 2 at a time and the logits 64 positions at a time.
      microbatches=8, logprob_chunk=64)
  if not arg.model_dir:
    c.model.gguf = str(fetch_model.cache_path(MODEL))
  # 4 prompts give at most 2 judge + 2 reflection examples per iteration; a batch of 4 judge prompts x 4 samples.
  # Judge prompts show only the final answers (the released code), so they stay short.
  c.coevolve.update(enabled=True, max_judge=2, max_reflection=2, judge_batch=4, judge_group_size=4,
                    max_prompt_len=384, max_new_tokens=192)
  c.checkpoint.every = 1
  c.eval.every = 4
  return c
