"""The GRPO iteration split around a reward computed on the host (math-verify, the world grader in text form).

jitted rollout -> gather and decode the completions -> grade them in worker processes -> jitted advantages + update.
Called like the one-jit iteration, except that each prompt's target is an integer the caller's `golds` function
turns into the gold answer text (a token id in the world, a record index for real data), so every process can
grade every row without shipping strings between processes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from sparkjax import sharding
from sparkjax.data.host_grading import GraderPool
from sparkjax.rl import grpo
from sparkjax.rl import iteration as rl_iteration


class HostRewardIteration:
  """`(state, ref_params, scorer_params, prompt_BP, prompt_mask_BP, targets_B) -> (state, metrics, rollout)` with a
  host reward: the device iteration's signature (`rl.iteration.make_iteration`); scorer_params is unused (None).

  golds(targets: np.ndarray [B] int) -> B gold answer strings. decode(tokens: list[int]) -> completion text.
  With `state_sharding` given, the rollout and update are pinned to it (see `rl.iteration._pinned`).
  scorer: instead of grading against golds, `scorer(texts: list[str], targets_N: np.ndarray) -> dict` with
  "rewards" [N] and any per-row diagnostics (reported as metrics `score_<name>`), e.g. a PRM
  (`spark.host_prm_reward.HostPRMScorer`).
  """

  def __init__(self, cfg, settings: rl_iteration.GRPOSettings, tx, schedule, decode: Callable[[Sequence[int]], str],
               golds: Callable[[np.ndarray], list[str]], grader: str = "math_verify", workers: int = 2,
               timeout: float = 10.0, state_sharding=None, scorer: Callable | None = None):
    mesh = jax.tree.leaves(state_sharding)[0].mesh if state_sharding is not None else None
    self.rollout = rl_iteration.make_rollout(cfg, settings, state_sharding and state_sharding.params, mesh)
    self.update = rl_iteration.make_update(cfg, settings, tx, schedule, state_sharding)
    self.rows = sharding.batch_sharding(mesh, 1) if mesh is not None else None
    self.settings, self.decode, self.golds = settings, decode, golds
    self.scorer = scorer
    self.pool = GraderPool(grader, workers, timeout) if scorer is None else None

  def __call__(self, state, ref_params, scorer_params, prompt, prompt_mask, targets):
    G = self.settings.group_size
    out = self.rollout(state.params, prompt, prompt_mask, state.key())
    # Every process grades all rows (grading is cheap next to sampling), so the rewards are the same everywhere.
    tokens, lengths, targets = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                                for x in (out.tokens, out.lengths, targets))
    preds = [self.decode(tokens[i, :lengths[i]].tolist()) for i in range(len(lengths))]
    if self.scorer is None:
      graded = self.pool.grade(preds, [g for g in self.golds(targets) for _ in range(G)])
      host_rewards, extra = graded.rewards, dict(grader_timeouts=graded.timeouts, grader_errors=graded.errors)
    else:
      scores = self.scorer(preds, np.repeat(targets, G))
      host_rewards = np.asarray(scores["rewards"], np.float32)
      extra = {f"score_{k}": float(np.mean(v)) for k, v in scores.items() if k != "rewards"}
    # The host's view of this iteration, for a later stage on the host (CoEvolve's recycling): every row's text,
    # reward, and its prompt's target.
    self.last = dict(texts=preds, rewards=np.asarray(host_rewards, np.float32), targets=targets)
    rewards = host_rewards
    if self.rows is not None:  # every process holds all rows; each places the shards its devices own
      rewards = jax.make_array_from_callback(rewards.shape, self.rows, lambda i: host_rewards[i])
    adv = grpo.ADVANTAGES[self.settings.advantage](rewards, G)
    batch = dict(prompt=prompt, prompt_mask=prompt_mask, tokens=out.tokens, lengths=out.lengths,
                 old_logp=out.logprobs, advantages=adv)
    state, metrics = self.update(state, ref_params, batch)
    metrics = metrics | rl_iteration.rollout_metrics(rewards, out, G) | dict(generated_tokens=out.lengths.sum()) | extra
    rollout = rl_iteration.Rollout(prompt, prompt_mask, out.tokens, out.lengths, out.finished,
                                   dict(rewards=rewards), adv)
    return state, metrics, rollout

  def close(self):
    if self.pool is not None:
      self.pool.close()
