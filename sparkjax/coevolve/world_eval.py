"""Exact measurements of the judge in the world, and the test-time self-judge-and-reflect loop as an evaluation.

`make_judge_eval` samples the policy's responses to fixed held-out problems (S per problem, T = 1, a fixed key),
grades them exactly, and asks the same model, greedily, to judge them: pointwise accuracy (verdict == truth, an
unreadable verdict counts as wrong), balanced accuracy (P(Yes | right) + P(No | wrong)) / 2, which is 0.5 for a
judge that gives one verdict to everything, the false-positive rate P(Yes | wrong) and the false-negative rate
P(No | right),
pairwise accuracy on each problem with both a right and a wrong response (the first of each, order alternating),
and reflection success: P(the reflection's answer is right | the reflected response was wrong).

`make_self_judge` is the test-time loop (shared/papers/spark-coevolve.md): answer greedily -> judge the answer with
the pointwise prompt -> if the verdict is not Yes, reflect on it and take the new answer -> at most `rounds` times.
It returns accuracy with and without the loop, the first-round judge's accuracy on the greedy answers (and its
false-positive and false-negative rates), and how many answers the loop fixed and broke.

In the loop "not Yes" (No or unreadable) is the negative verdict, so its balanced accuracy is 1 - (FPR + FNR) / 2.

Shapes: B held-out problems, S samples each, P prompt slots, W judge prompt width, T completion tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sparkjax import sampling
from sparkjax.coevolve import world_judge as wj


def _greedy(params, cfg, sp: sampling.SamplingParams, prompt, mask):
  g = dataclasses.replace(sp, temperature=0.0, num_samples=1)
  return sampling.sample(params, prompt, mask, jax.random.key(0), cfg=cfg, sp=g)


def _phrasings(vocab: wj.JudgeVocab, kind: int, n: int):
  return jnp.arange(n) % len(vocab.phrasings[kind])


def says(check, out, label: int):
  """[rows] bool: the judge's response is well formed and its verdict is `label` (`check`: the world's answer
  check, `world_data.answer_check`)."""
  lab = jnp.full(out.lengths.shape, label, jnp.int32)
  return check(out.tokens, out.lengths, out.finished, lab) > 0.5


def make_judge_eval(cfg, vocab: wj.JudgeVocab, sp: sampling.SamplingParams, check, show_reasoning: bool,
                    samples: int, seed: int = 0):
  """eval(params, prompt_BP, prompt_mask_BP, gold_B, responder=None) -> dict of the judge's exact quality (module
  docstring); the responses judged are `responder`'s (another model's parameters) when given, else the judge's own.
  sp: the policy's sampling settings (max new tokens, stop and pad tokens); check: the world's answer check
  `(tokens, lengths, finished, targets) -> [rows]` (`world_data.answer_check`), which also reads the verdicts."""
  S = samples

  @jax.jit
  def evaluate(params, prompt, mask, gold, responder=None):
    B = prompt.shape[0]
    out = sampling.sample(params if responder is None else responder, prompt, mask, jax.random.key(seed), cfg=cfg,
                          sp=dataclasses.replace(sp, temperature=1.0, num_samples=S))
    right = check(out.tokens, out.lengths, out.finished, jnp.repeat(gold, S)) > 0.5  # [B * S]
    q = wj.question(vocab, prompt, mask)
    qN = tuple(jnp.repeat(x, S, axis=0) for x in q)
    shown = wj.response(vocab, out.tokens, out.lengths, jnp.asarray(show_reasoning))
    # Pointwise on every response.
    pt, pm = wj.render(vocab, wj.POINTWISE, _phrasings(vocab, wj.POINTWISE, B * S), dict(Q=qN, R=shown))
    v = _greedy(params, cfg, sp, pt, pm)
    yes, no = says(check, v, vocab.yes), says(check, v, vocab.no)
    wrong = ~right
    f = lambda x: x.astype(jnp.float32)
    tpr, tnr = wj.mean_where(yes, right), wj.mean_where(no, wrong)  # an unreadable verdict is neither
    m = dict(pointwise_accuracy=jnp.where(right, yes, no).astype(jnp.float32).mean(),
             balanced_accuracy=(tpr + tnr) / 2, false_positive_rate=wj.mean_where(yes, wrong),
             false_negative_rate=wj.mean_where(no, right), judge_unreadable=f(~yes & ~no).mean(),
             responses_right=f(right).mean())
    # Pairwise on each problem with a right and a wrong response.
    ok = right.reshape(B, S)
    mixed = ok.any(1) & (~ok).any(1)
    r_i, w_i = jnp.argmax(ok, 1), jnp.argmax(~ok, 1)
    first_right = jnp.arange(B) % 2 == 0
    row = lambda i: jnp.arange(B) * S + i
    view = lambda i: wj.response(vocab, out.tokens[row(i)], out.lengths[row(i)], jnp.asarray(show_reasoning))
    a_i, b_i = jnp.where(first_right, r_i, w_i), jnp.where(first_right, w_i, r_i)
    qt, qm = wj.render(vocab, wj.PAIRWISE, _phrasings(vocab, wj.PAIRWISE, B), dict(Q=q, RA=view(a_i), RB=view(b_i)))
    pv = _greedy(params, cfg, sp, qt, qm)
    pick_right = jnp.where(first_right, says(check, pv, vocab.a), says(check, pv, vocab.b))
    m |= dict(pairwise_accuracy=wj.mean_where(pick_right, mixed), pairwise_problems=f(mixed).sum())
    # Reflection on every response, with its full reasoning; success = the new answer is right.
    rt, rm = wj.render(vocab, wj.REFLECTION, _phrasings(vocab, wj.REFLECTION, B * S),
                       dict(Q=qN, R=wj.response(vocab, out.tokens, out.lengths, jnp.asarray(True))))
    rv = _greedy(params, cfg, sp, rt, rm)
    fixed = check(rv.tokens, rv.lengths, rv.finished, jnp.repeat(gold, S)) > 0.5
    m |= dict(reflection_success=wj.mean_where(fixed, wrong), reflection_keeps_right=wj.mean_where(fixed, right))
    return m

  return evaluate


def make_self_judge(cfg, vocab: wj.JudgeVocab, sp: sampling.SamplingParams, check, show_reasoning: bool,
                    rounds: int = 2):
  """loop(params, prompt_BP, prompt_mask_BP, gold_B) -> dict: the test-time loop (module docstring), greedy
  throughout, reflection prompts showing the full previous response."""
  if rounds < 0:
    raise ValueError(f"self-judge rounds={rounds}: expected >= 0")

  @jax.jit
  def loop(params, prompt, mask, gold):
    B = prompt.shape[0]
    q = wj.question(vocab, prompt, mask)
    ans = _greedy(params, cfg, sp, prompt, mask)
    right0 = check(ans.tokens, ans.lengths, ans.finished, gold) > 0.5
    tokens, lengths, finished = ans.tokens, ans.lengths, ans.finished
    done = jnp.zeros((B,), bool)
    first_yes = None
    reflections = jnp.zeros((), jnp.int32)
    for r in range(rounds):
      shown = wj.response(vocab, tokens, lengths, jnp.asarray(show_reasoning))
      jt, jm = wj.render(vocab, wj.POINTWISE, jnp.zeros((B,), jnp.int32), dict(Q=q, R=shown))
      yes = says(check, _greedy(params, cfg, sp, jt, jm), vocab.yes)
      first_yes = yes if first_yes is None else first_yes
      done = done | yes
      rt, rm = wj.render(vocab, wj.REFLECTION, jnp.zeros((B,), jnp.int32),
                         dict(Q=q, R=wj.response(vocab, tokens, lengths, jnp.asarray(True))))
      new = _greedy(params, cfg, sp, rt, rm)
      reflections = reflections + (~done).sum()
      tokens = jnp.where(done[:, None], tokens, new.tokens)
      lengths = jnp.where(done, lengths, new.lengths)
      finished = jnp.where(done, finished, new.finished)
    right = check(tokens, lengths, finished, gold) > 0.5
    f = lambda x: x.astype(jnp.float32)
    out = dict(accuracy_without=f(right0).mean(), accuracy_with=f(right).mean(),
               fixed=f(~right0 & right).sum(), broken=f(right0 & ~right).sum(), reflections=f(reflections))
    if first_yes is not None:
      out |= dict(judge_accuracy=f(first_yes == right0).mean(),
                  judge_false_positive_rate=wj.mean_where(first_yes, ~right0),
                  judge_false_negative_rate=wj.mean_where(~first_yes, right0))
    return out

  return loop
