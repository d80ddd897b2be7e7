"""CPU debug config of RLVR GRPO (pipeline `hf_grpo`) with a real Qwen2.5 policy: Qwen2.5-Coder-0.5B-Instruct on
GSM8K with the math-verify reward, 4 prompts x 4 samples per iteration, held-out greedy accuracy on the first 16
GSM8K test problems before the first iteration and after the last.

Command:   python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --gguf-only   # once: the cached GGUF
           python -m sparkjax.main --config=configs/hf_grpo_qwen_cpu.py --workdir=/tmp/hf_grpo_qwen_cpu
Hardware:  any CPU with ~20 GB of memory (configs/coevolve_cpu.py, the same model and sizes, peaked at 18.4 GB).
Measured:  on the 2-core AMD EPYC (2026-12-06), alone on the cores: held-out greedy accuracy 2/16 before training;
           rewards (mean of 16 rollouts) in iterations 1-10: 0, 0.062, 0.125, 0.25, 0.062, 0.188, 0.25, 0, 0.062,
           0.062 (above zero in 8 of 10; 4 of 4 groups without variance in iterations 1 and 8); KL to the reference
           rises to 0.002; 69-94% of rollouts finish within the 400 tokens; held-out 4/16 after the 10th (a change
           of two problems out of 16: not evidence of learning). Iterations take 443-532 s (the first after each start
           logs 128 / 156 s: its update is still running when it is timed and lands in the next). A kill -9
           during iteration 3 (24 min in), then the same command: "resumed from iteration 2", the remaining 8
           iterations, held-out evaluation and export in 1 h 11 min; peak RSS 17.0 GB for the first process,
           19.2 GB for the resumed one.
Args:      iterations=N (default 10), model_dir=PATH (a HF directory instead of the cached GGUF).

A check that the real-model RLVR path runs and gets a reward signal (loading, chat-template prompts, sampling,
math-verify, the update, checkpoints every iteration, resume, export); 10 iterations of 16 rollouts at lr 1e-6 are
far too few to expect the held-out accuracy to move.
"""

from pathlib import Path

from sparkjax.config_args import parse_arg, qwen_coder_cpu_grpo

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, iterations=10, model_dir="")
  # 400 new tokens: greedy answers to the 16 held-out problems run 178-455 tokens (3 above 400); at the first
  # version's 192, 15 of 16 were cut before their \boxed{} and the reward was 0 in 2 of its first 3 batches.
  # 192 prompt tokens: 99% of GSM8K train prompts (chat template + instruction) take <= 173; longer ones are left out.
  # Log-probs 80 positions at a time: the chunk must divide the 400 (the first run with 64 stopped at its first update).
  c = qwen_coder_cpu_grpo(arg.model_dir, arg.iterations, prompts=4, shared=SHARED, max_prompt_len=192,
                          max_new_tokens=400, logprob_chunk=80)  # 16 rollouts, 2 per micro-batch
  c.eval.update(size=16, batch_size=8, every=arg.iterations)
  c.checkpoint.every = 1
  return c
