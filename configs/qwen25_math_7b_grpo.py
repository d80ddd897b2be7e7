"""Qwen2.5-Math-7B GRPO at the SPARK-PRM paper's scale (Stage III), sized for a TPU v5p-64 slice.

Status:    the training pipeline for Hugging Face models (`pipeline = "hf_grpo"`) is NOT implemented yet, so
           `python -m sparkjax.main` rejects this config. Today it is read by the memory planner, which compiles
           the real-size sampler and GRPO update for the target slice and reports per-chip memory.
Command:   python -m sparkjax.tools.plan --config configs/qwen25_math_7b_grpo.py --topology v5p-64
Hardware:  the plan runs on any CPU machine with `pip install libtpu==0.0.42.*` (the version jax[tpu]==0.10.2 pins);
           ~45 s on a 2-core CPU (compiles: sampler 16 s, update 28 s). The run it plans: a v5p-64 slice (32 chips).
Expect:    measured with libtpu 0.0.42.1 (XLA compiled for topology v5:2x4x4, mesh data=1 fsdp=8 tp=4), per chip:
           sampler (256 prompts x 16 samples, 2048 + 2048 tokens) 37.70 GiB of 95 GiB (40%): FITS, of which KV cache
           28.00 GiB and resident optimizer state + reference params 2.66 GiB; GRPO update (64 micro-batches of 64
           rows) 33.84 GiB (36%): FITS. microbatches=32 also fits (update 59.14 GiB); without micro-batches and
           log-prob blocks the update needs at least 1.88 TiB of temporaries per chip.
           --topology v6e-64 (mesh fsdp=16 tp=4, 32 GiB chips): sampler 19.34 GiB, update 21.10 GiB: FITS.
           --topology v5litepod-64 (16 GiB chips): DOES NOT FIT (the compiler stops at >= 16 GiB of temporaries);
           --topology v5litepod-256 (mesh fsdp=64 tp=4): sampler 10.53 GiB, update 13.38 GiB of 16 GiB: FITS.
Args:      microbatches=N (gradient-accumulation micro-batches per update, default 64), model_dir=PATH (HF
           checkpoint of the format-SFT'd policy, for the future pipeline).

The paper's settings (shared/papers/spark-prm.md): policy Qwen2.5-Math-7B after a format SFT; 256 prompts x 16
samples per step, one update per batch, lr 1e-6, KL loss 0.001 with the k3 estimator, clip eps 0.2, no entropy bonus,
2048/2048 prompt/response tokens, bf16. Weights and Adam moments are kept in float32 with bfloat16 compute: a 1e-6
step is far below bfloat16's resolution (8 bits of mantissa), so bf16 master weights would not move.
"""

from pathlib import Path

import ml_collections

from sparkjax.config_args import grpo_loss_fields, optimizer_config, parse_arg

SHARED = Path(__file__).resolve().parents[1].parent / "shared"



def get_config(arg=None):
  arg = parse_arg(arg, microbatches=64, model_dir="")
  c = ml_collections.ConfigDict()
  c.pipeline = "hf_grpo"  # not implemented yet (see the docstring)
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "qwen25_math_7b"  # a name in sparkjax.models.config.PRESETS: the checkpoint's shapes
  c.model.dir = arg.model_dir  # HF directory of the format-SFT'd policy (the future pipeline loads it)
  c.model.dtype = "bfloat16"  # compute
  c.model.param_dtype = "float32"  # master weights (and so AdamW's moments, which optax keeps in the param dtype)
  c.model.scan_layers = True
  c.model.remat = True  # recompute each layer in the backward pass: only layer inputs are kept

  # 32 chips on v5p-64: heads, MLP and vocab split 4 ways (28 heads, 4 kv heads), parameters and optimizer state
  # split over the other 8 (fsdp = -1: all remaining devices), rollout rows split 8 ways.
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tp=4))

  c.data = ml_collections.ConfigDict()
  c.data.path = str(SHARED / "data" / "math" / "hendrycks_math_train.jsonl")
  c.data.field = "problem"
  c.data.max_prompt_len = 2048

  c.rl = ml_collections.ConfigDict()
  c.rl.iterations = 200  # not given in the paper notes; the lr schedule is constant, so it only ends the run
  c.rl.batch_size = 256 * 16  # rollouts per iteration = prompts x group_size
  c.rl.group_size = 16
  c.rl.max_new_tokens = 2048
  c.rl.update(grpo_loss_fields())
  # Memory: the update runs its 4096 rows as `num_microbatches` slices (gradient accumulation; 64 rows each, 8 per
  # data shard) and computes log-probs 512 positions at a time; without either the [4096, 2048, 152064] float32
  # logits alone are 4.6 TiB. Attention scores ([rows, heads, 4096, 4096] float32, no fused attention kernel yet)
  # are the largest temporaries: the update's temporaries are 30 GiB per v5p chip with 64 micro-batches, 56 GiB
  # with 32. 64 also fits v6e-64.
  c.rl.num_microbatches = arg.microbatches
  c.rl.logprob_chunk = 512
  c.rl.optimizer = optimizer_config(1e-6, c.rl.iterations, schedule="constant", grad_clip=1.0)
  return c
