"""The arithmetic world as `grain` datasets: index-addressable problems, encoded for SFT or for RL.

Problem i of a stream is `arith.problem_at(seed, i)`, so a dataset is `MapDataset.range(...)` mapped through the
encoder and the iterator state is one index: it checkpoints as JSON and resumes exactly. With several processes each
reads its own contiguous block of rows of every global batch.
"""

from __future__ import annotations

import grain
import numpy as np

from sparkjax.data import arith


class WorldEncoder:
  """Turns problems into fixed-shape token arrays with the world's tokenizer."""

  def __init__(self, world: arith.WorldConfig, tokenizer, fmt: str = "steps"):
    if fmt not in arith.FORMATS:
      raise ValueError(f"unknown solution format {fmt!r}; known: {', '.join(arith.FORMATS)}")
    self.world, self.tok, self.fmt = world, tokenizer, fmt
    self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    longest = arith.Problem(world.max_value, tuple([("+", world.max_operand)] * world.max_ops))
    self.prompt_len = len(self.encode_prompt(longest))
    solution = arith.render_solution(longest.correct_steps(), longest.answer, fmt)
    self.solution_len = len(self.tok.encode(solution)) + 1  # + eos

  def encode_prompt(self, problem: arith.Problem) -> list[int]:
    return self.tok.encode(arith.prompt_text(problem))

  def number_id(self, n: int) -> int:
    return self.tok.convert_tokens_to_ids(str(n))

  def answer_template(self) -> tuple[list[int], int, list[int]]:
    """See `answer_template`."""
    return answer_template(self.tok, self.fmt)

  def rl_example(self, problem: arith.Problem) -> dict:
    ids = self.encode_prompt(problem)
    prompt = np.full(self.prompt_len, self.pad, np.int32)
    prompt[self.prompt_len - len(ids):] = ids
    mask = np.zeros(self.prompt_len, bool)
    mask[self.prompt_len - len(ids):] = True
    return dict(prompt=prompt, prompt_mask=mask, target=np.int32(self.number_id(problem.answer)))

  def sft_example(self, problem: arith.Problem, solution: arith.Solution | None = None) -> dict:
    solution = solution or arith.Solution(tuple(problem.correct_steps()), problem.answer)
    p = self.encode_prompt(problem)
    t = self.tok.encode(solution.text(self.fmt)) + [self.eos]
    L = self.prompt_len + self.solution_len
    tokens = np.full(L, self.pad, np.int32)
    tokens[:len(p) + len(t)] = p + t
    loss_mask = np.zeros(L, np.float32)
    loss_mask[len(p):len(p) + len(t)] = 1.0
    mask = np.zeros(L, bool)
    mask[:len(p) + len(t)] = True
    return dict(tokens=tokens, loss_mask=loss_mask, mask=mask)


def answer_template(tok, fmt: str) -> tuple[list[int], int, list[int]]:
  """(token suffix a correct response of format `fmt` ends with, index of the number in it, tokens that must occur
  once): the world's exact answer check (`data.grading.make_suffix_reward`)."""
  if fmt == "steps":
    ids = tok.convert_tokens_to_ids(["Answer", ":", "0"]) + [tok.eos_token_id]
    return ids, 2, [ids[0]]
  ids = tok.convert_tokens_to_ids(["<answer>", "\\boxed{", "0", "}", "</answer>"]) + [tok.eos_token_id]
  return ids, 2, [ids[0], ids[1]]


def answer_check(tok, fmt: str = "think"):
  """The world's exact answer check of format `fmt`: `check(tokens_NT, lengths_N, finished_N, targets_N) -> [N]`
  in {0, 1} (`data.grading.make_suffix_reward` with `answer_template`): the response ends with the answer line
  holding the target token, its answer markers occur once, and it stopped."""
  from sparkjax.data.grading import make_suffix_reward

  return make_suffix_reward(*answer_template(tok, fmt))


def world_dataset(encoder: WorldEncoder, seed: int, global_batch: int, kind: str, process_index: int = 0,
                  process_count: int = 1, p_error: float = 0.0) -> grain.IterDataset:
  """An endless, batched stream of this process's rows of each global batch; kind is "rl" or "sft".

  For SFT, p_error is the fraction of demonstrations written by the corruption model (an imperfect generator), and
  the world's misconceptions are written into every demonstration (`arith.demonstration`).
  """
  world = encoder.world

  def example(i):
    problem = arith.problem_at(seed, int(i), world)
    if kind == "rl":
      return encoder.rl_example(problem)
    solution = arith.demonstration(problem, np.random.default_rng([seed, int(i), 1]), world, p_error)
    return encoder.sft_example(problem, solution)

  if kind not in ("rl", "sft"):
    raise ValueError(f"unknown dataset kind {kind!r}; expected 'rl' or 'sft'")
  return indexed_batches(example, global_batch, process_index, process_count)


def indexed_batches(example, global_batch: int, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """An endless stream of this process's rows of each global batch, row i being `example(i)` (a dict of arrays):
  index-addressable, so its iterator state is one index (checkpointable, resumed exactly)."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} does not divide over {process_count} processes")
  local = global_batch // process_count

  def global_index(j):
    # Process p holds rows [p * local, (p + 1) * local) of every global batch, so the assembled global batch is
    # the same whatever the number of processes.
    return (j // local) * global_batch + process_index * local + j % local

  ds = grain.MapDataset.range(0, 2**62).map(lambda j: example(global_index(int(j))))
  return ds.batch(local, drop_remainder=True).to_iter_dataset()


def eval_set(encoder: WorldEncoder, seed: int, n: int) -> dict:
  """A fixed held-out RL batch of n problems (stacked numpy arrays)."""
  return rl_batch(encoder, [arith.problem_at(seed, i, encoder.world) for i in range(n)])


def rl_batch(encoder: WorldEncoder, problems) -> dict:
  """The problems as one RL batch (stacked numpy arrays of `WorldEncoder.rl_example`)."""
  rows = [encoder.rl_example(p) for p in problems]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def distinct_problems(seed: int, n: int, world: arith.WorldConfig, split: str = "train",
                      patience: int = 2000) -> list[arith.Problem]:
  """The first n distinct problems of stream `seed` in `split`, in stream order; stops early when `patience`
  draws in a row bring nothing new (the split is exhausted)."""
  seen, out, since, i = set(), [], 0, 0
  while len(out) < n and since < patience:
    p = arith.problem_at(seed, i, world, split)
    i += 1
    if p.text() in seen:
      since += 1
      continue
    seen.add(p.text())
    out.append(p)
    since = 0
  return out
