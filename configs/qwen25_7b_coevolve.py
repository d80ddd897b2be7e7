"""SPARK-CoEvolve at the paper's 7B setting (pipeline `hf_grpo` with `coevolve.enabled`), for a TPU slice.

Command:   launch_tpu/up.sh --name coevolve7b --type v5p-32 --config configs/qwen25_7b_coevolve.py:model_dir=DIR
           (on every worker: python -m sparkjax.main --config=configs/qwen25_7b_coevolve.py:model_dir=DIR
           --workdir=WORKDIR)
           Memory plan: python -m sparkjax.tools.plan --config configs/qwen25_7b_coevolve.py --topology v5p-32
Hardware:  the plan runs on any CPU machine with `pip install libtpu==0.0.42.*` (~6 min on a 2-core CPU: four
           programs). The run it plans: a v5p-16 slice (8 chips) or larger.
Expect:    measured with libtpu 0.0.42.1, per chip: v5p-16 (mesh data=1 fsdp=2 tp=4): sampler 24.16 GiB, update
           64.36 GiB, judge sampler 29.63 GiB, judge update (64 prompts of 2048 tokens x 8 samples of 768) 78.80 GiB
           of 95 GiB: FITS; v5p-32 (fsdp=4 tp=4): 12.09 / 31.95 / 14.83 / 43.54 GiB: FITS. v5p-8 not compiled
           (its parameters, Adam moments and reference alone take 28 GiB per chip before any activation).
Args:      model_dir=PATH (a HF checkpoint of Qwen2.5-7B-Instruct, or any model with the qwen25_math_7b preset's
           shapes), microbatches=N (gradient-accumulation micro-batches per update, default 8).
Not run:   no TPU is available to this project; the same pipeline runs on the CPU through configs/coevolve_cpu.py.

The paper's settings (shared/papers/spark-coevolve.md): GRPO with verifiable rewards (math-verify), 64 prompts x 8
samples, lr 5e-7 cosine to 0.1x with 3% warmup, AdamW (0.9, 0.95), weight decay 0, grad clip 1.0, T = 1, top_p 1,
768 new tokens, 0.001 * k3 KL, bf16; after each update at most 32 judge + 32 reflection examples are recycled and a
full cache (64 prompts) triggers a reward-period update with 8 samples per judge prompt. The learning-rate schedule
counts both kinds of update (`total_steps` = 2 x iterations, the most there can be). Judge prompts show only the
responses' final answers (the released code); a reflection prompt may show a full response, so judge prompts get
2048 tokens. The 7B preset's shapes are Qwen2.5-Math-7B's, which Qwen2.5-7B-Instruct shares.
"""

from pathlib import Path

from sparkjax.config_args import hf_grpo_config, optimizer_config, parse_arg

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, microbatches=8, model_dir="", iterations=500)
  c = hf_grpo_config(
      preset="qwen25_math_7b", model_dir=arg.model_dir,
      train_path=str(SHARED / "data" / "math" / "hendrycks_math_train.jsonl"),
      eval_path=str(SHARED / "data" / "math" / "math500_test.jsonl"),
      max_prompt_len=1024, max_new_tokens=768, prompts=64, group_size=8, iterations=arg.iterations, lr=5e-7,
      mesh=dict(data=1, fsdp=-1, tp=4), microbatches=arg.microbatches, logprob_chunk=256, eval_batch=256)
  steps = 2 * arg.iterations
  c.rl.optimizer = optimizer_config(5e-7, steps, warmup_steps=max(1, round(0.03 * steps)), schedule="cosine",
                                    grad_clip=1.0, b2=0.95)
  c.coevolve.update(enabled=True, max_judge=32, max_reflection=32, judge_batch=64, judge_group_size=8,
                    max_prompt_len=2048, max_new_tokens=768)
  return c
