"""Decode throughput of sparkjax's jitted sampler vs Hugging Face `transformers.generate` (PyTorch, CPU).

Both sides run the SAME randomly initialised Qwen2 weights (built with `transformer.init_params`, written with
`hf.save_params`, loaded by `AutoModelForCausalLM.from_pretrained`), in float32, on the same workload:
batch 16, prompts of 32 tokens, 64 new tokens, ancestral sampling at temperature 1 with no top-k / top-p filtering
and no stop token, so every row generates exactly 64 tokens on both sides.

tokens/s = batch * new_tokens / wall time of one whole generate call (prefill included), median over --reps runs
after 3 untimed warm-up calls (compilation on the JAX side, first-call allocations on the torch side; the next
sparkjax calls are also slower than the steady state).

Compute roofline: model FLOPs of the call (prefill of the B*P prompt tokens + B*(T-1) single-token decode steps,
matmuls and attention scores/values; see `call_flops`) divided by its wall time, as a fraction of the FLOP/s that a
jitted float32 2048x2048x2048 matmul reaches in JAX in the same process.

Memory bound (printed for context): every decode step reads all weights (fp32) and the whole KV cache to produce
only B tokens, i.e. ~2*B/4 = 8 FLOP per byte at B=16, so once the weights do not fit in cache a step cannot be
faster than bytes / memory bandwidth (measured as a jitted sum over a 256 MB array). `call_bytes` counts them.

Usage:  python benchmarks/sampler.py [--sizes tiny,medium] [--reps 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# A CPU benchmark: don't let jax probe other backends (e.g. an installed libtpu) at start-up.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sparkjax import sampling  # noqa: E402
from sparkjax.models import hf, transformer  # noqa: E402
from sparkjax.models.config import ModelConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (cpu_idle, generate_bytes, generate_flops, matmul_flops, num_cores,  # noqa: E402
                          read_bandwidth, timed)

BATCH, PROMPT, NEW = 16, 32, 64
WARMUP = 3  # untimed calls per side before timing

SIZES = {
    # ~0.5M params: per-step overhead dominates.
    "tiny": ModelConfig(model_type="qwen2", vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=32, qkv_bias=True, tie_embeddings=True),
    # ~28M params: a small Qwen2-like shape (32k vocab, tied embeddings, GQA 8/2 heads of 64).
    "medium": ModelConfig(model_type="qwen2", vocab_size=32000, hidden_size=512, intermediate_size=1408,
                          num_layers=4, num_heads=8, num_kv_heads=2, head_dim=64, qkv_bias=True,
                          tie_embeddings=True),
}


def call_bytes(cfg: ModelConfig, B: int = BATCH, P: int = PROMPT, T: int = NEW) -> float:
  """Bytes one generate call must read at least (`bench_common.generate_bytes`)."""
  return generate_bytes(cfg, B, P, T)


def call_flops(cfg: ModelConfig, B: int = BATCH, P: int = PROMPT, T: int = NEW) -> float:
  """Model FLOPs of one generate call: prefill of P tokens (lm_head on the last only) + T-1 decode steps
  (`bench_common.generate_flops` with one sample per prompt)."""
  return generate_flops(cfg, B, 1, P, T)


def sparkjax_runner(params, cfg, prompt_BP):
  """A function running one timed sparkjax call (after WARMUP untimed ones, the first compiling)."""
  sp = sampling.SamplingParams(max_new_tokens=NEW, temperature=1.0, top_k=0, top_p=1.0, stop_tokens=())
  prompt = jnp.asarray(prompt_BP)
  mask = jnp.ones(prompt.shape, bool)

  def run(i):
    out = sampling.sample_jit(params, prompt, mask, jax.random.key(100 + i), cfg=cfg, sp=sp)
    jax.block_until_ready(out)
    return out

  out = run(-1)  # compile
  for i in range(2, WARMUP + 1):  # the next calls are still slower than the steady state
    run(-i)
  assert out.tokens.shape == (BATCH, NEW) and bool(jnp.all(out.lengths == NEW)), "sparkjax stopped early"
  return run


def hf_runner(model, prompt_BP):
  """A function running one timed `generate` call (after WARMUP untimed ones)."""
  import torch

  input_ids = torch.as_tensor(np.asarray(prompt_BP), dtype=torch.long)
  attn = torch.ones_like(input_ids)
  kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW, min_new_tokens=NEW,
            eos_token_id=None, pad_token_id=0)

  @torch.inference_mode()
  def run(i):
    torch.manual_seed(100 + i)
    return model.generate(input_ids=input_ids, attention_mask=attn, **kw)

  out = run(-1)
  for i in range(2, WARMUP + 1):
    run(-i)
  assert out.shape == (BATCH, PROMPT + NEW), f"transformers generated {out.shape[1] - PROMPT} tokens"
  return run


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default="tiny,medium", help=f"comma-separated, from {', '.join(SIZES)}")
  ap.add_argument("--reps", type=int, default=7, help="timed repetitions per measurement (median reported)")
  ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
  args = ap.parse_args(argv)
  sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
  for s in sizes:
    if s not in SIZES:
      ap.error(f"unknown size {s!r}; known: {', '.join(SIZES)}")

  idle, load = cpu_idle(), os.getloadavg()[0]
  import torch
  import transformers
  import logging

  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  logging.getLogger("transformers").setLevel(logging.ERROR)
  cores = num_cores()
  torch.set_num_threads(cores)

  peak = matmul_flops(args.reps)
  bandwidth = read_bandwidth(args.reps)
  print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} (threads={torch.get_num_threads()}), "
        f"transformers {transformers.__version__}")
  busy = idle < 0.9 if idle is not None else load > 0.5
  print(f"before the run: CPU {100 * idle:.0f}% idle over 3 s, " if idle is not None else "before the run: ", end="")
  print(f"load average {load:.2f}" + ("  WARNING: other processes are running; figures will be noisy "
                                      "(torch's threads suffer most)" if busy else ""))
  print(f"workload: batch {BATCH}, prompt {PROMPT}, {NEW} new tokens, T=1 sampling, no filtering/stop; "
        f"fp32; median of {args.reps}")

  results = []
  rng = np.random.default_rng(0)
  for name in sizes:
    cfg = SIZES[name]
    params = transformer.init_params(cfg, jax.random.key(0))
    prompt = rng.integers(0, cfg.vocab_size, (BATCH, PROMPT), dtype=np.int32)
    with tempfile.TemporaryDirectory() as tmp:
      d = hf.save_params(params, cfg, Path(tmp) / "model")
      model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    # One side after the other, not alternating: torch's OpenMP threads keep spinning for a while after a call and
    # would slow a JAX call that follows immediately.
    run_sj = sparkjax_runner(params, cfg, prompt)
    times_sj = [timed(lambda: run_sj(i)) for i in range(args.reps)]
    run_hf = hf_runner(model, prompt)
    times_hf = [timed(lambda: run_hf(i)) for i in range(args.reps)]
    t_sj, t_hf = statistics.median(times_sj), statistics.median(times_hf)
    del model
    # Re-measure the ceilings after each size and keep the best: a concurrent process can depress any single one.
    peak, bandwidth = max(peak, matmul_flops(args.reps)), max(bandwidth, read_bandwidth(args.reps))
    flops, nbytes = call_flops(cfg), call_bytes(cfg)
    row = dict(size=name, params=cfg.num_params(), layers=cfg.num_layers, hidden=cfg.hidden_size,
               intermediate=cfg.intermediate_size, vocab=cfg.vocab_size, heads=cfg.num_heads,
               kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
               flops_per_generated_token=flops / (BATCH * NEW),
               sparkjax_s=t_sj, hf_s=t_hf, sparkjax_times_s=times_sj, hf_times_s=times_hf,
               sparkjax_tok_s=BATCH * NEW / t_sj, hf_tok_s=BATCH * NEW / t_hf,
               flops_per_call=flops, bytes_per_call=nbytes, weights_mb=4 * cfg.num_params() / 1e6)
    results.append(row)

  for r in results:  # against the best ceilings seen in the whole run
    flops, nbytes = r["flops_per_call"], r["bytes_per_call"]
    r.update(sparkjax_roofline=flops / r["sparkjax_s"] / peak, hf_roofline=flops / r["hf_s"] / peak,
             memory_bound_tok_s=BATCH * NEW / (nbytes / bandwidth),
             memory_bound_roofline=flops / (nbytes / bandwidth) / peak,
             sparkjax_of_memory_bound=(nbytes / bandwidth) / r["sparkjax_s"])

  print(f"compute roofline: jitted fp32 2048^3 matmul in JAX = {peak / 1e9:.1f} GFLOP/s; "
        f"memory: jitted sum over 256 MB = {bandwidth / 1e9:.1f} GB/s (best of the run)")
  print()
  hdr = (f"{'size':<8}{'params':>9}{'MFLOP/tok':>11}{'sparkjax tok/s':>16}{'HF tok/s':>11}{'ratio':>8}"
         f"{'sparkjax %roof':>16}{'HF %roof':>10}")
  print(hdr)
  print("-" * len(hdr))
  for r in results:
    print(f"{r['size']:<8}{r['params'] / 1e6:>8.2f}M{r['flops_per_generated_token'] / 1e6:>11.2f}"
          f"{r['sparkjax_tok_s']:>16.0f}{r['hf_tok_s']:>11.0f}{r['sparkjax_tok_s'] / r['hf_tok_s']:>7.1f}x"
          f"{100 * r['sparkjax_roofline']:>15.1f}%{100 * r['hf_roofline']:>9.1f}%")
  print("MFLOP/tok = model FLOPs of the whole call (prefill + decode) / generated tokens.")
  for r in results:
    print(f"{r['size']}: {r['weights_mb']:.1f} MB of fp32 weights read per step; if read from DRAM at "
          f"{bandwidth / 1e9:.1f} GB/s, the ceiling is {r['memory_bound_tok_s']:.0f} tok/s = "
          f"{100 * r['memory_bound_roofline']:.0f}% of the compute roofline (sparkjax at "
          f"{100 * r['sparkjax_of_memory_bound']:.0f}% of it)"
          + ("; these weights fit in the CPU caches, so this bound does not apply" if r['weights_mb'] < 8 else ""))

  if args.json:
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), cores=cores,
                torch_threads=torch.get_num_threads(),
                jax=jax.__version__, torch=torch.__version__, transformers=transformers.__version__,
                batch=BATCH, prompt=PROMPT, new_tokens=NEW, reps=args.reps, matmul_flops=peak,
                read_bandwidth=bandwidth, cpu_idle_before=idle, load_avg_before=load,
                load_avg_after=os.getloadavg()[0],
                xla_flags=os.environ.get("XLA_FLAGS", ""))
    args.json.write_text(json.dumps(dict(meta=meta, results=results), indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
