"""The GRPO iteration: sample G per prompt -> reward -> advantages -> mu policy updates.

With a reward computable on device the whole iteration is ONE jitted function (`make_iteration`). A reward that
needs Python (math-verify) uses the same two halves with a host step between them: `make_rollout` (sampling) and
`make_update` (advantages in, updated state out).

The reward is a scorer `reward_fn(scorer_params, prompt_BP, prompt_mask_BP, out, targets_N) -> {"rewards": [N],
...}`: its parameters (a frozen PRM, or nothing for a rule) are an argument of the jitted iteration with their own
shardings, so a reward model is data, not constants baked into the program. Extra per-row entries of the dict (e.g.
a PRM's verdicts) are reported as metrics and returned with the rollout (`Rollout`), which the iteration hands back
for later stages.

Shapes: B prompts, G samples each, N = B * G rows ordered b * G + g, P prompt slots (left-padded), T = max new tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sparkjax import sampling
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.rl import grpo
from sparkjax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
  """Static settings of the RL step (hashable; each distinct value compiles once)."""

  sampling: sampling.SamplingParams
  advantage: str = "grpo"
  policy_loss: str = "clip"
  eps_low: float = 0.2
  eps_high: float = 0.2
  dual_clip: float = 0.0
  aggregation: str = "token_mean"
  norm_length: int = 0  # for seq_sum_norm; 0 = max_new_tokens
  kl: str = "k3"
  kl_coef: float = 0.0
  mu: int = 1  # policy updates per batch; the sampler's log-probs are the old log-probs
  # Gradient accumulation: each policy update runs its N rows as this many sequential micro-batches (rows i, i + M,
  # i + 2M, ... form micro-batch i) and applies one optimizer step to the summed gradient; same result as M = 1 up
  # to float rounding, with activations of N / M rows.
  num_microbatches: int = 1
  # Completion positions per block when computing log-probs: the [rows, block, V] float32 logits are made (and, for
  # the gradient, remade) one block at a time instead of [rows, T, V] at once. 0 = all T positions in one block.
  logprob_chunk: int = 0

  @classmethod
  def from_config(cls, c, sp: sampling.SamplingParams) -> "GRPOSettings":
    """From a config's `rl` block (the fields of `config_args.grpo_loss_fields`, optionally num_microbatches and
    logprob_chunk) and the rollout's sampling settings."""
    return cls(sampling=sp, advantage=c.advantage, policy_loss=c.policy_loss, eps_low=c.eps_low,
               eps_high=c.eps_high, dual_clip=c.dual_clip, aggregation=c.aggregation, kl=c.kl, kl_coef=c.kl_coef,
               mu=c.mu, num_microbatches=c.get("num_microbatches", 1), logprob_chunk=c.get("logprob_chunk", 0))

  @property
  def group_size(self) -> int:
    return self.sampling.num_samples

  def __post_init__(self):
    grpo.lookup(grpo.ADVANTAGES, self.advantage, "advantage estimator")
    grpo.lookup(grpo.POLICY_LOSSES, self.policy_loss, "policy loss")
    grpo.lookup(grpo.AGGREGATIONS, self.aggregation, "loss aggregation")
    grpo.lookup(grpo.KL_ESTIMATORS, self.kl, "KL estimator")
    if self.mu < 1:
      raise ValueError(f"mu={self.mu}: expected >= 1 policy updates per batch")
    if self.num_microbatches < 1:
      raise ValueError(f"num_microbatches={self.num_microbatches}: expected >= 1")
    if self.logprob_chunk < 0:
      raise ValueError(f"logprob_chunk={self.logprob_chunk}: expected >= 0 (0 = no chunking)")


def completion_mask(lengths_N, T: int):
  """[N, T] float: 1 on generated tokens up to and including the stop token."""
  return (jnp.arange(T)[None, :] < lengths_N[:, None]).astype(jnp.float32)


def logprob_chunk_fits(chunk: int, T: int) -> bool:
  """Whether the update can take the log-probs of T completion positions `chunk` at a time: 0 or >= T (one block),
  else a divisor of T. The one rule `completion_logprobs`, the config checks and the memory plan apply."""
  return not chunk or chunk >= T or T % chunk == 0


def completion_logprobs(params, cfg: ModelConfig, prompt_BP, prompt_mask_BP, tokens_NT, lengths_N,
                        temperature: float, chunk: int = 0):
  """log softmax(logits / temperature) of each completion token given prompt and earlier tokens: (logp, entropy).

  The prompt of row n is prompt_BP[n // G]; returns two [N, T] float32 arrays. chunk > 0 computes the logits
  `chunk` positions at a time (T must be a multiple), rematerialised in the backward pass, so no [N, T, V] array is
  ever made; the values are the same.
  """
  N, T = tokens_NT.shape
  G = N // prompt_BP.shape[0]
  P = prompt_BP.shape[1]
  prompt = jnp.repeat(prompt_BP, G, axis=0)
  pmask = jnp.repeat(prompt_mask_BP, G, axis=0)
  seq = jnp.concatenate([prompt, tokens_NT[:, :-1]], axis=1)
  mask = jnp.concatenate([pmask, completion_mask(lengths_N, T)[:, :-1] > 0], axis=1)
  hidden, _ = transformer.decode(params, cfg, seq, transformer.positions_from_mask(mask), mask)
  temp = temperature if temperature > 0 else 1.0
  hidden = hidden[:, P - 1:]
  if not chunk or chunk >= T:
    return grpo.token_logprobs(transformer.unembed(params, cfg, hidden), tokens_NT, temp)
  if not logprob_chunk_fits(chunk, T):
    raise ValueError(f"logprob_chunk={chunk} does not divide the {T} completion positions")
  head = {k: params[k] for k in ("embed", "lm_head") if k in params}

  @jax.checkpoint
  def block(head, h_NCD, tok_NC):
    return grpo.token_logprobs(transformer.unembed(head, cfg, h_NCD), tok_NC, temp)

  n = T // chunk
  h = hidden.reshape(N, n, chunk, -1).swapaxes(0, 1)
  tok = tokens_NT.reshape(N, n, chunk).swapaxes(0, 1)
  _, (logp, entropy) = jax.lax.scan(lambda _, x: (None, block(head, *x)), None, (h, tok))
  return logp.swapaxes(0, 1).reshape(N, T), entropy.swapaxes(0, 1).reshape(N, T)


@flax.struct.dataclass
class Rollout:
  """What an iteration sampled and how it was scored, rows first (B prompts, N = B * G rows ordered b * G + g).

  prompt, prompt_mask [B, P]; tokens [N, T]; lengths, finished [N]; scores: the scorer's dict ("rewards" [N] and
  any other per-row arrays); advantages [N] or [N, T].
  """

  prompt: jax.Array
  prompt_mask: jax.Array
  tokens: jax.Array
  lengths: jax.Array
  finished: jax.Array
  scores: dict
  advantages: jax.Array


def rule_reward(fn: Callable) -> Callable:
  """A parameter-free rule `fn(tokens_NT, lengths_N, finished_N, targets_N) -> rewards_N` as a scorer
  `(scorer_params, prompt_BP, prompt_mask_BP, out: SampleOutput, targets_N) -> {"rewards": rewards_N}`
  (scorer_params and the prompts unused; pass None as scorer_params)."""
  def reward_fn(_, prompt_BP, prompt_mask_BP, out, targets_N):
    return dict(rewards=fn(out.tokens, out.lengths, out.finished, targets_N))

  return reward_fn


def check_scores(scores, N: int, need_rewards: bool = True) -> dict:
  """The scorer's dict, checked at trace time: per-row arrays only, among them a "rewards" [N] (cast to float32)
  unless a reward design makes the rewards from the other entries."""
  if not isinstance(scores, dict) or (need_rewards and "rewards" not in scores):
    raise TypeError(f"reward_fn must return a dict with 'rewards' [N] (see rl.iteration.rule_reward), got "
                    f"{type(scores).__name__}{sorted(scores) if isinstance(scores, dict) else ''}")
  for k, v in scores.items():
    if v.shape[:1] != (N,):
      raise ValueError(f"reward_fn's scores[{k!r}] has shape {v.shape}: expected {N} rows first")
  return scores | dict(rewards=scores["rewards"].astype(jnp.float32)) if "rewards" in scores else scores


def rollout(params, prompt_BP, prompt_mask_BP, key, *, cfg: ModelConfig, settings: GRPOSettings):
  """G samples per prompt with their sampler log-probs (a `sampling.SampleOutput`)."""
  return sampling.sample(params, prompt_BP, prompt_mask_BP, key, cfg=cfg, sp=settings.sampling)


def policy_update(state: TrainState, ref_params, batch: dict, *, cfg: ModelConfig, settings: GRPOSettings,
                  tx: optax.GradientTransformation, schedule=None) -> tuple[TrainState, dict]:
  """`settings.mu` optimizer updates of the clipped policy loss (+ kl_coef * KL to the reference).

  batch: prompt [B, P], prompt_mask [B, P], tokens [N, T], lengths [N], old_logp [N, T], advantages [N] or [N, T].
  Loss = agg(policy_loss(logp, old_logp, A)) + beta * agg(kl(logp, ref_logp)).
  With `settings.num_microbatches` = M > 1 each update accumulates the gradient over M micro-batches of N / M rows.
  """
  s = settings
  N, T = batch["tokens"].shape
  M = s.num_microbatches
  if N % M:
    raise ValueError(f"num_microbatches={M} does not divide the {N} rows of the batch")
  mask = completion_mask(batch["lengths"], T)
  adv = batch["advantages"]
  adv = jnp.broadcast_to(adv[:, None], mask.shape) if adv.ndim == 1 else adv
  temp = s.sampling.temperature
  agg = functools.partial(grpo.AGGREGATIONS[s.aggregation], norm_length=s.norm_length or T)

  def terms(logp, entropy, old_logp, adv, ref_logp, place):
    """(loss, aux) from per-token arrays; `place` maps them to [N, T] (micro-batch rows, zeros elsewhere).

    Every aggregation is linear in its per-token values with a normaliser that depends on the full mask only, so the
    M micro-batches' terms, each over [N, T] with the other rows zero, add up to the full batch's exactly.
    """
    pg, clipped = grpo.POLICY_LOSSES[s.policy_loss](logp, old_logp, adv, eps_low=s.eps_low, eps_high=s.eps_high,
                                                     dual_clip=s.dual_clip)
    kl = grpo.KL_ESTIMATORS[s.kl](logp, ref_logp) if ref_logp is not None else jnp.zeros_like(logp)
    pg_loss = agg(place(pg), mask)
    loss = pg_loss + s.kl_coef * agg(place(kl), mask) if s.kl_coef > 0 else pg_loss
    aux = dict(pg_loss=pg_loss, kl=grpo.token_mean(place(kl), mask),
               clip_fraction=grpo.token_mean(place(clipped), mask),
               entropy=grpo.token_mean(place(entropy), mask),
               ratio=grpo.token_mean(place(jnp.exp(logp - old_logp)), mask))
    return loss, aux

  def finish(state, loss, aux, grads):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), **aux)
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
    return new, metrics

  if M == 1:
    logp_of = functools.partial(completion_logprobs, cfg=cfg, prompt_BP=batch["prompt"],
                                prompt_mask_BP=batch["prompt_mask"], tokens_NT=batch["tokens"],
                                lengths_N=batch["lengths"], temperature=temp, chunk=s.logprob_chunk)
    ref_logp = None
    if s.kl_coef > 0:
      ref_logp = jax.lax.stop_gradient(logp_of(ref_params)[0])

    def loss_fn(params):
      logp, entropy = logp_of(params)
      return terms(logp, entropy, batch["old_logp"], adv, ref_logp, lambda x: x)

    def one_update(state, _):
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return finish(state, loss, aux, grads)
  else:
    # Micro-batch i holds rows i, i + M, ...: a strided split keeps every device's share of each micro-batch equal
    # when the rows are sharded in contiguous blocks over the data axes.
    G = N // batch["prompt"].shape[0]
    rows = dict(prompt=jnp.repeat(batch["prompt"], G, axis=0), prompt_mask=jnp.repeat(batch["prompt_mask"], G, axis=0),
                tokens=batch["tokens"], lengths=batch["lengths"], old_logp=batch["old_logp"], adv=adv)
    split = lambda x: x.reshape(N // M, M, *x.shape[1:]).swapaxes(0, 1)  # [M, N / M, ...]
    micro = {k: split(v) for k, v in rows.items()}

    def logp_of(params, mb):
      return completion_logprobs(params, cfg, mb["prompt"], mb["prompt_mask"], mb["tokens"], mb["lengths"], temp,
                                 s.logprob_chunk)

    if s.kl_coef > 0:
      micro["ref_logp"] = jax.lax.stop_gradient(jax.lax.map(lambda mb: logp_of(ref_params, mb)[0], micro))

    def micro_loss(params, mb, i):
      logp, entropy = logp_of(params, mb)
      place = lambda x: jnp.zeros((N // M, M, T), x.dtype).at[:, i].set(x).reshape(N, T)
      return terms(logp, entropy, mb["old_logp"], mb["adv"], mb.get("ref_logp"), place)

    def one_update(state, _):
      def accumulate(carry, mb_i):
        (loss, aux), grads = jax.value_and_grad(micro_loss, has_aux=True)(state.params, *mb_i)
        return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

      zero = jax.eval_shape(lambda p: micro_loss(p, jax.tree.map(lambda x: x[0], micro), 0), state.params)
      zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (*zero, state.params))
      (loss, aux, grads), _ = jax.lax.scan(accumulate, zero, (micro, jnp.arange(M)))
      return finish(state, loss, aux, grads)

  state, metrics = jax.lax.scan(one_update, state, None, length=s.mu)
  # Report the first update's loss terms (on-policy, ratio ~ 1) and the mean grad norm.
  return state, jax.tree.map(lambda m: m[0], metrics) | dict(grad_norm=metrics["grad_norm"].mean())


def rollout_metrics(rewards_N, out: sampling.SampleOutput, G: int) -> dict:
  return dict(reward_mean=rewards_N.mean(), reward_std=rewards_N.std(),
              accuracy=(rewards_N > 0.5).astype(jnp.float32).mean(),
              zero_variance_groups=grpo.zero_variance_fraction(rewards_N, G),
              response_length=out.lengths.astype(jnp.float32).mean(),
              finished_fraction=out.finished.astype(jnp.float32).mean())


def iteration(state: TrainState, ref_params, scorer_params, prompt_BP, prompt_mask_BP, targets_B, *,
              cfg: ModelConfig, settings: GRPOSettings, tx, reward_fn: Callable, schedule=None,
              score_with_policy: bool = False, design: Callable | None = None) -> tuple[TrainState, dict, Rollout]:
  """One whole GRPO iteration on device: (state, prompts, per-prompt targets) -> (state, metrics, rollout).

  reward_fn(scorer_params, prompt_BP, prompt_mask_BP, out: sampling.SampleOutput, targets_N) -> {"rewards": [N],
  ...} must be traceable (row n answers prompt n // G); with `score_with_policy` it gets the policy's parameters
  before this iteration's update instead of `scorer_params`.
  Advantages: `settings.advantage` of scores["rewards"], or with `design(scores, G) -> (rewards [N], advantages [N]
  or [N, T])` (a reward design, `spark.rewards.REWARD_DESIGNS`) whatever it makes of the scores.
  The PRNG key is fold_in(state.rng, state.step), so an iteration is a pure function of its inputs.
  """
  G = settings.group_size
  out = rollout(state.params, prompt_BP, prompt_mask_BP, state.key(), cfg=cfg, settings=settings)
  scorer = state.params if score_with_policy else scorer_params
  scores = check_scores(reward_fn(scorer, prompt_BP, prompt_mask_BP, out, jnp.repeat(targets_B, G, axis=0)),
                        out.tokens.shape[0], need_rewards=design is None)
  if design is None:
    rewards = scores["rewards"]
    adv = grpo.ADVANTAGES[settings.advantage](rewards, G)
  else:
    rewards, adv = design(scores, G)
    scores = scores | dict(rewards=rewards.astype(jnp.float32))
  batch = dict(prompt=prompt_BP, prompt_mask=prompt_mask_BP, tokens=out.tokens, lengths=out.lengths,
               old_logp=out.logprobs, advantages=adv)
  state, metrics = policy_update(state, ref_params, batch, cfg=cfg, settings=settings, tx=tx, schedule=schedule)
  extra = {f"score_{k}": v.astype(jnp.float32).mean() for k, v in scores.items() if k != "rewards"}
  metrics = metrics | rollout_metrics(rewards, out, G) | dict(generated_tokens=out.lengths.sum()) | extra
  return state, metrics, Rollout(prompt_BP, prompt_mask_BP, out.tokens, out.lengths, out.finished, scores, adv)


def _pinned(fn, state_sharding, ins: tuple, outs: tuple):
  """jit `fn(state, ...)` with the state donated. With `state_sharding` (a TrainState of NamedShardings) given, the
  inputs and outputs are pinned (`sharding.jit_sharded`): "state" and "params" entries of `ins` / `outs` take the
  state's and its params' shardings, other entries are passed through (ROWS, REPLICATED or sharding trees)."""
  from sparkjax import sharding

  if state_sharding is None:
    return jax.jit(fn, donate_argnums=0)
  mesh = jax.tree.leaves(state_sharding)[0].mesh
  named = lambda x: state_sharding if x == "state" else state_sharding.params if x == "params" else x
  return sharding.jit_sharded(fn, mesh, tuple(map(named, ins)), tuple(map(named, outs)), donate_argnums=0)


def make_iteration(cfg, settings, tx, reward_fn, schedule=None, state_sharding=None, scorer_sharding=None,
                   score_with_policy: bool = False, design: Callable | None = None):
  """`iteration(state, ref_params, scorer_params, prompt_BP, prompt_mask_BP, targets_B) -> (state, metrics,
  rollout)` jitted once, state donated (`design`: see `iteration`). With `state_sharding` given every input and
  output is pinned: the scorer's parameters to `scorer_sharding` (a tree of NamedShardings; default replicated),
  prompts, targets and the returned rollout split over the data axes, metrics replicated."""
  from sparkjax import sharding

  fn = functools.partial(iteration, cfg=cfg, settings=settings, tx=tx, reward_fn=reward_fn, schedule=schedule,
                         score_with_policy=score_with_policy, design=design)
  scorer = sharding.REPLICATED if scorer_sharding is None else scorer_sharding
  rows = sharding.ROWS
  return _pinned(fn, state_sharding, ("state", "params", scorer, rows, rows, rows),
                 ("state", sharding.REPLICATED, rows))


def make_rollout(cfg, settings, param_shardings=None, mesh=None):
  """`rollout(params, prompt_BP, prompt_mask_BP, key)` jitted once (see `sampling.make_sampler`)."""
  return sampling.make_sampler(cfg, settings.sampling, param_shardings, mesh)


def make_update(cfg, settings, tx, schedule=None, state_sharding=None):
  """`policy_update(state, ref_params, batch)` jitted once, state donated; explicit in/out shardings when
  `state_sharding` is given (batch rows split over the data axes)."""
  from sparkjax import sharding

  fn = functools.partial(policy_update, cfg=cfg, settings=settings, tx=tx, schedule=schedule)
  return _pinned(fn, state_sharding, ("state", "params", sharding.ROWS), ("state", sharding.REPLICATED))
