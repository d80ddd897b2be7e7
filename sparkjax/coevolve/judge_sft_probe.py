"""Can the world's model learn to judge at all? A diagnostic for the CoEvolve world experiment.

The CoEvolve runs' judge stays near balanced accuracy 0.5 (its verdict does not depend on the response). This
probe separates "the model cannot judge" from "GRPO on recycled examples does not teach it": from the SFT'd instruct
policy of a finished `coevolve` run, it supervises the judge directly on *exact* labels, with the same prompts the
recycling builds (the policy's own samples on training problems, graded exactly, `world_recycle.recycle`), and
measures the judge on the SFT policy's responses to the held-out problems with the pipeline's evaluator
(`world_eval.make_judge_eval`; its reflection figures are not meaningful here: the probe trains judging only).

Command:   python -m sparkjax.coevolve.judge_sft_probe --workdir=/tmp/coevolve [--steps=400] [--lr=1e-3]
           (WORKDIR: a `configs/coevolve.py` run's; its config is read from configs/coevolve.py)
Writes WORKDIR/coevolve/judge_sft_probe.json: the held-out judge metrics before and every `--every` steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparkjax import sampling
from sparkjax.coevolve import world_recycle as wr
from sparkjax.coevolve import world_sft
from sparkjax.coevolve.recycle import RecycleConfig
from sparkjax.data import world_data
from sparkjax.pipelines import arith_rl, common
from sparkjax.pipelines import coevolve as pipeline
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import sft, state as state_lib

ROOT = Path(__file__).resolve().parents[2]


def make_example_fn(w, config, prompts: int):
  """fn(params, key, prompt, mask, target) -> Examples (jitted): the policy's samples at T = 1 on `prompts` problems,
  graded exactly and recycled with every group giving a judge example (half pointwise in mixed groups)."""
  samples = config.rl.group_size
  sp = dataclasses.replace(pipeline.policy_sampling(config, w.encoder), num_samples=samples, temperature=1.0)
  exact = world_data.answer_check(w.tok)
  rc = RecycleConfig(max_judge=prompts, max_reflection=0, pointwise_in_mixed=0.5,
                     show_reasoning=config.coevolve.show_reasoning)

  @jax.jit
  def fn(params, key, prompt, mask, target):
    k1, k2 = jax.random.split(key)
    out = sampling.sample(params, prompt, mask, k1, cfg=w.cfg, sp=sp)
    right = exact(out.tokens, out.lengths, out.finished, jnp.repeat(target, samples)) > 0.5
    return wr.recycle(k2, w.vocab, rc, prompt, mask, out.tokens, out.lengths, right, target)

  return fn


def sft_rows(w, ex) -> dict:
  """The valid examples as SFT rows [E, W + 8]: the prompt, then `<answer> \\boxed{ label } </answer> <eos>`."""
  valid = np.asarray(ex.valid)
  rows = []
  for p, m, label in zip(np.asarray(ex.prompt)[valid], np.asarray(ex.mask)[valid], np.asarray(ex.label)[valid]):
    verdict = w.tok.convert_ids_to_tokens(int(label))
    rows.append(world_sft.row(p[m].tolist(), world_sft.judge_target(w.tok, verdict) + [w.encoder.eos],
                              w.vocab.width + 8, w.encoder.pad))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--every", type=int, default=100)
  ap.add_argument("--prompts", type=int, default=16, help="training problems per step (one example each)")
  args = ap.parse_args(argv)
  spec = importlib.util.spec_from_file_location("coevolve_config", ROOT / "configs" / "coevolve.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()  # the experiment's own config
  workdir = Path(args.workdir)
  w = pipeline.setup(config, workdir)
  ckpt_dir = workdir / "coevolve" / "checkpoints" / "policy_sft"
  if not ckpt_dir.is_dir():
    raise SystemExit(f"{ckpt_dir} not found: run python -m sparkjax.main --config=configs/coevolve.py "
                     f"--workdir={workdir} first (its SFT phase is enough)")
  sc = config.policy.sft
  data = world_sft.instruct_dataset(w.encoder, w.vocab, config.policy.train_seed, sc.batch_size, sc.judge_share,
                                    sc.p_error, config.coevolve.show_reasoning)
  writer = metrics_lib.Writer(workdir / "coevolve" / "tensorboard" / "judge_sft_probe", enabled=False)
  sft_params, _, _ = arith_rl.sft_phase(config, workdir / "coevolve", w.cfg, w.encoder, w.evaluate, writer, w.place,
                                        c=sc, ckpt_dir=ckpt_dir, name="policy.sft", data=data)
  make = make_example_fn(w, config, args.prompts)
  stream = iter(world_data.world_dataset(w.encoder, 1234, args.prompts, "rl"))
  tx = optax.adam(args.lr)
  state = state_lib.create_state(jax.tree.map(jnp.copy, sft_params), tx, 0)
  step = jax.jit(lambda s, b: sft.sft_step(s, b, cfg=w.cfg, tx=tx))
  curve = {0: w.judge_metrics(state.params, sft_params)}
  common.say(f"judge SFT probe, step 0: {curve[0]}")
  t0 = time.time()
  for i in range(1, args.steps + 1):
    b = next(stream)
    rows = sft_rows(w, make(sft_params, jax.random.key(i), b["prompt"], b["prompt_mask"], b["target"]))
    state, m = step(state, rows)
    if i % args.every == 0 or i == args.steps:
      curve[i] = w.judge_metrics(state.params, sft_params) | dict(loss=float(m["loss"]))
      common.say(f"judge SFT probe, step {i} ({time.time() - t0:.0f}s): balanced "
                 f"{curve[i]['balanced_accuracy']:.3f}, pointwise {curve[i]['pointwise_accuracy']:.3f}, pairwise "
                 f"{curve[i]['pairwise_accuracy']:.3f}, loss {curve[i]['loss']:.3f}")
  out = workdir / "coevolve" / "judge_sft_probe.json"
  out.write_text(json.dumps(dict(steps=args.steps, lr=args.lr, prompts_per_step=args.prompts, curve=curve),
                            indent=2))
  print(json.dumps(curve[args.steps], indent=2))


if __name__ == "__main__":
  main()
