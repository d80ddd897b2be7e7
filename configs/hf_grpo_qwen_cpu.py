"""CPU debug config of RLVR GRPO (pipeline `hf_grpo`) with a real Qwen2.5 policy: Qwen2.5-Coder-0.5B-Instruct on
GSM8K with the math-verify reward, 4 prompts x 4 samples per iteration, held-out greedy accuracy on the first 16
GSM8K test problems before the first iteration and after the last.

Command:   python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --gguf-only   # once: the cached GGUF
           python -m sparkjax.main --config=configs/hf_grpo_qwen_cpu.py --workdir=/tmp/hf_grpo_qwen_cpu
Hardware:  any CPU with ~20 GB of memory (configs/coevolve_cpu.py, the same model and sizes, peaked at 18.4 GB).
Measured:  not yet run to its 10 iterations with these settings (the config checks pass: tests/test_hf_grpo.py).
           A first run on the 2-core AMD EPYC (2026-12-06): held-out greedy accuracy before training 2/16; iteration 1
           (incl. compiling) 128 s, reward 0/16, 11 of 16 rollouts finished, mean 307 tokens; iteration 2 443 s,
           reward 1/16 (one group of four with variance); kill -9 during iteration 3 (checkpoints 1 and 2 kept;
           17.0 GB peak RSS); resume not yet run. The first version (256 + 192 tokens) ran 3 iterations (~3.5 min
           each after the first): held-out 1/16 before, rewards 0.125, 0.0, 0.0, a kill -9 and resume; greedy answers
           to the 16 held-out problems, decoded to 512 tokens, are 178-455 tokens long (2 of 16 correct), so at 192
           nearly all were cut before their boxed answer.
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
