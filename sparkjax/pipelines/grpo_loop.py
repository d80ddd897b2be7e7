"""The GRPO loop every RL pipeline shares: resume, iterate, log, evaluate, checkpoint.

It counts iterations itself and stores the count in each checkpoint, rather than deriving it from the optimizer's
step (`state.step // mu` stops being the iteration as soon as a second kind of update shares the optimizer, as the
judge updates of SPARK-CoEvolve do).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax

from sparkjax import cli
from sparkjax.pipelines import common
from sparkjax.train import metrics as metrics_lib


@dataclasses.dataclass
class LoopResult:
  state: object
  history: dict  # {str(iteration): the evaluation's dict}
  final_metrics: dict  # the last iteration's host metrics
  iterations: int  # iterations done (from the checkpoint when the run had already finished)
  curves: dict = dataclasses.field(default_factory=dict)  # {metric in `keep`: [value of iteration 1, 2, ...]}


def run_grpo(iterate: Callable, state, it, *, iterations: int, ref_params, scorer_params=None, ckpt, writer,
             place: common.Placement, checkpoint_every: int, rollouts_per_iteration: int, what: str,
             evaluate: Callable | None = None, eval_every: int = 0, eval_at_start: bool = False,
             name: str = "grpo", keep: tuple[str, ...] = (), host_state=None) -> LoopResult:
  """Runs `iterate(state, ref_params, scorer_params, prompt, prompt_mask, target) -> (state, metrics, rollout)` on
  batches of `it` until `iterations` iterations are done, resuming from the newest readable checkpoint in `ckpt`.

  Metrics go to TensorBoard under `rl/` one iteration late (NaN-checked) with samples/s and tokens/s.
  `evaluate(i, params) -> dict` runs after every `eval_every` iterations, after the last one and, with
  `eval_at_start`, before the first; it logs what it wants and its dict is kept in `history[str(i)]`. A checkpoint
  (state, data iterator, iteration count, history, last metrics) is written every `checkpoint_every` iterations and
  after the last, each only after its iteration's metrics were checked. `what` names the batch in errors.
  The host metrics named in `keep` are kept per iteration (`LoopResult.curves`, checkpointed with the rest; empty
  for a name the iteration does not report).
  host_state: an object with `state() -> dict` (JSON) and `load(dict)` whose state is saved with each checkpoint and
  restored on resume (CoEvolve's judge cache on the host path).
  state: the initial train state, or a function of no arguments that builds it (a jitted function with
  out_shardings): then a resumed run restores onto its abstract shapes and never builds it, so the initial state
  (parameters and optimizer moments, held by the caller) does not sit in memory beside the restored one.
  """
  history, final, start, curves = {}, {}, 0, {k: [] for k in keep}
  build = state if callable(state) else None
  resumed = ckpt.resume(jax.eval_shape(build) if build else state, it.set_state, common.say)
  if resumed is None and build is not None:
    state = build()
  if resumed is not None:
    state, extra = resumed
    history, final = extra.get("history", {}), extra.get("final_metrics", {})
    curves |= {k: v for k, v in extra.get("curves", {}).items() if k in curves}
    # Checkpoints of this loop are saved under their iteration count; "iteration" states it explicitly.
    start = int(extra.get("iteration", ckpt.latest_step()))
    if host_state is not None:
      host_state.load(extra.get("host_state", {}))
    common.say(f"rl: resumed from iteration {start}")

  def run_eval(i, params):
    history[str(i)] = evaluate(i, params)

  def record(host):  # every iteration's host metrics arrive once, in order (from push, or from a flush)
    for k in curves:
      if host and k in host:  # a metric this run's reward does not report stays an empty curve
        curves[k].append(float(host[k]))

  if evaluate is not None and eval_at_start and start == 0 and "0" not in history:
    run_eval(0, state.params)
  loop = metrics_lib.MetricsLoop(writer, "rl/", derive=common.rl_throughput(rollouts_per_iteration))
  bar = cli.Progress(range(start, iterations), initial=start, total=iterations, desc=name,
                     disable=jax.process_index() != 0 or start >= iterations)
  t_last = time.time()
  for i in bar:
    batch = place.batch(next(it), what)
    state, m, _ = iterate(state, ref_params, scorer_params, batch["prompt"], batch["prompt_mask"], batch["target"])
    now = time.time()
    host = loop.push(i, m, dict(iteration_seconds=now - t_last))
    record(host)
    t_last = now
    if host:
      bar.set_postfix(reward=f"{host['reward_mean']:.3f}", kl=f"{host['kl']:.4f}")
    last = i + 1 == iterations
    if evaluate is not None and ((i + 1) % eval_every == 0 or last):
      run_eval(i + 1, state.params)
    if (i + 1) % checkpoint_every == 0 or last:
      record(loop.flush())
      ckpt.save(i + 1, state, common.data_state(it), dict(
          iteration=i + 1, history=history, final_metrics=loop.last, curves=curves,
          **({} if host_state is None else dict(host_state=host_state.state()))))
  flushed = loop.flush()
  record(flushed)
  final = flushed or loop.last or final  # a finished run restarted keeps the metrics its checkpoint holds
  return LoopResult(state, history, final, max(start, iterations), curves)
