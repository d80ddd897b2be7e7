"""SPARK-CoEvolve on real text: the policy's GRPO iteration with a host reward (math-verify), its decoded rollouts
recycled into judge and reflection examples on the host (`coevolve.recycle`), a FIFO `JudgeCache`, and the
reward-period update when the cache holds a batch: the judge prompts in the chat template, G_j samples each,
reward by the one judge parser (`judge_format.judge_reward`; reflection answers compared with math-verify), GRPO
advantages, and an update of the same state, so the optimizer's step (and its schedule) counts both kinds.

The cache and the counters are host state: `state()` / `load(dict)` round-trip them through the GRPO loop's
checkpoint (`grpo_loop.run_grpo(host_state=...)`), so a killed run resumes with the same cache. Recycling draws
from a generator keyed by (seed, iteration), so a resumed run draws the same examples.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from sparkjax import distributed, sharding
from sparkjax.coevolve import judge_format as jf
from sparkjax.coevolve.recycle import Example, Group, JudgeCache, RecycleConfig, recycle
from sparkjax.rl import iteration as rl_iteration
from sparkjax.rl.host_reward import HostRewardIteration


@dataclasses.dataclass(frozen=True)
class HostJudgeSettings:
  recycle: RecycleConfig
  batch: int  # judge prompts per reward-period update
  max_prompt_len: int  # judge prompts are left-padded to this many tokens; longer ones are cut on the left
  reset_every: int = 0  # iterations per epoch (the cache empties at each multiple); 0 = never
  seed: int = 0


NO_ANSWER = "(no final answer)"  # what an answer-only judge prompt shows for a response without one boxed answer


def status_key(status: str) -> str:
  """A judge_format status as a metric name: "several boxes" -> "several_boxes", "\\box{} instead of
  \\boxed{}" -> "box_instead_of_boxed"."""
  return re.sub(r"[^a-z]+", "_", status.lower()).strip("_")


def boxed_answer(text: str) -> str:
  """The one `\\boxed{}` of a response ("" when there is none or several): the answer judge prompts show."""
  p = jf.parse_boxed(text)
  return p.value if p.status == "ok" else ""


class HostCoevolveIteration:
  """`(state, ref_params, scorer_params, prompt, prompt_mask, targets) -> (state, metrics, rollout)`: the policy's
  iteration (`HostRewardIteration`), then recycling and, when the cache holds `batch` examples, the judge update.

  question(target) / gold(target): the problem text and reference answer of a prompt's target (a record index).
  encode_judge(text) -> token ids of a judge prompt (the chat template applied). answers_match(pred, gold) -> bool
  for reflection (math-verify). `examples_file`: every recycled example is appended there as JSON (main process).
  """

  def __init__(self, policy: HostRewardIteration, cfg, judge_settings: rl_iteration.GRPOSettings, tx, schedule,
               js: HostJudgeSettings, question: Callable[[int], str], gold: Callable[[int], str],
               encode_judge: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str],
               answers_match: Callable[[Sequence[str], Sequence[str]], np.ndarray], pad_id: int,
               state_sharding=None, examples_file: Path | None = None):
    self.mesh = jax.tree.leaves(state_sharding)[0].mesh if state_sharding is not None else None
    self.policy, self.js, self.settings = policy, js, judge_settings
    # The judge's update is the same host-reward GRPO iteration on the judge batch, scored by `score_rows`.
    self.judge = HostRewardIteration(cfg, judge_settings, tx, schedule, decode, None, state_sharding=state_sharding,
                                     scorer=self.score_rows)
    self._examples: list[Example] = []  # the batch the judge update in progress scores
    self.question, self.gold, self.encode_judge = question, gold, encode_judge
    self.answers_match, self.pad = answers_match, pad_id
    self.examples_file = examples_file
    self.cache = JudgeCache()
    self.iterations = 0
    self.judge_updates = 0
    self.epochs = 0
    self.status_counts = {status_key(s): 0 for s in jf.STATUSES}  # every judge row so far, by parse status

  # ---- checkpointed host state ----

  def state(self) -> dict:
    return dict(cache=self.cache.state(), iterations=self.iterations, judge_updates=self.judge_updates,
                epochs=self.epochs, status_counts=dict(self.status_counts))

  def load(self, s: dict):
    self.cache = JudgeCache.from_state(s.get("cache", {}))
    self.iterations, self.judge_updates = int(s.get("iterations", 0)), int(s.get("judge_updates", 0))
    self.epochs = int(s.get("epochs", 0))
    self.status_counts |= {k: int(v) for k, v in s.get("status_counts", {}).items()}
    # Examples a killed run wrote after its checkpoint are written again by this run: keep the earlier ones only.
    f = self.examples_file
    if f is not None and f.is_file() and distributed.is_main():
      keep = [l for l in f.read_text().splitlines() if l and json.loads(l)["iteration"] < self.iterations]
      f.write_text("".join(l + "\n" for l in keep))

  # ---- one iteration ----

  def groups(self, texts: list[str], rewards: np.ndarray, targets: np.ndarray) -> list[Group]:
    G = len(texts) // len(targets)
    out = []
    for b, t in enumerate(targets):
      rows = range(b * G, (b + 1) * G)
      out.append(Group(self.question(int(t)), self.gold(int(t)), tuple(texts[i] for i in rows),
                       tuple(boxed_answer(texts[i]) or NO_ANSWER for i in rows),
                       tuple(bool(rewards[i] > 0.5) for i in rows)))
    return out

  def encode(self, examples: list[Example]) -> tuple[np.ndarray, np.ndarray, int]:
    """Judge prompts -> (tokens [J, W], mask [J, W], how many were cut on the left to fit W)."""
    W = self.js.max_prompt_len
    tokens, mask, cut = np.full((len(examples), W), self.pad, np.int32), np.zeros((len(examples), W), bool), 0
    for i, e in enumerate(examples):
      ids = self.encode_judge(e.prompt)
      if len(ids) > W:
        ids, cut = ids[-W:], cut + 1
      tokens[i, W - len(ids):], mask[i, W - len(ids):] = ids, True
    return tokens, mask, cut

  def score(self, texts: list[str], examples: list[Example]) -> tuple[np.ndarray, list[str]]:
    """(rewards, parse statuses) of judge responses, row i answering examples[i]: the one judge parser; a reflection
    answer in its one box is compared with the label by `answers_match`."""
    rewards = np.zeros(len(texts), np.float32)
    statuses, refl = [], []
    for i, (text, e) in enumerate(zip(texts, examples)):
      if e.kind == "reflection":
        p = jf.parse_boxed(text)
        statuses.append(p.status)
        if p.status == "ok":
          refl.append((i, p.value, e.label))
        continue
      rewards[i], status = jf.judge_reward(text, e.kind, e.label)
      statuses.append(status)
    if refl:
      ok = self.answers_match([f"\\boxed{{{v}}}" for _, v, _ in refl], [g for _, _, g in refl])
      for (i, _, _), m in zip(refl, ok):
        rewards[i] = float(m)
    return rewards, statuses

  def score_rows(self, texts: list[str], targets_N: np.ndarray) -> dict:
    """The judge iteration's scorer: target t names example t of the batch in progress. -> {"rewards": [rows], and
    per failure status a [rows] flag}; the statuses also add to the run's cumulative counts."""
    rewards, statuses = self.score(texts, [self._examples[int(t)] for t in targets_N])
    for st in statuses:
      self.status_counts[status_key(st)] += 1
    return dict(rewards=rewards, **{status_key(s): np.array([st == s for st in statuses]) for s in jf.STATUSES[1:]})

  def __call__(self, state, ref_params, scorer_params, prompt, prompt_mask, targets):
    state, metrics, roll = self.policy(state, ref_params, scorer_params, prompt, prompt_mask, targets)
    js = self.js
    if js.reset_every and self.iterations > 0 and self.iterations % js.reset_every == 0:
      self.cache.reset()
      self.epochs += 1
    last = self.policy.last
    rng = np.random.default_rng([js.seed, self.iterations])
    judge, refl = recycle(self.groups(last["texts"], last["rewards"], last["targets"]), js.recycle, rng)
    self.cache.add(judge + refl)
    if self.examples_file is not None and distributed.is_main():
      with open(self.examples_file, "a") as f:
        for e in judge + refl:
          f.write(json.dumps(dict(iteration=self.iterations, **dataclasses.asdict(e))) + "\n")
    metrics = dict(metrics) | {f"recycled_{k}": float(sum(e.kind == k for e in judge + refl)) for k in jf.KINDS}
    if len(self.cache) >= js.batch:
      state, jm = self.judge_update(state, ref_params, self.cache.take(js.batch))
      metrics |= jm
    else:
      metrics["judge_update"] = 0.0
    self.iterations += 1
    metrics |= dict(cache_count=float(len(self.cache)), judge_updates=float(self.judge_updates))
    metrics |= {f"judge_rows_{k}": float(v) for k, v in self.status_counts.items()}  # cumulative counts
    return state, metrics, roll

  def judge_update(self, state, ref_params, examples: list[Example]) -> tuple[object, dict]:
    """The reward-period update on `examples`: the judge's `HostRewardIteration` (G_j samples each, host scoring,
    advantages, an update of the same state). Its metrics, prefixed `judge_`, plus each kind's reward."""
    tokens, mask, cut = self.encode(examples)
    targets = np.arange(len(examples), dtype=np.int32)
    if self.mesh is not None:  # every process holds the whole batch; each places the rows its devices own
      put = lambda x: jax.make_array_from_callback(x.shape, sharding.batch_sharding(self.mesh, x.ndim),
                                                   lambda i: x[i])
      tokens, mask, targets = put(tokens), put(mask), put(targets)
    self._examples = examples
    state, m, _ = self.judge(state, ref_params, None, tokens, mask, targets)
    self.judge_updates += 1
    kinds = np.repeat([e.kind for e in examples], self.settings.group_size)
    host_r = self.judge.last["rewards"]
    jm = {f"judge_{k.removeprefix('score_')}": v for k, v in m.items()}
    jm |= dict(judge_update=1.0, judge_prompts_cut=float(cut))
    for k in jf.KINDS:
      sel = kinds == k
      jm[f"judge_{k}_reward"] = float(host_r[sel].mean()) if sel.any() else 0.0
    return state, jm

  def close(self):
    self.policy.close()
    self.judge.close()
