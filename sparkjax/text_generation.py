"""Batched generation from the host: prompts in, completions out, through one jitted sampler per setting.

The one implementation behind Stage I's generator and verifier (`TextModel`), the ProcessBench critic and
`hf_grpo`'s held-out evaluation. Prompts go a fixed number per sampler call and are left-padded to a bucketed
length, so a long list compiles a few programs rather than one per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from sparkjax import cli, sampling


@dataclasses.dataclass(frozen=True)
class Completion:
  tokens: list[int]  # generated ids up to and including the stop token
  finished: bool  # stopped on a stop token (False: ran out of max_new_tokens)


class Generator:
  """A model's batched sampler over lists of token-id prompts.

  Args:
    rows: the most rows (prompts x samples) of one sampler call; None = all prompts of a `generate` call in one.
    param_shardings, mesh: pin the sampler to a mesh (`sampling.make_sampler`); prompts per call are then a number
      that splits over the data axes, and with several processes each feeds its share of every call.
    bucket: padded prompt length for a longest prompt of n tokens (default `sampling.bucket_length`).
    fill_last: pad a short last call with repeats of its last prompt, so every call has one shape; False runs it
      at its own size (one more compilation, no wasted rows; single-device only).
    prefill_groups: split each call's prompts by length into up to this many groups, each padded to its own bucket
      (`sampling.group_prompts`; `sampling.sample_with_keys`'s prompt groups), so a few long prompts do not pad
      every row to their length. Same samples as one group up to float rounding; single-device only.
  """

  def __init__(self, cfg, pad_id: int, *, rows: int | None = 256, param_shardings=None, mesh=None,
               bucket: Callable[[int], int] = sampling.bucket_length, fill_last: bool = True,
               prefill_groups: int = 1):
    if mesh is not None and (not fill_last or rows is None or prefill_groups > 1):
      raise ValueError("fill_last=False, rows=None and prefill_groups > 1 need a single device (mesh=None): every "
                       "call must split over the mesh")
    if prefill_groups < 1:
      raise ValueError(f"prefill_groups={prefill_groups}: expected >= 1")
    self.cfg, self.pad, self.rows = cfg, pad_id, rows
    self.param_shardings, self.mesh, self.bucket, self.fill_last = param_shardings, mesh, bucket, fill_last
    self.prefill_groups = prefill_groups
    self._samplers = {}

  def _sampler(self, sp: sampling.SamplingParams):
    if sp not in self._samplers:
      self._samplers[sp] = sampling.make_sampler(self.cfg, sp, self.param_shardings, self.mesh)
    return self._samplers[sp]

  def prompts_per_call(self, n: int) -> int:
    """max(1, rows // n), lowered until it splits over the mesh's data axes."""
    per_call = max(1, self.rows // n)
    if self.mesh is not None:
      from sparkjax import sharding

      while per_call > 1:
        try:
          sharding.check_batch(per_call, self.mesh)
          break
        except ValueError:
          per_call -= 1
    return per_call

  def _call(self, sampler, params, tokens, mask, key):
    """One sampler call on the full [B, P] prompt arrays (every process holds them) -> host SampleOutput."""
    if self.mesh is None or jax.process_count() == 1:
      return jax.device_get(sampler(params, tokens, mask, key))
    from sparkjax import sharding

    B, p, n = tokens.shape[0], jax.process_index(), jax.process_count()
    local = slice(p * B // n, (p + 1) * B // n)
    rows = sharding.batch_sharding(self.mesh, 2)
    out = sampler(params, jax.make_array_from_process_local_data(rows, tokens[local]),
                  jax.make_array_from_process_local_data(rows, mask[local]), key)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), out)

  def _grouped_call(self, params, chunk, P, sp, key):
    """`_call` with the prompts in length groups (`sampling.group_prompts`), each padded to min(bucket, P); the
    rows come back in the chunk's order, each with the key the one-group call gives it."""
    n = sp.num_samples
    size = lambda longest: min(self.bucket(longest), P)
    groups = sampling.group_prompts([len(p) for p in chunk], self.prefill_groups, size)
    padded = [sampling.pad_prompts([chunk[i] for i in g], self.pad, size(max(len(chunk[i]) for i in g)))
              for g in groups]
    order = np.concatenate(groups)
    keys = sampling.sample_keys(key, len(chunk), n)[order]
    out = jax.device_get(sampling.sample_with_keys_jit(params, tuple(t for t, _ in padded), tuple(m for _, m in padded),
                                                       keys, cfg=self.cfg, sp=sp))
    rows = np.empty(len(chunk) * n, np.int64)  # output row of each (prompt, sample), in the chunk's order
    rows[(order[:, None] * n + np.arange(n)).reshape(-1)] = np.arange(len(chunk) * n)
    return jax.tree.map(lambda a: a[rows], out)

  def generate(self, params, prompts: Sequence[Sequence[int]], sp: sampling.SamplingParams, key, *,
               max_prompt_len: int | None = None, desc: str | None = None) -> list[list[Completion]]:
    """`sp.num_samples` completions of each prompt: [len(prompts)][n]. Call c uses key fold_in(key, c); the n
    samples of a prompt share its prefill. Prompts are padded to `bucket(longest)`, capped at `max_prompt_len`
    (a longer prompt is an error). `desc` shows a progress bar when there are several calls."""
    n = sp.num_samples
    per_call = len(prompts) if self.rows is None else self.prompts_per_call(n)
    longest = max(len(p) for p in prompts)
    P = self.bucket(longest) if max_prompt_len is None else min(self.bucket(longest), max_prompt_len)
    sampler = self._sampler(sp)
    out: list[list[Completion]] = []
    chunks = range(0, len(prompts), per_call)
    for c, lo in enumerate(cli.Progress(chunks, total=len(chunks), desc=desc or "",
                                        disable=desc is None or len(chunks) < 2, unit="batch")):
      chunk = [list(p) for p in prompts[lo:lo + per_call]]
      real = len(chunk)
      if self.fill_last:
        chunk = chunk + [chunk[-1]] * (per_call - real)
      if self.prefill_groups > 1:
        res = self._grouped_call(params, chunk, P, sp, jax.random.fold_in(key, c))
      else:
        tokens, mask = sampling.pad_prompts(chunk, self.pad, P)
        res = self._call(sampler, params, tokens, mask, jax.random.fold_in(key, c))
      for b in range(real):
        out.append([Completion(res.tokens[r, :res.lengths[r]].tolist(), bool(res.finished[r]))
                    for r in range(b * n, (b + 1) * n)])
    return out


class TextModel:
  """A model + tokenizer that turns prompt texts into sampled completion texts (a text layer over `Generator`).

  encode(text) -> token ids; decode(ids) -> text. `rows` bounds the rows (prompts x samples) of one sampler call;
  `prefill_groups` as in `Generator` (single device only).
  """

  def __init__(self, params, cfg, encode: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str],
               stop_tokens: tuple[int, ...], pad_id: int, rows: int = 256, param_shardings=None, mesh=None,
               prefill_groups: int = 1):
    self.params = params
    self.generator = Generator(cfg, pad_id, rows=rows, param_shardings=param_shardings, mesh=mesh,
                               prefill_groups=prefill_groups)
    self.encode, self.decode, self.stop, self.pad = encode, decode, stop_tokens, pad_id

  @classmethod
  def from_dir(cls, model_dir, rows: int, *, chat: bool, params=None, cfg=None, mesh=None,
               prefill_groups: int = 1) -> "TextModel":
    """A Hugging Face directory's model and tokenizer as a TextModel: prompts wrapped in the tokenizer's chat template
    (assistant turn opened) when `chat`, else encoded without special tokens; completions decoded without special
    tokens; stop at the tokenizer's and the generation config's eos ids. `params` (and `cfg`): weights already
    loaded (else read from the directory, placed on `mesh` when given)."""
    from sparkjax import sharding
    from sparkjax.models import hf
    from sparkjax.models import tokenizer as tok_lib

    cfg = cfg or hf.load_config(model_dir)
    tok = tok_lib.load_tokenizer(model_dir)
    if chat and not tok.chat_template:
      raise ValueError(f"{model_dir}: the tokenizer has no chat template; the prompts are chat messages")
    shardings = sharding.param_shardings(cfg, mesh) if mesh is not None else None
    if params is None:
      params, cfg = hf.load_params(model_dir, cfg, shardings)
    stop = tok_lib.stop_tokens(tok, model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    encode = ((lambda t: tok_lib.encode_prompt(tok, t, chat=True)) if chat else
              (lambda t: tok.encode(t, add_special_tokens=False)))
    return cls(params, cfg, encode, lambda ids: tok.decode(ids, skip_special_tokens=True), stop, pad, rows, shardings,
               mesh, prefill_groups)

  def sample_texts(self, prompts: Sequence[str], n: int, max_new_tokens: int, temperature: float, key,
                   top_p: float = 1.0, desc: str | None = None) -> list[list[str]]:
    """n completions of each prompt: [len(prompts)][n] texts (see `Generator.generate`)."""
    sp = sampling.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 num_samples=n, stop_tokens=self.stop, pad_id=self.pad)
    outs = self.generator.generate(self.params, [self.encode(p) for p in prompts], sp, key, desc=desc)
    return [[self.decode(c.tokens) for c in row] for row in outs]
