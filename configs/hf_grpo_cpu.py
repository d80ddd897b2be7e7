"""CPU debug config of the `hf_grpo` pipeline (the one configs/qwen25_math_7b_grpo.py and qwen25_math_1_5b_gpu.py
run): the shared SmolLM2-135M-Instruct (4-bit GGUF, converted once into WORKDIR/base_model) doing GRPO with the
math-verify reward on GSM8K.

Command:   python -m sparkjax.main --config=configs/hf_grpo_cpu.py --workdir=/tmp/hf_grpo_cpu
Hardware:  any CPU; the figures below are from this project's 2-core machine.
Expect:    measured on the 2-core CPU (shared with other jobs), evaluating after every iteration (the config now
           does every 3): 6 iterations in 6 min 10 s (~55 s each: 2 prompts x 4 samples x 128 tokens, update,
           math-verify, 8-problem eval), held-out greedy accuracy 0/8 before and after, reward 0 in
           every batch of that run (a 2-iteration run drew one correct sample of 8). SmolLM2-135M rarely solves a
           GSM8K problem and most responses hit the 128-token cap, so groups have zero reward variance and GRPO does
           not move it: this config checks the pipeline (loading, prompts, sampling, grading, update, checkpoints,
           resume, export), not learning.
Args:      iterations=N (default 6), model_dir=PATH (a HF directory instead of the GGUF).
"""

from pathlib import Path

from sparkjax.config_args import hf_grpo_config, parse_arg

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, iterations=6, model_dir="")
  c = hf_grpo_config(
      preset="smollm2_135m", model_dir=arg.model_dir,
      train_path=str(SHARED / "data" / "gsm8k" / "train.jsonl"),
      eval_path=str(SHARED / "data" / "gsm8k" / "test.jsonl"),
      max_prompt_len=256, max_new_tokens=128, prompts=2, group_size=4, iterations=arg.iterations, lr=1e-6,
      mesh=dict(data=-1, fsdp=1, tp=1), dtype="float32", param_dtype="float32", remat=False, eval_size=8,
      eval_batch=8)
  if not arg.model_dir:
    c.model.gguf = str(SHARED / "models" / "smollm2-135m-instruct-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf")
  c.checkpoint.every = 2
  c.eval.every = 3
  return c
