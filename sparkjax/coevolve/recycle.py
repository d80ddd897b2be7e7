"""Recycling: an iteration's rollouts and their 0/1 correctness become judge and reflection examples, and a FIFO
cache holds them until a reward-period update takes a batch (shared/papers/spark-coevolve.md, "Recycling").

Per prompt group (at most one judge example per group):
  all correct -> pointwise on one of its answers, label "Yes";
  all wrong   -> pointwise on one of its answers, label "No";
  mixed       -> with probability `pointwise_in_mixed` (spec 0.3) pointwise on a correct or an incorrect answer
                 (50/50, label Yes / No), else pairwise: one correct and one incorrect answer in random order,
                 label the letter of the correct one.
Reflection, from each group with a wrong answer: the question and one wrong response, its full reasoning for a
`reflection_full_share` of them (spec: half) and only its final answer for the rest; the target is the ground-truth
answer. `confirm_share` of the groups with a correct answer also give a reflection example on a correct one (the
original never trains "confirm a correct answer"). At most `max_judge` judge and `max_reflection` reflection
examples per step (spec 32 + 32), a random subset when there are more. `judge_kinds` keeps only some judge kinds
(the pointwise-only and pairwise-only ablations).

This is the host version, for decoded text (real tokenizers); `coevolve.world_recycle` applies the same rules on
device to the world's rollout tokens.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Sequence

import numpy as np

from sparkjax.coevolve import judge_format as jf


@dataclasses.dataclass(frozen=True)
class RecycleConfig:
  max_judge: int = 32
  max_reflection: int = 32
  pointwise_in_mixed: float = 0.3
  show_reasoning: bool = False  # judge prompts show each response in full (True) or only its final answer
  reflection_full_share: float = 0.5
  confirm_share: float = 0.0
  # The judge example kinds kept (ablations: ("pointwise",) or ("pairwise",)). A mixed group gives the one kept
  # kind; an all-correct or all-wrong group gives nothing when pointwise is not kept.
  judge_kinds: tuple[str, ...] = ("pointwise", "pairwise")

  @classmethod
  def from_config(cls, c, **overrides) -> "RecycleConfig":
    """From a config's `coevolve` block (its max_judge, max_reflection, pointwise_in_mixed, show_reasoning,
    reflection_full_share, confirm_share), with `overrides` (an ablation's) applied."""
    return cls(**{f: c[f] for f in ("max_judge", "max_reflection", "pointwise_in_mixed", "show_reasoning",
                                     "reflection_full_share", "confirm_share")} | overrides)

  def __post_init__(self):
    bad = [k for k in self.judge_kinds if k not in ("pointwise", "pairwise")]
    if bad or len(set(self.judge_kinds)) != len(self.judge_kinds):
      raise ValueError(f"recycle judge_kinds={self.judge_kinds!r}: expected distinct entries of 'pointwise', "
                       "'pairwise' (an empty tuple keeps only reflection)")
    for name in ("max_judge", "max_reflection"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"recycle {name}={v!r}: expected an integer >= 0")
    for name in ("pointwise_in_mixed", "reflection_full_share", "confirm_share"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"recycle {name}={v!r}: expected a fraction in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Group:
  """One prompt's rollouts: the question, its ground-truth answer, each response, its extracted final answer ("" if
  none) and whether it was correct."""

  question: str
  gold: str
  responses: tuple[str, ...]
  answers: tuple[str, ...]
  correct: tuple[bool, ...]

  def __post_init__(self):
    if not len(self.responses) == len(self.answers) == len(self.correct) > 0:
      raise ValueError(f"group of {self.question[:40]!r}: {len(self.responses)} responses, {len(self.answers)} "
                       f"answers, {len(self.correct)} correctness flags; expected the same number, at least 1")


@dataclasses.dataclass(frozen=True)
class Example:
  kind: str  # "pointwise" | "pairwise" | "reflection"
  prompt: str
  label: str  # "Yes" / "No" / "A" / "B" / the ground-truth answer
  source: str  # "all_correct" | "all_wrong" | "mixed" | "wrong" (reflection) | "confirm" (reflection)


def _subset(items: list, cap: int, rng: np.random.Generator) -> list:
  if len(items) <= cap:
    return items
  keep = np.sort(rng.choice(len(items), size=cap, replace=False))
  return [items[i] for i in keep]


def recycle(groups: Sequence[Group], cfg: RecycleConfig, rng: np.random.Generator) -> tuple[list[Example],
                                                                                           list[Example]]:
  """(judge examples, reflection examples) of one iteration's groups, by the rules of the module docstring."""
  judge, refl = [], []
  for g in groups:
    shown = g.responses if cfg.show_reasoning else g.answers
    ok = [i for i, c in enumerate(g.correct) if c]
    bad = [i for i, c in enumerate(g.correct) if not c]
    point, pair = "pointwise" in cfg.judge_kinds, "pairwise" in cfg.judge_kinds
    if not bad or not ok:
      if point:
        i = int(rng.choice(ok or bad))
        judge.append(Example("pointwise", jf.render("pointwise", rng, g.question, shown[i]), "Yes" if ok else "No",
                             "all_correct" if ok else "all_wrong"))
    elif not point and not pair:
      pass
    elif point and (not pair or rng.random() < cfg.pointwise_in_mixed):
      right = rng.random() < 0.5
      i = int(rng.choice(ok if right else bad))
      judge.append(Example("pointwise", jf.render("pointwise", rng, g.question, shown[i]), "Yes" if right else "No",
                           "mixed"))
    else:
      c, w = int(rng.choice(ok)), int(rng.choice(bad))
      first_correct = rng.random() < 0.5
      a, b = (c, w) if first_correct else (w, c)
      judge.append(Example("pairwise", jf.render("pairwise", rng, g.question, answer_a=shown[a], answer_b=shown[b]),
                           "A" if first_correct else "B", "mixed"))
    if bad:
      refl.append((g, int(rng.choice(bad)), "wrong"))
    if ok and cfg.confirm_share and rng.random() < cfg.confirm_share:
      refl.append((g, int(rng.choice(ok)), "confirm"))
  judge = _subset(judge, cfg.max_judge, rng)
  refl = _subset(refl, cfg.max_reflection, rng)
  # Exactly round(share * n) of the reflection examples show the full response, chosen at random.
  full = set(rng.choice(len(refl), size=int(round(cfg.reflection_full_share * len(refl))), replace=False).tolist()
             ) if refl else set()
  out = [Example("reflection", jf.render("reflection", rng, g.question, g.responses[i] if k in full else g.answers[i]),
                 str(g.gold), source) for k, (g, i, source) in enumerate(refl)]
  return judge, out


class JudgeCache:
  """A FIFO of examples waiting for a reward-period update; `reset` at each epoch; `state` / `from_state` round-trip
  it through a checkpoint (JSON)."""

  def __init__(self, examples: Sequence[Example] = ()):
    self._q: deque[Example] = deque(examples)

  def __len__(self) -> int:
    return len(self._q)

  def add(self, examples: Sequence[Example]):
    self._q.extend(examples)

  def take(self, n: int) -> list[Example]:
    """The n oldest examples, removed; raises when fewer are held (check `len` first)."""
    if n > len(self._q):
      raise ValueError(f"the judge cache holds {len(self._q)} examples, {n} were asked for")
    return [self._q.popleft() for _ in range(n)]

  def reset(self):
    self._q.clear()

  def state(self) -> dict:
    return dict(examples=[dataclasses.asdict(e) for e in self._q])

  @classmethod
  def from_state(cls, state: dict) -> "JudgeCache":
    try:
      return cls([Example(**e) for e in state.get("examples", [])])
    except TypeError as e:
      fields = ", ".join(f.name for f in dataclasses.fields(Example))
      raise ValueError(f"judge cache state: an example does not have the fields {fields} ({e})") from None
