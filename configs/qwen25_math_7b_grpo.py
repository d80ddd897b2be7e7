"""Qwen2.5-Math-7B GRPO at the SPARK-PRM paper's scale (Stage III), sized for a TPU v5p-64 slice.

Command:   launch_tpu/up.sh --name spark7b --type v5p-64 --config configs/qwen25_math_7b_grpo.py:model_dir=DIR
           (on every worker: python -m sparkjax.main --config=configs/qwen25_math_7b_grpo.py:model_dir=DIR
           --workdir=WORKDIR); the pipeline is `hf_grpo` (sparkjax/pipelines/hf_grpo.py), RLVR with math-verify.
           Memory plan: python -m sparkjax.tools.plan --config configs/qwen25_math_7b_grpo.py --topology v5p-64
Hardware:  the plan runs on any CPU machine with `pip install libtpu==0.0.42.*` (the version jax[tpu]==0.10.2 pins);
           ~45 s on a 2-core CPU (compiles: sampler 16 s, update 28 s). The run it plans: a v5p-64 slice (32 chips).
Expect:    measured with libtpu 0.0.42.1 (XLA compiled for topology v5:2x4x4, mesh data=1 fsdp=8 tp=4), per chip:
           sampler (256 prompts x 16 samples, 2048 + 2048 tokens) 37.62 GiB of 95 GiB (40%): FITS, of which KV cache
           28.00 GiB and resident optimizer state + reference params 2.66 GiB; GRPO update (64 micro-batches of 64
           rows) 33.84 GiB (36%): FITS. microbatches=32 also fits (update 59.14 GiB); without micro-batches and
           log-prob blocks the update needs at least 1.88 TiB of temporaries per chip.
           --topology v6e-64 (mesh fsdp=16 tp=4, 32 GiB chips): sampler 19.27 GiB, update 21.10 GiB: FITS.
           --topology v5litepod-64 (16 GiB chips): DOES NOT FIT (the compiler stops at >= 16 GiB of temporaries);
           --topology v5litepod-256 (mesh fsdp=64 tp=4): sampler 10.53 GiB, update 13.38 GiB of 16 GiB: FITS.
Args:      microbatches=N (gradient-accumulation micro-batches per update, default 64), model_dir=PATH (HF
           checkpoint of the format-SFT'd policy).
Not run:   no TPU is available to this project; the pipeline itself runs (and is tested) on the CPU through
           configs/hf_grpo_cpu.py, which differs only in model, sizes and mesh.

The paper's settings (shared/papers/spark-prm.md): policy Qwen2.5-Math-7B after a format SFT; 256 prompts x 16
samples per step, one update per batch, lr 1e-6, KL loss 0.001 with the k3 estimator, clip eps 0.2, no entropy bonus,
2048/2048 prompt/response tokens, bf16. Weights and Adam moments are kept in float32 with bfloat16 compute: a 1e-6
step is far below bfloat16's resolution (8 bits of mantissa), so bf16 master weights would not move.
"""

from pathlib import Path

from sparkjax.config_args import hf_grpo_config, parse_arg

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, microbatches=64, model_dir="")
  # 32 chips on v5p-64: heads, MLP and vocab split 4 ways (28 heads, 4 kv heads), parameters and optimizer state
  # split over the other 8 (fsdp = -1: all remaining devices), rollout rows split 8 ways.
  # Memory: the update runs its 4096 rows as `microbatches` slices (gradient accumulation; 64 rows each, 8 per data
  # shard) and computes log-probs 512 positions at a time; without either the [4096, 2048, 152064] float32 logits
  # alone are 4.6 TiB. Attention scores ([rows, heads, 4096, 4096] float32, no fused attention kernel yet) are the
  # largest temporaries: the update's temporaries are 30 GiB per v5p chip with 64 micro-batches, 56 GiB with 32.
  return hf_grpo_config(
      preset="qwen25_math_7b", model_dir=arg.model_dir,
      train_path=str(SHARED / "data" / "math" / "hendrycks_math_train.jsonl"),
      eval_path=str(SHARED / "data" / "math" / "math500_test.jsonl"),
      max_prompt_len=2048, max_new_tokens=2048, prompts=256, group_size=16,
      iterations=200,  # not given in the paper notes; the lr schedule is constant, so it only ends the run
      lr=1e-6, mesh=dict(data=1, fsdp=-1, tp=4), microbatches=arg.microbatches, logprob_chunk=512, eval_batch=256)
