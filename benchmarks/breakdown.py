"""Where each sparkjax workload of benchmarks/peers.py spends its time: every part jitted and timed alone.

  python benchmarks/breakdown.py                       # all workloads, ~5 min on a 2-core CPU
  python benchmarks/breakdown.py --workloads grpo_large --reps 5

Parts (median of --reps calls after two untimed ones, each `block_until_ready`):
  sampler / verify  prefill (the prompt forward into the cache), one decode step (from the difference between a
                    T-token and a 1-token call, / (T - 1)), and the whole call
  grpo              rollout (sampling with the sampler's log-probs), reference log-probs (one forward),
                    policy loss forward, policy forward + backward (`value_and_grad`), optimizer (clip + AdamW
                    update + apply), and the whole jitted iteration
  sft               forward (loss), forward + backward, optimizer, the whole step
Each part's "% compute" is its model FLOPs / time / the compute ceiling (a jitted fp32 2048^3 matmul); a decode
step's "matmul-rate time" is what its FLOPs would take at that ceiling, so time above it is per-step overhead or
memory traffic.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402  (sets JAX_PLATFORMS and sys.path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from bench_common import forward_flops, generate_flops, matmul_flops, timed  # noqa: E402
from sparkjax import sampling  # noqa: E402
from sparkjax.models import transformer  # noqa: E402
from sparkjax.rl import grpo  # noqa: E402
from sparkjax.rl import iteration as rl  # noqa: E402
from sparkjax.train import sft  # noqa: E402
from sparkjax.train import state as state_lib  # noqa: E402


def median_time(fn, reps: int) -> float:
  for _ in range(2):
    jax.block_until_ready(fn())
  return statistics.median(timed(lambda: jax.block_until_ready(fn())) for _ in range(reps))


def optimizer_step(tx):
  """One jitted optimizer update alone: (params, grads, opt_state) -> (params, opt_state)."""
  def step(params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step)


def sampler_parts(w, cfg, params, prompts, reps):
  P, T, n = w["prompt_len"], w["new_tokens"], w.get("n", 1)
  x = jnp.asarray(prompts)
  mask = jnp.ones(x.shape, bool)
  kw = dict(temperature=w.get("temperature", 1.0), top_p=w.get("top_p", 1.0), num_samples=n, stop_tokens=())

  def call(t):
    sp = sampling.SamplingParams(max_new_tokens=t, **kw)
    fn = jax.jit(functools.partial(sampling.sample, cfg=cfg, sp=sp))
    return lambda: fn(params, x, mask, jax.random.key(0))

  @jax.jit
  def prefill(params, x):
    h, cache = sampling.prefill(params, cfg, x, transformer.positions_from_mask(mask), mask,
                                sampling.SamplingParams().prefill_chunk)
    return transformer.unembed(params, cfg, h[:, -1:]), transformer.grow_cache(cache, P + T)

  whole, one = median_time(call(T), reps), median_time(call(1), reps)
  step = (whole - one) / (T - 1)
  rows = w["batch"] * n
  step_flops = rows * cfg.flops_per_token(P + T // 2)
  return [("prefill", median_time(lambda: prefill(params, x), reps), forward_flops(cfg, w["batch"], P, P - 1)),
          ("one decode step", step, step_flops),
          ("whole call", whole, generate_flops(cfg, w["batch"], n, P, T))]


def grpo_parts(w, cfg, params, prompts, reps):
  B, G, P, T = w["prompts"], w["group"], w["prompt_len"], w["new_tokens"]
  N = B * G
  tx, schedule = peers.optimizer(w["lr"])
  sp = sampling.SamplingParams(max_new_tokens=T, temperature=1.0, num_samples=G, stop_tokens=())
  settings = rl.GRPOSettings(sampling=sp, kl_coef=w["kl_coef"], mu=w["mu"])
  x = jnp.asarray(prompts)
  mask = jnp.ones(x.shape, bool)
  rollout = jax.jit(functools.partial(rl.rollout, cfg=cfg, settings=settings))
  out = rollout(params, x, mask, jax.random.key(0))
  adv = grpo.grpo_advantages(peers.even_share(out.tokens, out.lengths, None, None), G)
  logp = jax.jit(lambda p: rl.completion_logprobs(p, cfg, x, mask, out.tokens, out.lengths, 1.0)[0])
  batch = dict(prompt=x, prompt_mask=mask, tokens=out.tokens, lengths=out.lengths, old_logp=out.logprobs,
               advantages=adv)

  def loss(p):
    lp, _ = rl.completion_logprobs(p, cfg, x, mask, out.tokens, out.lengths, 1.0)
    cm = rl.completion_mask(out.lengths, T)
    pg, _ = grpo.clipped_policy_loss(lp, out.logprobs, jnp.broadcast_to(adv[:, None], lp.shape))
    return grpo.token_mean(pg, cm)

  grad, fwd = jax.jit(jax.value_and_grad(loss)), jax.jit(loss)
  _, g = grad(params)
  opt_state = tx.init(params)
  apply = optimizer_step(tx)
  update = jax.jit(functools.partial(rl.policy_update, cfg=cfg, settings=settings, tx=tx))
  fresh = state_lib.create_state(params, tx, 0)
  state = [state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)]
  step = rl.make_iteration(cfg, settings, tx, rl.rule_reward(peers.even_share), schedule)

  def iterate():
    state[0], m, _ = step(state[0], params, None, x, mask, jnp.zeros((B,), jnp.int32))
    return m

  lp_flops = forward_flops(cfg, N, P + T, logits_from=P)
  return [("rollout", median_time(lambda: rollout(params, x, mask, jax.random.key(1)), reps),
           generate_flops(cfg, B, G, P, T)),
          ("reference log-probs", median_time(lambda: logp(params), reps), lp_flops),
          ("policy forward (loss)", median_time(lambda: fwd(params), reps), lp_flops),
          ("policy forward + backward", median_time(lambda: grad(params), reps), 3 * lp_flops),
          ("optimizer (clip + AdamW)", median_time(lambda: apply(params, g, opt_state), reps), 0.0),
          ("update (all of the above but the rollout)",
           median_time(lambda: update(fresh, params, batch), reps), 4 * lp_flops),
          ("whole iteration", median_time(iterate, reps), peers.workload_cost(w, cfg)[0])]


def sft_parts(w, cfg, params, tokens, reps):
  tx, schedule = peers.optimizer(w["lr"])
  x = jnp.asarray(tokens)
  lm = jnp.arange(w["seq_len"])[None].repeat(w["batch"], 0) >= w["prompt_len"]
  m = jnp.ones(x.shape, bool)
  loss = lambda p: (lambda t, c, _: t / c)(*sft.token_nll(p, cfg, x, lm, m))
  grad, fwd = jax.jit(jax.value_and_grad(loss)), jax.jit(loss)
  _, g = grad(params)
  opt_state = tx.init(params)
  apply = optimizer_step(tx)
  step = sft.make_sft_step(cfg, tx, schedule)
  state = [state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)]

  def call():
    state[0], metrics = step(state[0], dict(tokens=x, loss_mask=lm, mask=m))
    return metrics

  f = forward_flops(cfg, w["batch"], w["seq_len"])
  return [("forward (loss)", median_time(lambda: fwd(params), reps), f),
          ("forward + backward", median_time(lambda: grad(params), reps), 3 * f),
          ("optimizer (clip + AdamW)", median_time(lambda: apply(params, g, opt_state), reps), 0.0),
          ("whole step", median_time(call, reps), 3 * f)]


PARTS = dict(sampler=sampler_parts, sampler_n=sampler_parts, grpo=grpo_parts, sft=sft_parts)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workloads", default="sampler_tiny,sampler_medium,grpo_small,grpo_large,sft_world,verify_world")
  ap.add_argument("--reps", type=int, default=5)
  args = ap.parse_args(argv)
  peak = matmul_flops(5)
  print(f"compute ceiling {peak / 1e9:.1f} GFLOP/s; jax {jax.__version__}")
  for name in args.workloads.split(","):
    w = peers.WORKLOADS[name]
    cfg = peers.MODELS[w["model"]]
    params = transformer.init_params(cfg, jax.random.key(0))
    parts = PARTS[w["kind"]](w, cfg, params, peers.workload_prompts(w, cfg), args.reps)
    print(f"\n{name} ({cfg.num_params() / 1e6:.2f}M params)")
    print("| part | ms | GFLOP | % compute | ms at the matmul rate |\n|---|---|---|---|---|")
    for label, t, flops in parts:
      print(f"| {label} | {1e3 * t:.2f} | {flops / 1e9:.2f} | {100 * flops / t / peak:.1f}% | "
            f"{1e3 * flops / peak:.2f} |")


if __name__ == "__main__":
  main()
