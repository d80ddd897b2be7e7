"""The SPARK-CoEvolve iteration in the world, one jitted call: the policy's GRPO iteration (verifiable reward), its
rollouts recycled into judge examples on device, appended to the FIFO cache, and, when the cache holds a batch, the
reward-period update: a second GRPO update of the same weights on the `batch` oldest judge prompts, G samples each,
rewarded by exact match of the boxed output against the label (`world_judge.judge_scorer`).

Both kinds of update step the same optimizer: `TrainState.step` (and so the learning-rate schedule and the PRNG
stream) counts every optimizer update, and `Cache` counts policy iterations and judge updates apart.

Shapes: B prompts, G samples each, N = B * G rows; the judge update: batch J prompts of width W, G_j samples each.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from sparkjax import sharding
from sparkjax.coevolve import world_judge as wj
from sparkjax.coevolve import world_recycle as wr
from sparkjax.coevolve.recycle import RecycleConfig
from sparkjax.models.config import ModelConfig
from sparkjax.rl import iteration as rl_iteration
from sparkjax.train.state import TrainState


@flax.struct.dataclass
class CoevolveState:
  """The training state plus the judge cache and counters: one pytree, checkpointed whole."""

  train: TrainState
  cache: wr.Cache

  @property
  def params(self):
    return self.train.params

  @property
  def step(self):
    return self.train.step


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
  """Static settings of the judge half (hashable). enabled=False is GRPO policy-only through the same code."""

  enabled: bool
  recycle: RecycleConfig
  batch: int  # J: judge prompts per reward-period update (G_j, its samples each, is the judge GRPOSettings')
  reset_every: int = 0  # policy iterations per epoch: the cache empties at each multiple; 0 = never


def create(train: TrainState, vocab: wj.JudgeVocab, js: JudgeSettings) -> CoevolveState:
  return CoevolveState(train, wr.empty_cache(2 * js.batch, vocab.width, vocab.pad))


def judge_update(state: TrainState, ref_params, prompt, mask, label, kind, *, cfg: ModelConfig,
                 settings: rl_iteration.GRPOSettings, tx, schedule, scorer: Callable,
                 row_sharding=None) -> tuple[TrainState, dict]:
  """The reward-period update on J judge prompts [J, W] with labels [J] and kinds [J]: the GRPO iteration
  (`rl.iteration.iteration`: G_j samples each, advantages, one `policy_update` of the same state) with the judge's
  scorer (`world_judge.judge_scorer`: r = 1[boxed output == label], 0 for no box, several boxes or another verdict).
  Metrics are the iteration's, prefixed `judge_` (the scorer's status shares as judge_no_box, ...), plus the reward
  and share of each kind."""
  targets = jnp.stack([label, kind], axis=1)
  if row_sharding is not None:
    prompt, mask, targets = (jax.lax.with_sharding_constraint(x, row_sharding) for x in (prompt, mask, targets))
  state, m, roll = rl_iteration.iteration(state, ref_params, None, prompt, mask, targets, cfg=cfg,
                                          settings=settings, tx=tx, reward_fn=scorer, schedule=schedule)
  kind_N = jnp.repeat(kind, settings.group_size)
  metrics = {f"judge_{k.removeprefix('score_')}": v for k, v in m.items()} | dict(judge_update=jnp.float32(1.0))
  for i, name in enumerate(wj.KINDS):
    metrics[f"judge_{name}_reward"] = wj.mean_where(roll.scores["rewards"], kind_N == i)
    metrics[f"judge_{name}_share"] = (kind == i).astype(jnp.float32).mean()
  return state, metrics


def iteration(co: CoevolveState, ref_params, scorer_params, prompt_BP, prompt_mask_BP, targets_B, *,
              cfg: ModelConfig, settings: rl_iteration.GRPOSettings, judge_settings: rl_iteration.GRPOSettings,
              js: JudgeSettings, tx, reward_fn: Callable, check: Callable, vocab: wj.JudgeVocab,
              schedule=None, row_sharding=None) -> tuple[CoevolveState, dict, rl_iteration.Rollout]:
  """One CoEvolve iteration: (state, prompts, answer tokens) -> (state, metrics, the policy's rollout).

  reward_fn: the policy's verifiable reward (a scorer, `rl.iteration`); a row counts as correct for recycling when
  its reward is > 0.5. check: the world's answer check (`world_data.answer_check`), the judge's reward. The epoch reset happens before an iteration whose index is a multiple of js.reset_every.
  """
  key = co.train.key()  # the rollout's key; recycling draws from a stream folded off it
  state, metrics, roll = rl_iteration.iteration(co.train, ref_params, scorer_params, prompt_BP, prompt_mask_BP,
                                                targets_B, cfg=cfg, settings=settings, tx=tx, reward_fn=reward_fn,
                                                schedule=schedule)
  cache = co.cache
  if not js.enabled:
    return CoevolveState(state, cache.replace(iterations=cache.iterations + 1)), metrics, roll
  wr.check_sizes(js.recycle, prompt_BP.shape[0], js.batch)  # at trace time: the ring buffer must never overflow
  if cache.capacity != 2 * js.batch:
    raise ValueError(f"judge cache of {cache.capacity} slots, expected 2 x judge batch = {2 * js.batch} "
                     "(build the state with coevolve.iteration.create)")
  if js.reset_every:
    new_epoch = (cache.iterations > 0) & (cache.iterations % js.reset_every == 0)
    cache = jax.lax.cond(new_epoch, wr.reset, lambda c: c, cache)
  correct = roll.scores["rewards"] > 0.5
  ex = wr.recycle(jax.random.fold_in(key, 1), vocab, js.recycle, prompt_BP, prompt_mask_BP, roll.tokens,
                  roll.lengths, correct, targets_B)
  cache = wr.push(cache, ex)
  for i, name in enumerate(wj.KINDS):
    metrics[f"recycled_{name}"] = (ex.valid & (ex.kind == i)).sum().astype(jnp.float32)

  upd = functools.partial(judge_update, ref_params=ref_params, cfg=cfg, settings=judge_settings, tx=tx,
                          schedule=schedule, scorer=wj.judge_scorer(vocab, check), row_sharding=row_sharding)

  def run(args):
    state, cache = args
    cache, (p, m, label, kind) = wr.take(cache, js.batch)
    state, jm = upd(state, prompt=p, mask=m, label=label, kind=kind)
    return state, cache.replace(judge_updates=cache.judge_updates + 1), jm

  def skip(args):
    shapes = jax.eval_shape(run, args)[2]
    return (*args, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

  state, cache, jm = jax.lax.cond(cache.count >= js.batch, run, skip, (state, cache))
  cache = cache.replace(iterations=cache.iterations + 1)
  metrics = metrics | jm | dict(cache_count=cache.count.astype(jnp.float32),
                                judge_updates=cache.judge_updates.astype(jnp.float32),
                                optimizer_steps=state.step.astype(jnp.float32))
  return CoevolveState(state, cache), metrics, roll


def make_iteration(cfg, settings, judge_settings, js: JudgeSettings, tx, reward_fn, check, vocab,
                   schedule=None, state_sharding=None):
  """`iteration(co, ref_params, scorer_params, prompt_BP, prompt_mask_BP, targets_B)` jitted once, the state
  donated; with `state_sharding` (the TrainState's shardings) every input and output is pinned (cache and metrics
  replicated, prompts, targets and the rollout split over the data axes), and the judge prompts are split over the
  data axes inside."""
  mesh = None if state_sharding is None else jax.tree.leaves(state_sharding)[0].mesh
  rows = None if mesh is None else sharding.batch_sharding(mesh, 2)
  fn = functools.partial(iteration, cfg=cfg, settings=settings, judge_settings=judge_settings, js=js, tx=tx,
                         reward_fn=reward_fn, check=check, vocab=vocab, schedule=schedule,
                         row_sharding=rows)
  if mesh is None:
    return jax.jit(fn, donate_argnums=0)
  cache = jax.tree.map(lambda _: sharding.REPLICATED, wr.empty_cache(2, 1, 0))
  co = CoevolveState(state_sharding, cache)
  R, P = sharding.ROWS, sharding.REPLICATED
  return sharding.jit_sharded(fn, mesh, (co, state_sharding.params, P, R, R, R), (co, P, R), donate_argnums=0)
