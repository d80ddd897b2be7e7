"""SPARK-PRM Stage I: generate solutions, verify them step by step without reference answers, scale verification in
parallel (self-consistency over N) and sequentially (meta-critique), and write the training data of Stage II.

Throughput: every model call goes through `text_generation.TextModel.sample_texts`, which batches many prompts
into one jitted sampler call (prompts left-padded to one bucketed length, so a handful of shapes compile) and draws
the N verifications of a solution as N samples sharing that prompt's single prefill.

Data variants (one JSON-lines file each, readable by `datasets.load_dataset("json", ...)`):
  step_consistency      per-step majority over N verifications (errors propagated); rationale = a verification
                        that agrees with it (`verdicts.step_consensus`)
  outcome_consistency   majority of the N final Yes/No; steps and rationale from a verification with that verdict
  meta_critique_base    one verification -> critique (T = 0) -> merged verification (T = 0)
  meta_critique_outcome the outcome-consensus verification -> critique -> merge
  reference_guided      one verification whose prompt holds the expected answer (the paper's "ceiling" baseline)
A record: id, problem, steps, answer, verdicts (propagated, True = correct), final, rationale, variant, votes,
unparseable; in the arithmetic world also gold_verdicts / gold_final (exact labels, for scoring only).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from sparkjax.data.jsonl import write_jsonl_atomic
from sparkjax.spark import verdicts as vd
from sparkjax.text_generation import TextModel

VARIANTS = ("step_consistency", "outcome_consistency", "meta_critique_base", "meta_critique_outcome",
            "reference_guided")


@dataclasses.dataclass(frozen=True)
class Item:
  """One solution to verify: the texts the prompts take, and (world only) its exact labels."""

  id: str
  problem: str
  steps: tuple[str, ...]
  answer: str
  reference: str | None = None  # the expected answer; only the reference-guided baseline shows it to the verifier
  gold_verdicts: tuple[bool, ...] | None = None
  gold_final: bool | None = None


# ---- stage I steps -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
  """Decoding of the verifier (spec: T = 0.8, top_p 0.95 for verification; T = 0 for critique and merge)."""

  n: int = 16  # verifications per solution (parallel scaling)
  temperature: float = 1.0
  top_p: float = 1.0
  max_new_tokens: int = 96
  style: str = "world"  # prompt wording: "world" (the arithmetic world's vocabulary) or "llm"
  consensus: vd.ConsensusConfig = vd.ConsensusConfig()


def verify(model: TextModel, items: Sequence[Item], vc: VerifyConfig, key, reference: bool = False,
           n: int | None = None) -> list[list[tuple[str, vd.Verification]]]:
  """n verifications of each item (default vc.n): [item][sample] (text, parsed). With `reference`, the prompt
  holds the item's expected answer (the reference-guided baseline)."""
  prompts = [vd.verifier_prompt(it.problem, list(it.steps), it.reference if reference else None, answer=it.answer,
                                style=vc.style) for it in items]
  texts = model.sample_texts(prompts, n or vc.n, vc.max_new_tokens, vc.temperature, key, vc.top_p,
                             desc="verify" + (" (reference)" if reference else ""))
  return [[(t, vd.parse_verification(t, len(it.steps))) for t in row] for it, row in zip(items, texts)]


def meta_critique(model: TextModel, items: Sequence[Item], verifications: Sequence[str], vc: VerifyConfig,
                  key) -> list[tuple[str, vd.Verification, str]]:
  """Sequential scaling: verification -> critique (greedy) -> merged verification (greedy, same format).

  Returns per item (merged text, parsed merged, critique text)."""
  k1, k2 = jax.random.split(key)
  crit_prompts = [vd.critique_prompt(it.problem, list(it.steps), v, answer=it.answer, style=vc.style)
                  for it, v in zip(items, verifications)]
  critiques = [r[0] for r in model.sample_texts(crit_prompts, 1, vc.max_new_tokens, 0.0, k1, desc="critique")]
  merge_prompts = [vd.merge_prompt(it.problem, list(it.steps), v, c, answer=it.answer, style=vc.style)
                   for it, v, c in zip(items, verifications, critiques)]
  merged = [r[0] for r in model.sample_texts(merge_prompts, 1, vc.max_new_tokens, 0.0, k2, desc="merge")]
  return [(m, vd.parse_verification(m, len(it.steps)), c) for it, m, c in zip(items, merged, critiques)]


def labels(v: vd.Verification, num_steps: int) -> tuple[list[bool] | None, bool | None]:
  """Training labels from one parsed verification: propagated step verdicts (None unless exactly num_steps)."""
  steps = vd.propagate(v.steps) if v.steps is not None and len(v.steps) == num_steps else None
  return steps, v.final


def record(it: Item, variant: str, steps: Sequence[bool] | None, final: bool | None, rationale: str | None,
           votes: int = 1, unparseable: int = 0) -> dict | None:
  """A dataset record, or None when the labels are incomplete (the caller counts those)."""
  if steps is None or final is None or rationale is None:
    return None
  r = dict(id=it.id, problem=it.problem, steps=list(it.steps), answer=it.answer, verdicts=[bool(s) for s in steps],
           final=bool(final), rationale=rationale, variant=variant, votes=votes, unparseable=unparseable)
  if it.gold_verdicts is not None:
    r.update(gold_verdicts=list(it.gold_verdicts), gold_final=bool(it.gold_final))
  return r


def consistency_records(items: Sequence[Item], samples: Sequence[Sequence[tuple[str, vd.Verification]]],
                        cfg: vd.ConsensusConfig, n: int | None = None) -> dict[str, list]:
  """Step- and outcome-level consensus over the first n samples of each item -> {variant: records}, plus the
  per-item consensus objects under "_step" / "_outcome" (None entries where nobody voted)."""
  out = {"step_consistency": [], "outcome_consistency": [], "_step": [], "_outcome": []}
  for it, row in zip(items, samples):
    row = list(row[:n] if n else row)
    vs = [v for _, v in row]
    sc = vd.step_consensus(vs, len(it.steps), cfg)
    oc = vd.outcome_consensus(vs, cfg)
    out["_step"].append(sc)
    out["_outcome"].append(oc)
    if sc.chosen is not None:
      out["step_consistency"].append(record(it, "step_consistency", sc.steps, sc.final, row[sc.chosen][0],
                                            sc.votes, sc.unparseable))
    if oc.chosen is not None:
      steps, _ = labels(vs[oc.chosen], len(it.steps))
      out["outcome_consistency"].append(record(it, "outcome_consistency", steps, oc.final, row[oc.chosen][0],
                                               oc.votes, oc.unparseable))
  for k in ("step_consistency", "outcome_consistency"):
    out[k] = [r for r in out[k] if r is not None]
  return out


def balance(items: Sequence[Item], problem_of: Sequence[int], per_side: int, rng: np.random.Generator) -> list[Item]:
  """The optional ground-truth balancing of the released scripts: per problem at most `per_side` correct and
  `per_side` incorrect solutions (by gold_final), chosen at random. Verification itself never sees the labels."""
  by_problem: dict[int, list[Item]] = {}
  for it, p in zip(items, problem_of):
    if it.gold_final is None:
      raise ValueError(f"balance needs ground-truth labels; item {it.id} has none")
    by_problem.setdefault(p, []).append(it)
  out = []
  for p in sorted(by_problem):
    for side in (True, False):
      group = [it for it in by_problem[p] if it.gold_final == side]
      keep = rng.permutation(len(group))[:per_side]
      out += [group[i] for i in sorted(keep)]
  return out


def _no_cache(name: str, fn):
  return fn()


def stage1_variants(verifier: TextModel, items: Sequence[Item], vc: VerifyConfig, keys, n: int | None = None,
                    phase: Callable[[str, Callable[[], Any]], Any] = _no_cache) -> tuple[dict[str, list], dict]:
  """Stage I after generation: N verifications per item, consensus over the first n (default vc.n), meta-critique
  of a single and of the outcome-consensus verification, and the reference-guided baseline.

  Args:
    keys: four PRNG keys (verification, reference-guided, meta-critique base, meta-critique outcome).
    phase: phase(name, fn) -> fn()'s result, possibly kept from an earlier run (e.g. `spark_prm.phase_cache`);
      the phases are "verifications" (with their seconds), "meta_critique_base", "meta_critique_outcome",
      "reference_guided".

  Returns:
    (records by variant (`VARIANTS`), parts) with parts = samples ([item][sample] (text, parsed)), verify_seconds,
    consensus (`consistency_records` at n, with "_step" / "_outcome"), merged ({meta-critique variant: per item
    (merged text, parsed, critique)}), reference ([item][1] (text, parsed)).
  """
  k_ver, k_ref, k_mc1, k_mc2 = keys

  def verify_timed():  # the phase keeps its measured time: a resumed Stage I reports it, not the time of a read
    t0 = time.time()
    return verify(verifier, items, vc, k_ver), time.time() - t0

  samples, verify_seconds = phase("verifications", verify_timed)
  cons = consistency_records(items, samples, vc.consensus, n)
  variants = {k: v for k, v in cons.items() if not k.startswith("_")}
  base_texts = [row[0][0] for row in samples]
  outcome_texts = [samples[i][o.chosen][0] if o.chosen is not None else samples[i][0][0]
                   for i, o in enumerate(cons["_outcome"])]
  merged = {}
  for name, texts, k in (("meta_critique_base", base_texts, k_mc1), ("meta_critique_outcome", outcome_texts, k_mc2)):
    merged[name] = phase(name, lambda: meta_critique(verifier, items, texts, vc, k))
    variants[name] = [r for r in (record(it, name, *labels(v, len(it.steps)), m) for it, (m, v, _) in
                                  zip(items, merged[name])) if r is not None]
  ref = phase("reference_guided", lambda: verify(verifier, items, vc, k_ref, reference=True, n=1))
  variants["reference_guided"] = [r for r in (record(it, "reference_guided", *labels(row[0][1], len(it.steps)),
                                                     row[0][0]) for it, row in zip(items, ref)) if r is not None]
  return variants, dict(samples=samples, verify_seconds=verify_seconds, consensus=cons, merged=merged, reference=ref)


def write_variants(out_dir: Path, variants: dict[str, list[dict]]) -> dict[str, Path]:
  """One `<variant>.jsonl` per data variant (atomic writes)."""
  out_dir.mkdir(parents=True, exist_ok=True)
  return {name: write_jsonl_atomic(out_dir / f"{name}.jsonl", recs) for name, recs in variants.items()}
