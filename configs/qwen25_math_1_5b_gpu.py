"""Qwen2.5-Math-1.5B GRPO on one 80 GB GPU: a single-device debug configuration of the 7B recipe.

Command:   pip install -e ".[cuda12]" && python -m sparkjax.main --config=configs/qwen25_math_1_5b_gpu.py:model_dir=DIR
           --workdir=WORKDIR (pipeline `hf_grpo`, RLVR with math-verify; DIR = a local Qwen2.5-Math-1.5B download).
           Memory plan: python -m sparkjax.tools.plan --config configs/qwen25_math_1_5b_gpu.py --gpu h100-80gb
Hardware:  one H100 or A100 with 80 GB. The plan is analytic (XLA cannot compile for a GPU on this machine).
Not run:   no GPU is available to this project; the same pipeline runs (and is tested) on the CPU through
           configs/hf_grpo_cpu.py.
Expect:    analytic estimate per GPU (h100-80gb): sampler 34.19 GiB, GRPO update 54.80 GiB of 79.6 GiB (69%): FITS,
           and within the 75% (59.7 GiB) JAX preallocates by default. Cross-check: the same per-device work
           compiled for TPU (--topology v5p-8 --set mesh.data=4 --set rl.batch_size=512: four chips, each with
           this config's batch) measures sampler 35.27 GiB and update 52.47 GiB with libtpu 0.0.42.1.
Args:      microbatches=N (gradient-accumulation micro-batches per update, default 16), model_dir=PATH.

Same loss and optimizer settings as configs/qwen25_math_7b_grpo.py (lr 1e-6, KL 0.001 k3, clip 0.2, bf16 compute,
float32 weights and Adam moments) at a debug batch: 16 prompts x 8 samples, 1024 + 1024 tokens.
"""

from pathlib import Path

from sparkjax.config_args import hf_grpo_config, parse_arg

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, microbatches=16, model_dir="")
  return hf_grpo_config(
      preset="qwen25_math_1_5b", model_dir=arg.model_dir,
      train_path=str(SHARED / "data" / "math" / "hendrycks_math_train.jsonl"),
      eval_path=str(SHARED / "data" / "math" / "math500_test.jsonl"),
      max_prompt_len=1024, max_new_tokens=1024, prompts=16, group_size=8, iterations=50, lr=1e-6,
      mesh=dict(data=1, fsdp=1, tp=1),  # one device
      microbatches=arg.microbatches,  # 8 rows per micro-batch
      logprob_chunk=256, eval_batch=64)
