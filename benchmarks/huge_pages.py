"""Training steps with and without glibc's huge-page malloc (`sparkjax.cli.huge_pages_env`), side by side.

XLA:CPU takes each jitted call's temporaries from malloc; above glibc's mmap threshold (32 MiB at most) every call
maps fresh 4 KiB pages and faults on each. `python -m sparkjax.main` restarts itself with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 so those blocks get 2 MiB pages. This measures what that buys on the SPARK-PRM
world's Stage II steps (the world model: 2 layers x 64, vocabulary 68; rows of the run's shapes, random tokens):

  disc     the discriminative PRM step, 256 rows x 59 tokens, 3 step separators per row
  prm_cot  the generative (SFT) step of a PRM-CoT row, 256 rows x 154 tokens

Each (workload, malloc) pair runs in its own process (glibc reads tunables at start): s/step is the median of
`--steps` steps after two warm-up steps, faults are minor page faults per step.

  python benchmarks/huge_pages.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKLOADS = {"disc": (256, 59), "prm_cot": (256, 154)}


def child(workload: str, steps: int) -> dict:
  import resource
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from sparkjax.config_args import optimizer_config
  from sparkjax.models import transformer
  from sparkjax.models.config import ModelConfig
  from sparkjax.spark import prm_train
  from sparkjax.train import sft
  from sparkjax.train import state as state_lib

  cfg = ModelConfig(vocab_size=68, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=32, tie_embeddings=True, qkv_bias=True, max_position_embeddings=512)
  B, T = WORKLOADS[workload]
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 68, (B, T)).astype(np.int32)
  tx, schedule = state_lib.make_optimizer(optimizer_config(3e-3, 1000, warmup_steps=20, schedule="cosine"))
  state = state_lib.create_state(transformer.init_params(cfg, jax.random.key(0)), tx, 0)
  if workload == "disc":
    batch = dict(tokens=tokens, mask=np.ones((B, T), bool), sep_positions=np.tile([T // 3, 2 * T // 3, T - 1], (B, 1)),
                 labels=rng.integers(0, 2, (B, 3)).astype(np.float32), label_mask=np.ones((B, 3), bool))
    step = prm_train.make_disc_step(cfg, tx, (10, 11), schedule)
  else:
    loss_mask = np.zeros((B, T), np.float32)
    loss_mask[:, T // 2:] = 1.0
    batch = dict(tokens=tokens, loss_mask=loss_mask, mask=np.ones((B, T), bool))
    step = sft.make_sft_step(cfg, tx, schedule)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  for _ in range(2):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  times, faults = [], []
  for _ in range(steps):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return dict(seconds_per_step=float(np.median(times)), faults_per_step=float(np.median(faults)))


def run(workload: str, huge: bool, steps: int) -> dict:
  from sparkjax import cli

  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if huge:
    env = cli.huge_pages_env(env)
    if env is None:
      raise SystemExit("this machine's libc has no glibc.malloc.hugetlb tunable (Linux with glibc >= 2.35 only)")
  out = subprocess.run([sys.executable, __file__, "--child", workload, "--steps", str(steps)], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--child", choices=sorted(WORKLOADS))
  a = ap.parse_args()
  if a.child:
    print(json.dumps(child(a.child, a.steps)))
    return
  from bench_common import cpu_idle

  idle = cpu_idle()
  print(f"CPU idle before: {idle if idle is None else round(idle, 2)}")
  print("| step | 4 KiB pages: s/step (faults) | huge pages: s/step (faults) | speed-up |")
  print("|---|---|---|---|")
  for w in WORKLOADS:
    off, on = run(w, False, a.steps), run(w, True, a.steps)
    print(f"| {w} {WORKLOADS[w][0]} x {WORKLOADS[w][1]} | {off['seconds_per_step']:.3f} ({off['faults_per_step']:.0f}) "
          f"| {on['seconds_per_step']:.3f} ({on['faults_per_step']:.0f}) "
          f"| {off['seconds_per_step'] / on['seconds_per_step']:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
