"""SPARK-PRM Stage III on real text: a generative PRM directory as the GRPO reward, scored on the host side of the
split iteration (`rl.host_reward.HostRewardIteration`), for any tokenizer.

Per rollout: the format constraint on the decoded text (`spark.rewards.format_check_text`); a valid response's
`<step>` blocks and boxed answer become the PRM's input in the verifier format (`spark.verdicts.verifier_prompt`,
"llm" style); the PRM decodes greedily (T = 0, as the paper) through `text_generation.TextModel`; its output is read
by the shared parser (`prm_scorers.score_texts`); an unreadable output is counted and earns 0. Invalid responses are
not sent to the PRM. The scalar reward designs apply here (`process_outcome`, `step_augmented`); the token-level
ones (`selective_advantage`, `global_step`) need each token's step, which the world path computes on device.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from sparkjax import text_generation
from sparkjax.data.host_grading import last_boxed
from sparkjax.spark import prm_examples, prm_scorers, rewards, world_reward

HOST_DESIGNS = tuple(rewards.SCALAR_REWARDS)
_STEP = re.compile(r"<step>(.*?)</step>", re.S)


def split_response(text: str) -> tuple[list[str], str | None]:
  """(the contents of the `<step>` blocks, stripped; the last boxed answer or None) of a policy response."""
  return [s.strip() for s in _STEP.findall(text)], last_boxed(text)


class HostPRMScorer:
  """`scorer(texts: list[str], problems: list[str]) -> dict` of [N] numpy arrays: rewards, format_valid,
  num_steps, prm_parsed (the PRM's output held a final verdict), prm_final, and per-row hack indicators.

  prm_dir: a Hugging Face directory of a generative PRM (format "prm" or "prm_cot": verdict lines and a final
  Yes/No line; "orm": the final line only); params: its parameters when already loaded (e.g. the policy's own
  starting weights), else read from prm_dir onto `mesh`. rows: sampler rows per PRM call.
  """

  def __init__(self, prm_dir: str | Path, fmt: str, design: str, spec: rewards.FormatSpec, max_new_tokens: int,
               rows: int = 64, mesh=None, params=None):
    if fmt not in prm_examples.GENERATIVE_FORMATS:
      known = ", ".join(prm_examples.GENERATIVE_FORMATS)
      raise ValueError(f"PRM format {fmt!r}: the host path reads generative PRMs ({known}); a discriminative PRM "
                       "runs in the world's device path")
    if design not in HOST_DESIGNS:
      raise ValueError(f"reward design {design!r} is not available on the host path; host designs: "
                       f"{', '.join(HOST_DESIGNS)} (the token-level designs run in the world's device path)")
    self.model = text_generation.TextModel.from_dir(prm_dir, rows, chat=False, params=params, mesh=mesh)
    self.fmt, self.design, self.spec, self.max_new_tokens = fmt, design, spec, max_new_tokens

  def __call__(self, texts: Sequence[str], problems: Sequence[str]) -> dict:
    N = len(texts)
    checks = [rewards.format_check_text(t, self.spec) for t in texts]
    valid = np.array([c[0] for c in checks])
    num_steps = np.array([c[1] for c in checks], np.int32)
    parts = [split_response(t) for t in texts]
    todo = [i for i in range(N) if valid[i]]
    prompts = [prm_examples.build_prompt(dict(problem=problems[i], steps=parts[i][0], answer=parts[i][1]), self.fmt,
                                         style="llm") for i in todo]
    outs = self.model.sample_texts(prompts, 1, self.max_new_tokens, 0.0, jax.random.key(0), desc="prm") if todo \
        else []
    read = prm_scorers.score_texts([o[0] for o in outs], [len(parts[i][0]) for i in todo], fmt=self.fmt,
                                   max_steps=max([self.spec.max_steps] + [len(parts[i][0]) for i in todo]))
    S = read["step_correct"].shape[1] if todo else 1
    final, parsed = np.zeros(N, bool), np.zeros(N, bool)
    step_correct, prm_steps = np.zeros((N, S), bool), np.full(N, -1, np.int32)
    if todo:
      final[todo], parsed[todo] = read["final"], read["has_final"]
      if self.fmt != "orm":
        step_correct[todo], prm_steps[todo] = read["step_correct"], read["num_steps"]
    r = np.asarray(rewards.SCALAR_REWARDS[self.design](dict(valid=valid, final=final & parsed, step_ok=step_correct,
                                                            num_steps=num_steps, prm_steps=prm_steps)))
    reason = np.array([rewards.REASONS.index(c[2]) for c in checks])
    hacks = {k: np.asarray(v) for k, v in world_reward.format_hacks(reason).items()}
    # Only format-valid rows go to the PRM, so prm_parsed <= format_valid row by row.
    return dict(rewards=r, format_valid=valid.astype(np.float32), num_steps=num_steps.astype(np.float32),
                prm_parsed=parsed.astype(np.float32),
                prm_final=(final & parsed).astype(np.float32)) | hacks
