"""Where a Stage III GRPO iteration's time goes in the world: rollout, PRM scoring, update, and the whole jitted
iteration, for each reward (RLVR, a discriminative PRM, a generative PRM-CoT).

  python benchmarks/stage3_iteration.py                 # ~2-4 min on a 2-core CPU
  python benchmarks/stage3_iteration.py --reps 5 --json /tmp/stage3.json

Workload: the main job's world and policy (configs/arith.py: 2-4 operations on numbers up to 30, a 4 x 128 model)
writing the RL format, 16 prompts x 8 samples, KL 0.04 against a reference; the PRM has the size of
configs/spark_prm.py's (2 x 64) on the same vocabulary. Random weights on both: no row stops early, so the rollout
and the PRM-CoT decode run their full lengths (the policy's response slots, the world's longest verification):
the worst case of a trained run. Each program is timed alone (jitted, inputs ready, `block_until_ready`; a donated
train state is built before the clock starts), median of --reps calls after two untimed ones; "sum of parts" adds
rollout + scoring + update for comparison with the one jitted iteration.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from sparkjax import sampling  # noqa: E402
from sparkjax.data import arith, world_data  # noqa: E402
from sparkjax.models import transformer  # noqa: E402
from sparkjax.pipelines import arith_rl  # noqa: E402
from sparkjax.rl import grpo  # noqa: E402
from sparkjax.rl import iteration as rl  # noqa: E402
from sparkjax.spark import rewards as R  # noqa: E402
from sparkjax.spark import world_reward as WR  # noqa: E402
from sparkjax.spark import world_verifier as wv  # noqa: E402
from sparkjax.train import state as state_lib  # noqa: E402


def _time(fn, reps: int, make_arg=None) -> float:
  """Median seconds of `fn(arg)` over `reps` calls after two untimed ones; `make_arg()` (untimed) builds each
  call's argument, e.g. a fresh train state for a program that donates it."""
  make_arg = make_arg or (lambda: None)
  times = []
  for i in range(reps + 2):
    arg = jax.block_until_ready(make_arg())
    t0 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    if i >= 2:
      times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--json", default="")
  args = ap.parse_args()

  world = arith.WorldConfig(min_ops=2, max_ops=4, max_operand=5, max_value=30, ops="+-")
  tok = arith.build_tokenizer(world.max_value)
  enc = world_data.WorldEncoder(world, tok, "think")
  # The world pipelines' model builder, at configs/arith.py's policy size and configs/spark_prm.py's PRM size.
  model = lambda h, i, n, heads, kv: arith_rl.model_config(ml_collections.ConfigDict(dict(model=dict(
      hidden_size=h, intermediate_size=i, num_layers=n, num_heads=heads, num_kv_heads=kv, dtype="float32"))), tok)
  cfg, prm_cfg = model(128, 384, 4, 4, 2), model(64, 128, 2, 2, 1)
  opt = ml_collections.ConfigDict(dict(lr=1e-4, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9,
                                       b2=0.99, weight_decay=0.0, grad_clip=1.0))
  tx, schedule = state_lib.make_optimizer(opt)
  G, B = 8, 16
  sp = sampling.SamplingParams(max_new_tokens=enc.solution_len, temperature=1.0, num_samples=G,
                               stop_tokens=(enc.eos,), pad_id=enc.pad)
  settings = rl.GRPOSettings(sampling=sp, kl_coef=0.04)
  params = transformer.init_params(cfg, jax.random.key(0))
  prm = transformer.init_params(prm_cfg, jax.random.key(1))
  batch = next(iter(world_data.world_dataset(enc, 0, B, "rl")))
  prompt, mask, target = (jnp.asarray(batch[k]) for k in ("prompt", "prompt_mask", "target"))
  S = world.max_ops
  spec = R.FormatSpec(world.min_ops, world.max_ops)
  verify_len = wv.VerifierEncoder(world, tok).target_len
  rewards = {
      "rlvr": (WR.make_rlvr_reward(tok), None),
      "disc": (WR.make_prm_reward(prm_cfg, "disc", tok, spec, S), "process_outcome"),
      "prm_cot": (WR.make_prm_reward(prm_cfg, "prm_cot", tok, spec, S, max_new_tokens=verify_len), "process_outcome"),
  }
  rollout = rl.make_rollout(cfg, settings)
  update = rl.make_update(cfg, settings, tx, schedule)
  out = rollout(params, prompt, mask, jax.random.key(2))
  fresh = lambda: state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
  t_rollout = _time(lambda _: rollout(params, prompt, mask, jax.random.key(2)), args.reps)
  print(f"policy {cfg.num_params() / 1e6:.2f}M params, PRM {prm_cfg.num_params() / 1e6:.2f}M; {B} prompts x {G} "
        f"samples, {enc.solution_len} response slots, PRM-CoT decode {verify_len} tokens; {jax.devices()[0]}")
  rows = {}
  for name, (reward_fn, design_name) in rewards.items():
    design = (functools.partial(R.REWARD_DESIGNS[design_name], advantage="grpo") if design_name else None)
    score = jax.jit(reward_fn)
    t_score = _time(lambda _: score(prm, prompt, mask, out, jnp.repeat(target, G)), args.reps)
    scores = score(prm, prompt, mask, out, jnp.repeat(target, G))
    _, adv = design(scores, G) if design else (None, grpo.grpo_advantages(scores["rewards"], G))
    upd = dict(prompt=prompt, prompt_mask=mask, tokens=out.tokens, lengths=out.lengths, old_logp=out.logprobs,
               advantages=adv)
    t_update = _time(lambda state: update(state, params, upd), args.reps, fresh)
    step = rl.make_iteration(cfg, settings, tx, reward_fn, schedule, design=design)
    t_iter = _time(lambda state: step(state, params, prm, prompt, mask, target), args.reps, fresh)
    rows[name] = dict(rollout=t_rollout, scoring=t_score, update=t_update, iteration=t_iter,
                      sum_of_parts=t_rollout + t_score + t_update)
  print("| reward | rollout s | PRM scoring s | update s | sum of parts s | one jitted iteration s |")
  print("|---|---|---|---|---|---|")
  for name, r in rows.items():
    print(f"| {name} | {r['rollout']:.3f} | {r['scoring']:.3f} | {r['update']:.3f} | {r['sum_of_parts']:.3f} | "
          f"{r['iteration']:.3f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(rows=rows, reps=args.reps, policy_params=cfg.num_params(), prm_params=prm_cfg.num_params(),
                     batch=B * G, response_slots=enc.solution_len, prm_cot_tokens=verify_len), f, indent=2)


if __name__ == "__main__":
  main()
