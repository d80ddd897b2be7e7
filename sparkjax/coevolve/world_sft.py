"""The world's "instruct" SFT for SPARK-CoEvolve: the policy's solution demonstrations mixed with judge and
reflection demonstrations, so the SFT'd model can read a judge prompt and answer in the judge format before RL.

The paper starts from an instruct model that already follows judge prompts, and its reward model "is not trained
by SFT" on correctness labels. The world's analogue: the judge demonstrations' labels are the *demonstrator's
beliefs*, not the truth. The demonstrator (`arith.demonstration`, the world's misconceptions) computes the answer
as it believes it (no slips) and says Yes when a shown answer equals its belief, picks the response that matches
its belief (a coin when neither does), and answers a reflection prompt with one of its own solutions. So the SFT'd
judge inherits the policy's own misconceptions: it knows the format, and what it believes, nothing more. Responses
shown in these demonstrations are the demonstrator's solutions with slips (`p_error`), in the policy's format.
With `judge_working` each verdict follows the demonstrator's own working (its believed steps in `<think>`), so the
judge solves the problem before comparing: the world's 2-layer model cannot check a 3-step solution in the one
forward pass that an immediate verdict allows (measured: `coevolve.judge_sft_probe`).

Rows: `share` of the rows are judge / reflection demonstrations (kinds uniform), the rest solution demonstrations;
each row is prompt + target, right-padded to W + T (the judge prompt width plus the longest response).
"""

from __future__ import annotations

import grain
import numpy as np

from sparkjax.coevolve import world_judge as wj
from sparkjax.data import arith, world_data


def judge_target(tok, verdict: str, working: arith.Solution | None = None) -> list[int]:
  """The judge's output in the world: `<answer> \\boxed{ V } </answer>`, after `working` (a solution's steps in
  `<think>`, the judge solving the problem itself) when given; stop token added by the caller."""
  text = (arith.render_solution(working.steps, verdict, "think") if working is not None
          else f"<answer> \\boxed{{ {verdict} }} </answer>")
  return tok.encode(text, add_special_tokens=False)


def row(prompt_ids: list[int], target_ids: list[int], width: int, pad: int) -> dict:
  """An SFT row: tokens, loss_mask (1 on the target), mask; right-padded to `width`."""
  n = len(prompt_ids) + len(target_ids)
  if n > width:
    raise ValueError(f"SFT row of {n} tokens exceeds the row width {width}")
  tokens = np.full(width, pad, np.int32)
  tokens[:n] = list(prompt_ids) + list(target_ids)
  loss = np.zeros(width, np.float32)
  loss[len(prompt_ids):n] = 1.0
  return dict(tokens=tokens, loss_mask=loss, mask=np.arange(width) < n)


def demonstration(encoder: world_data.WorldEncoder, vocab: wj.JudgeVocab, problem: arith.Problem,
                  rng: np.random.Generator, p_error: float, show_reasoning: bool, full_share: float,
                  judge_working: bool = False) -> tuple[str, list[int], list[int]]:
  """One judge / reflection demonstration -> (kind, prompt ids, target ids without the stop token). With
  `judge_working` a verdict follows the demonstrator's own working of the problem (its believed steps)."""
  world, tok = encoder.world, encoder.tok
  belief = arith.demonstration(problem, np.random.default_rng(0), world, 0.0)  # no slips: deterministic
  believed = belief.answer
  working = belief if judge_working else None

  def solution():
    s = arith.demonstration(problem, rng, world, p_error)
    return s, tok.encode(s.text("think"), add_special_tokens=False)

  q = wj.host_question(vocab, encoder.encode_prompt(problem))
  kind = wj.KINDS[int(rng.integers(3))]
  if kind == "pointwise":
    s, ids = solution()
    slots = dict(Q=q, R=wj.host_response(vocab, ids, show_reasoning))
    return kind, wj.render_host(vocab, wj.POINTWISE, int(rng.integers(len(vocab.phrasings[0]))), slots), \
        judge_target(tok, "Yes" if s.answer == believed else "No", working)
  if kind == "pairwise":
    (s1, a), (s2, b) = solution(), solution()
    for _ in range(8):  # two different answers when the slips allow
      if s1.answer != s2.answer:
        break
      s2, b = solution()
    m1, m2 = s1.answer == believed, s2.answer == believed
    first = m1 if m1 != m2 else bool(rng.random() < 0.5)
    slots = dict(Q=q, RA=wj.host_response(vocab, a, show_reasoning), RB=wj.host_response(vocab, b, show_reasoning))
    return kind, wj.render_host(vocab, wj.PAIRWISE, int(rng.integers(len(vocab.phrasings[1]))), slots), \
        judge_target(tok, "A" if first else "B", working)
  _, shown = solution()
  full = bool(rng.random() < full_share)
  slots = dict(Q=q, R=wj.host_response(vocab, shown, full))
  _, target = solution()
  return kind, wj.render_host(vocab, wj.REFLECTION, int(rng.integers(len(vocab.phrasings[2]))), slots), target


def instruct_dataset(encoder: world_data.WorldEncoder, vocab: wj.JudgeVocab, seed: int, global_batch: int,
                     share: float, p_error: float, show_reasoning: bool, full_share: float = 0.5,
                     process_index: int = 0, process_count: int = 1,
                     judge_working: bool = False) -> grain.IterDataset:
  """An endless, batched SFT stream: row i is a judge / reflection demonstration with probability `share` (drawn
  from the row's own generator, so the stream is index-addressable and resumes exactly), else a solution
  demonstration; every row is W + T tokens wide. Process p reads its block of each global batch."""
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"judge demonstration share={share!r}: expected a fraction in [0, 1]")
  width = vocab.width + encoder.solution_len
  world, tok, eos, pad = encoder.world, encoder.tok, encoder.eos, encoder.pad

  def example(i):
    problem = arith.problem_at(seed, i, world)
    rng = np.random.default_rng([seed, i, 2])
    if rng.random() < share:
      _, prompt, target = demonstration(encoder, vocab, problem, rng, p_error, show_reasoning, full_share,
                                        judge_working)
    else:
      prompt = encoder.encode_prompt(problem)
      target = tok.encode(arith.demonstration(problem, rng, world, p_error).text("think"), add_special_tokens=False)
    return row(prompt, target + [eos], width, pad)

  return world_data.indexed_batches(example, global_batch, process_index, process_count)
