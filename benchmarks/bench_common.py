"""What every benchmark here shares: the machine's ceilings (compute and memory rooflines as JAX sees them), CPU
idleness, timing, and the model-FLOP counts of the workloads.

FLOP counts follow `ModelConfig.flops_per_token(context)`: 2 FLOPs per matmul weight per token (the lm_head
counted only where logits are made) plus 4 * heads * head_dim per attended key and layer.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from sparkjax.models.config import ModelConfig


def num_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def cpu_idle(seconds: float = 3.0) -> float | None:
  """Fraction of CPU time spent idle over the next `seconds` (Linux /proc/stat; None elsewhere)."""
  def read():
    with open("/proc/stat") as f:
      vals = [int(v) for v in f.readline().split()[1:]]
    return vals[3] + vals[4], sum(vals)  # idle + iowait, total
  try:
    idle0, total0 = read()
    time.sleep(seconds)
    idle1, total1 = read()
  except (OSError, ValueError, IndexError):
    return None
  return (idle1 - idle0) / max(total1 - total0, 1)


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def matmul_flops(reps: int, n: int = 2048) -> float:
  """Peak FLOP/s of a jitted float32 [n, n] @ [n, n] in JAX (the compute roofline): the best of several runs."""
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(a, b))
  best = min(timed(lambda: jax.block_until_ready(mm(a, b))) for _ in range(max(reps, 5)))
  return 2.0 * n ** 3 / best


def read_bandwidth(reps: int) -> float:
  """Bytes/s of a jitted float32 sum over a 256 MB array (DRAM read bandwidth as XLA sees it): the best of several."""
  a = jnp.ones((64 << 20,), jnp.float32)
  total = jax.jit(jnp.sum)
  jax.block_until_ready(total(a))
  best = min(timed(lambda: jax.block_until_ready(total(a))) for _ in range(max(reps, 5)))
  return a.nbytes / best


def forward_flops(cfg: ModelConfig, rows: int, length: int, logits_from: int = 0) -> float:
  """Model FLOPs of a forward pass over `rows` sequences of `length` tokens (causal: position p attends p + 1 keys),
  with the lm_head on positions >= logits_from only."""
  lm_head = 2.0 * cfg.vocab_size * cfg.hidden_size
  body = sum(cfg.flops_per_token(p + 1) - lm_head for p in range(length))
  return rows * (body + (length - logits_from) * lm_head)


def generate_flops(cfg: ModelConfig, prompts: int, samples: int, P: int, T: int) -> float:
  """Model FLOPs of sampling `samples` completions of T tokens for each of `prompts` prompts of P tokens, with one
  prefill per prompt (lm_head on its last position) and T - 1 single-token decode steps per completion."""
  prefill = forward_flops(cfg, prompts, P, logits_from=P - 1)
  decode = prompts * samples * sum(cfg.flops_per_token(p + 1) for p in range(P, P + T - 1))
  return prefill + decode


def generate_bytes(cfg: ModelConfig, rows: int, P: int, T: int) -> float:
  """Bytes a generate call must read at least: the fp32 weights once per forward (prefill + T-1 steps) and the
  whole KV cache of P+T slots per decode step."""
  weights = 4.0 * cfg.num_params()
  cache = 4.0 * 2 * cfg.num_layers * rows * cfg.num_kv_heads * (P + T) * cfg.head_dim
  return T * weights + (T - 1) * cache
