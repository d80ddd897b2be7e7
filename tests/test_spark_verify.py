"""Stage I plumbing: batched sampling of texts, consensus records, meta-critique wiring, balancing, dataset files."""

import json

import datasets
import jax
import numpy as np
import pytest

from sparkjax.data import arith
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.spark import verdicts as vd
from sparkjax.spark import verify as verify_lib
from sparkjax import text_generation
from sparkjax.spark import world_verifier as wv

WORLD = arith.WorldConfig(min_ops=2, max_ops=4, max_operand=5, max_value=30, ops="+-")


def _item(i, problem, solution):
  f = wv.solution_fields(problem, solution)
  gs, gf = wv.gold(problem, solution)
  return verify_lib.Item(f"x{i}", f["problem"], tuple(f["steps"]), str(f["answer"]), str(problem.answer), tuple(gs),
                         gf)


def _items(n=12, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    p = arith.problem_at(9, i, WORLD)
    out.append(_item(i, p, arith.sample_solution(p, rng, WORLD, 0.5)))
  return out


class ScriptedModel:
  """A stand-in for `TextModel` that answers from a function of the prompt and records every call."""

  def __init__(self, answer):
    self.answer, self.calls = answer, []

  def sample_texts(self, prompts, n, max_new_tokens, temperature, key, top_p=1.0, desc=None):
    self.calls.append(dict(prompts=list(prompts), n=n, temperature=temperature))
    return [[self.answer(p, g) for g in range(n)] for p in prompts]


def test_sample_texts_batches_like_one_prompt_at_a_time():
  tok = arith.build_tokenizer(WORLD.max_value)
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=2,
                         num_kv_heads=1, head_dim=16, num_layers=2, max_position_embeddings=256)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.3)
  decode = lambda ids: " ".join(map(str, ids))
  prompts = [arith.prompt_text(arith.problem_at(1, i, WORLD)) for i in range(5)]
  big = text_generation.TextModel(params, cfg, tok.encode, decode, (tok.eos_token_id,), tok.pad_token_id, rows=64)
  small = text_generation.TextModel(params, cfg, tok.encode, decode, (tok.eos_token_id,), tok.pad_token_id, rows=2)
  grouped = text_generation.TextModel(params, cfg, tok.encode, decode, (tok.eos_token_id,), tok.pad_token_id,
                                      rows=8, prefill_groups=2)
  prompts[1] = prompts[1] + " " + prompts[2]  # lengths differ, so the 4-prompt call splits into two groups
  a = big.sample_texts(prompts, 2, 6, 0.0, jax.random.key(1))
  b = small.sample_texts(prompts, 2, 6, 0.0, jax.random.key(1))  # one prompt (2 rows) per call, last one padded
  c = grouped.sample_texts(prompts, 2, 6, 0.0, jax.random.key(1))  # 4 prompts per call, in length groups
  assert a == b == c and len(a) == 5 and all(len(r) == 2 for r in a)
  assert all(r[0] == r[1] for r in a)  # greedy: the two samples sharing a prefill agree


def test_consistency_records_and_dataset_files(tmp_path):
  items = _items()
  rng = np.random.default_rng(1)
  samples = []
  for it in items:
    p = arith.problem_at(9, int(it.id[1:]), WORLD)
    steps, answer = arith.parse_solution("\n".join(it.steps) + f"\nAnswer: {it.answer}")
    sol = arith.Solution(tuple(steps), answer)
    row = []
    for _ in range(5):
      text, _, _ = wv.teach_verification(p, sol, rng, 0.2)
      row.append((text, vd.parse_verification(text, len(it.steps))))
    row.append(("garbage", vd.parse_verification("garbage", len(it.steps))))  # counted, never a vote
    samples.append(row)
  cfg = vd.ConsensusConfig()
  out = verify_lib.consistency_records(items, samples, cfg)
  assert len(out["step_consistency"]) == len(items) and all(c.unparseable == 1 for c in out["_step"])
  for rec, c, row in zip(out["step_consistency"], out["_step"], samples):
    assert rec["verdicts"] == list(c.steps) and rec["final"] == c.final and rec["votes"] == 5
    assert rec["rationale"] == row[c.chosen][0]  # the kept rationale is one of the N verifications
    if c.exact:
      assert list(vd.propagate(vd.parse_verification(rec["rationale"]).steps)) == rec["verdicts"]
  for rec, c in zip(out["outcome_consistency"], out["_outcome"]):
    assert vd.parse_verification(rec["rationale"]).final == rec["final"] == c.final
  # n=1 uses only the first sample.
  one = verify_lib.consistency_records(items, samples, cfg, n=1)
  assert all(c.votes == 1 for c in one["_step"])
  paths = verify_lib.write_variants(tmp_path, {k: v for k, v in out.items() if not k.startswith("_")})
  ds = datasets.load_dataset("json", data_files=str(paths["step_consistency"]), split="train")
  assert ds.num_rows == len(items) and set(ds.column_names) >= {"problem", "steps", "verdicts", "final", "rationale",
                                                                 "gold_verdicts", "gold_final"}


def test_verify_reference_and_meta_critique_wiring():
  items = _items(4)
  model = ScriptedModel(lambda p, g: "Step 1: fine. The step is correct.\nIs the answer correct (Yes/No)? Yes")
  vc = verify_lib.VerifyConfig(n=3)
  out = verify_lib.verify(model, items, vc, jax.random.key(0))
  assert [len(r) for r in out] == [3] * 4 and model.calls[-1]["n"] == 3
  assert all("Expected" not in p for p in model.calls[-1]["prompts"])  # reference-free
  verify_lib.verify(model, items, vc, jax.random.key(0), reference=True, n=1)
  assert all(f"Expected answer: {it.reference}" in p for it, p in zip(items, model.calls[-1]["prompts"]))
  # One solution with a single step: the scripted verification matches its step count.
  merged = verify_lib.meta_critique(model, items, ["V"] * 4, vc, jax.random.key(0))
  crit, merge = model.calls[-2], model.calls[-1]
  assert crit["temperature"] == 0 and merge["temperature"] == 0  # spec: critique and merge at T = 0
  assert all("Verification:\nV" in p and "Critique:" in p for p in merge["prompts"])
  assert len(merged) == 4 and all(m[1].final is True for m in merged)


def test_balance_uses_gold_per_problem():
  items = _items(40, seed=3)
  owner = [i // 10 for i in range(40)]
  kept = verify_lib.balance(items, owner, 2, np.random.default_rng(0))
  for p in range(4):
    group = [it for it, o in zip(items, owner) if o == p]
    mine = [it for it in kept if it in group]
    for side in (True, False):
      assert sum(it.gold_final == side for it in mine) == min(2, sum(it.gold_final == side for it in group))
  with pytest.raises(ValueError, match="ground-truth"):
    verify_lib.balance([verify_lib.Item("a", "p", ("s",), "1")], [0], 1, np.random.default_rng(0))


def test_record_needs_complete_labels():
  it = _items(1)[0]
  assert verify_lib.record(it, "v", None, True, "r") is None
  r = verify_lib.record(it, "v", [True] * len(it.steps), True, "r")
  assert json.loads(json.dumps(r))["gold_final"] == it.gold_final
