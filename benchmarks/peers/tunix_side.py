"""The Tunix side of the sparkjax / Tunix CPU benchmark (google-tunix 0.1.7; run in the venv of setup_tunix.sh).

  VENV/bin/python benchmarks/peers/tunix_side.py --spec SPEC.json --out OUT.json [--reps N] [--warmup N]
      [--only NAME,...]
  VENV/bin/python benchmarks/peers/tunix_side.py --check-parity DIR --ref-logits L.npy --ref-tokens T.npy
      [--greedy-new 16] [--out P.json]

Imports only the standard library, numpy, jax, flax, optax, safetensors and tunix (not sparkjax). SPEC.json is a list
of workloads: objects with "kind", a distinct "name", "model_dir", the keys listed per kind below, and optionally
"tokens": the path of a .npy of token ids to use instead of random ones ([batch, prompt_len] prompts for the
samplers, [prompts, prompt_len] for grpo, [batch, seq_len] rows for sft; benchmarks/peers.py passes the ids the
sparkjax side used). Unknown keys are ignored. OUT.json: {"versions", "device", "device_count", "cpu_count",
"results": {name: {name, kind, spec, versions, warmup, reps, "times": {mode: [seconds of every timed call]},
"medians_s": {mode: median}, "median_s" and "times_s" (those of the first mode), kind-specific figures}, or
{name, kind, spec, "error": traceback}}}; the modes are the sampler modes run, or "step" for grpo and sft. The file is
rewritten after each workload; the exit status is 1 if one failed. --reps / --warmup override every workload's
values (quick checks: --reps 1 --warmup 1); --only runs the named workloads.

Model. DIR is a Hugging Face Qwen2 directory (config.json + *.safetensors, float32, HF tensor names, tied embeddings
when tie_word_embeddings is true). A `tunix.models.qwen2.model.ModelConfig` is built from config.json (vocab_size,
hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim (default
hidden / heads), rope_theta, rms_norm_eps, tie_word_embeddings; dtype = param_dtype = float32; no remat, no flash
attention) and the weights are loaded with Tunix's own loader, `tunix.models.qwen2.params.
create_model_from_safe_tensors`. After loading, every Tunix parameter is compared bit for bit with the HF tensor it
must come from (our own, independent name/transpose mapping) and every HF tensor must be used: the weights are
identical to the file's. A config with rope_scaling, sliding windows or a non-qwen2 model_type is refused (Tunix's
Qwen2 has none of them).

Tokenizer. Tunix's `Sampler.__call__` and its RL stack only take strings, and DIR has no tokenizer, so a minimal
adapter (`IntTokenizer`) maps space-separated integer strings to ids and back: encode("5 17 3") = [5, 17, 3],
decode([5, 17]) = "5 17"; bos_id() = None (nothing is prepended), pad_id() = -1 and eos_id() = -2, two ids a model
cannot produce (ids are in [0, vocab)), so no prompt token is treated as padding and no row can stop early. Its
encode / decode run inside every timed Sampler call (the figure "tokenizer_s" says how long they take alone).

Workloads (times are wall clock, time.perf_counter):

* "sampler": {"kind", "name", "model_dir", "batch": 16, "prompt_len": 32, "new_tokens": 64, "mode": "greedy" |
  "sample" | "topk" (or "modes": a list of them, each timed in turn on the same Sampler), "top_k": 50,
  "temperature": 1.0, "reps": 7, "warmup": 3, "seed": 0}. Prompts: the "tokens" file, else a [batch, prompt_len]
  array of ids in [0, vocab) from np.random.default_rng(seed); no padding. Each mode gets `warmup` untimed and
  `reps` timed calls. One `tunix.generate.sampler.Sampler` (cache_size = prompt_len + new_tokens, no mesh, one CPU
  device) is built before the clock; timed: one whole call `sampler(strings, max_generation_steps=new_tokens,
  max_prompt_length=prompt_len, echo=False, seed=seed + call index, ...)` + `jax.block_until_ready` on the returned
  tokens. The call includes Tunix's per-call host work: encoding the prompt strings, building the sampling state and
  an empty KV cache (eagerly, outside jit), the jitted prefill, the jitted decode while-loop, copying the token
  buffer to the host and decoding every row to a string. Modes: greedy = temperature 0 (Tunix's "greedy": argmax);
  sample = temperature, top_p = 1.0, top_k = None: Tunix's "top_p" mode, which for top_p >= 1 and no top-k is a
  plain `jax.random.categorical` over the full vocabulary (pure ancestral sampling, no sort); topk = temperature,
  top_p = 1.0, top_k = top_k: `lax.top_k`, softmax, cumsum (a no-op top-p mask at 1.0), categorical over the k
  logits; verify = temperature, top_p = the spec's "top_p" (default 1.0), top_k = its "top_k" (default none):
  nucleus sampling, Tunix's native top-p (a full-vocabulary `lax.top_k` sort, cumsum, mask, categorical). Checked
  every call: batch rows, each exactly new_tokens new tokens, prompts echoed back unchanged. tokens_per_s = batch *
  new_tokens / median_s. Tunix runs prefill + new_tokens single-token decode steps: its loop also decodes after the
  last kept token (the token it writes falls outside its buffer and is dropped), i.e. one model forward more than
  the new_tokens - 1 decode steps needed.
* "sampler_n": the same keys plus "n" (and "top_p"); its default mode is "verify": each of the `batch` prompts is
  sampled n times at the spec's temperature / top_p / top_k. Tunix has no shared-prefix n-sampling: each prompt is
  repeated n times in one batch of batch * n rows (prefill included for every copy), as its own GRPO rollout does.
  tokens_per_s = batch * n * new_tokens / median_s.
* "grpo": {"kind", "name", "model_dir", "prompts": 4, "group": 4, "prompt_len": 32, "new_tokens": 64, "kl_coef":
  0.04, "mu": 1, "lr": 1e-5, "reps": 5, "warmup": 2, optional "seed": 0, "temperature": 1.0, "kl": "k3" | "k1",
  "aggregation": "token_mean" | "seq_mean_token_mean", "eps": 0.2, "grad_clip": 1.0, "weight_decay": 0.0}. Tunix's
  own `GRPOLearner` + `RLCluster`, colocated: actor, reference and rollout on one (1, 1) ("fsdp", "tp") mesh over
  the single CPU device; the rollout shares the actor's weights (Tunix does this when the meshes are equal: no
  weight sync); the reference is a second copy of the same weights loaded from DIR. GRPOConfig: num_generations =
  group, num_iterations = mu, beta = kl_coef, epsilon = eps, kl_loss_mode "low_var_kl" for k3 (default, sparkjax's
  default estimator) or "kl" for k1, loss_agg_mode "token-mean" (default) or "sequence-mean-token-mean". Rollout:
  vanilla engine (the Sampler above), temperature, top_p 1.0, top_k None (pure sampling), max_tokens_to_generate =
  new_tokens, max_prompt_length = prompt_len, kv_cache_size = prompt_len + new_tokens, seed = seed + iteration (set
  on the rollout config as each batch is handed over; left at None Tunix would use PRNGKey(0) for every rollout).
  Optimizer:
  optax.chain(clip_by_global_norm(grad_clip), adamw(lr, b1 0.9, b2, eps 1e-8, weight_decay)) with grad_clip 1.0, b2
  0.99, weight_decay 0.0 unless the spec says otherwise: the optimizer of the sparkjax side of benchmarks/peers.py
  (grad_clip 0 drops the clip). Reward: the fraction of even token ids in each completion (a Python function over
  the decoded text; not constant, so advantages are nonzero). The data set holds warmup + reps batches of `prompts`
  prompts (the "tokens" prompts every iteration, else a fresh random batch per iteration from numpy seed `seed`) and
  is consumed by one `learner.train(dataset)` call. Timed: the wall time between consecutive requests of Tunix's
  loop for the next batch (the first is its peek at the first batch in train(), the last the request answered by
  StopIteration), which is exactly one global step of RLLearner.train: prompts repeated group times, rollout
  (prefill + decode of prompts x group rows, host copy, detokenize), padding / masks, the reference model's
  per-token log-probs (one full forward over prompt + completion), the reward function, group advantages, the actor
  update (GRPO loss = one forward with gradient over prompt + completion, plus Tunix's entropy-of-logits diagnostic;
  AdamW step), Tunix's wait for the step's loss (PeftTrainer.train ends with wait_for_all), and its per-step metrics
  bookkeeping. The first `warmup` iterations (compilation) are dropped. With mu = 1 Tunix computes no old-policy
  log-probs (it uses stop_gradient(current) as the old log-probs), so an iteration has two forward passes over the
  rows besides the rollout: the reference's and the policy's (with backward). With mu > 1 it adds one more forward
  (the rollout model's log-probs) and mu optimizer steps on the same batch. Both log-prob forwards run the lm_head
  over every prompt + completion position (Tunix slices the last new_tokens afterwards) and the loss also takes the
  entropy of the full-vocabulary softmax at every completion position (a logged diagnostic). "phases_s" splits each
  iteration into the rollout call (synchronous), the actor update call (synchronous; includes what is left of the
  asynchronously dispatched reference forward) and the rest.
* "sft": {"kind", "name", "model_dir", "batch", "seq_len", "lr": 1e-3, "reps": 5, "warmup": 2, optional "seed": 0,
  "prompt_len" or "loss_start" (default seq_len // 2), "grad_clip", "b2", "weight_decay", "mesh": true}.
  Full-parameter training (no LoRA) with `tunix.sft.peft_trainer.PeftTrainer` and its default loss (next-token cross
  entropy through a one-hot of the vocabulary, masked, normalised by the number of target tokens). Rows: the
  "tokens" rows every step, else random ids from numpy seed `seed`, a fresh batch per step; no padding. input_mask
  is true at positions >= loss_start (= prompt_len), so the tokens there are the targets (seq_len - loss_start per
  row: the "completion" part) while every position is attended; gen_model_input_fn builds positions and the causal
  attention mask the way Tunix's examples do. Same optimizer as GRPO. Model and trainer on the same (1, 1) mesh as
  GRPO, entered with `with mesh:` as RLCluster does ("mesh": false runs meshless; Tunix then compiles the train step
  twice, because the optimizer's fresh state is uncommitted on the first call and committed on the second). The
  trainer consumes warmup + reps batches in one `trainer.train(dataset)` call with max_inflight_computations = 1
  (Tunix's default 2 lets the host dispatch step k+1 while step k runs, which makes single steps untimeable; the
  cost is that Tunix's per-step host work, a few ms, is not hidden behind the previous step). Timed: the interval
  between consecutive on_train_step_start hooks (each fires after the previous step's loss is ready), the last one
  ending at on_train_end (after Tunix's wait_for_all): one step = host-to-device copy of the batch, the jitted train
  step (forward, backward, AdamW), the wait for its loss, and Tunix's metrics bookkeeping. tokens_per_s = batch *
  seq_len / median_s.

Where Tunix cannot match the spec exactly: it takes strings only (the integer-string adapter above, whose
encode/decode are timed with it); it has no "never stop" switch (an eos id outside the vocabulary stands in for
one); its decode loop runs one forward more than needed per call, and each decode step attends over the whole cache
(cache_size keys, masked) rather than the filled part; it has no shared-prefix n-sampling (sampler_n and the GRPO
rollout repeat prompts); its GRPO rollout seed is fixed by its config (same key every iteration unless changed, as
done here); its GRPO step runs the reference forward and the policy forward over all prompt + completion positions
with full lm_head and an entropy diagnostic; SFT needs max_inflight_computations = 1 to be timed per step. Greedy,
pure sampling, top-k and top-p sampling are all native; the weights are the file's, bit for bit, and its logits
match sparkjax's to ~3e-6 on a test model.

--check-parity DIR --ref-logits FILE --ref-tokens FILE: tokens [B, T] int32, logits [B, T, V] float32 (a full
forward without cache, e.g. from sparkjax). Runs Tunix's Qwen2 forward (positions 0..T-1, causal mask, no cache) on
the tokens and prints a JSON object: max_abs_diff, max_rel_diff, argmax agreement; plus Tunix's greedy Sampler
continuation of the first row (--greedy-new tokens, default 16) and whether each of its tokens is the argmax of
Tunix's own full forward over the growing sequence (the KV-cache path against the no-cache path).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors import safe_open  # noqa: E402

from tunix.generate import sampler as sampler_lib  # noqa: E402
from tunix.models.qwen2 import model as qwen2_model  # noqa: E402
from tunix.models.qwen2 import params as qwen2_params  # noqa: E402

# Tunix's RLCluster and PeftTrainer read the legacy `with mesh:` context, which jax now flags as deprecated
warnings.filterwarnings("ignore", message=r".*`with mesh:` context manager has been deprecated",
                        category=DeprecationWarning)

PAD_ID = -1  # ids no model can produce: never a prompt token, never sampled
EOS_ID = -2


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer adapter, model loading, weight check.


class IntTokenizer:
  """Space-separated integer strings <-> ids; the methods Tunix's TokenizerAdapter requires."""

  def encode(self, text, **_):
    return [int(t) for t in str(text).split()]

  def decode(self, ids, **_):
    return " ".join(str(int(i)) for i in ids)

  def bos_id(self):
    return None

  def eos_id(self):
    return EOS_ID

  def pad_id(self):
    return PAD_ID


def ids_to_text(row) -> str:
  return " ".join(str(int(i)) for i in row)


def read_hf_config(model_dir: str) -> tuple[qwen2_model.ModelConfig, dict]:
  with open(os.path.join(model_dir, "config.json")) as f:
    hf = json.load(f)
  if hf.get("model_type") != "qwen2":
    raise ValueError(f"{model_dir}: model_type {hf.get('model_type')!r}; this benchmark loads qwen2 only")
  if hf.get("rope_scaling"):
    raise ValueError(f"{model_dir}: rope_scaling {hf['rope_scaling']!r}: Tunix's Qwen2 has no rope scaling")
  if hf.get("use_sliding_window"):
    raise ValueError(f"{model_dir}: sliding-window attention is not supported by Tunix's Qwen2")
  heads = hf["num_attention_heads"]
  cfg = qwen2_model.ModelConfig(
      num_layers=hf["num_hidden_layers"],
      vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"],
      hidden_dim=hf["intermediate_size"],
      num_heads=heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      rope_theta=hf.get("rope_theta", 10000.0),
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      use_tied_embedding=bool(hf.get("tie_word_embeddings", False)),
      dtype=jnp.float32,
      param_dtype=jnp.float32,
  )
  return cfg, hf


def _expected_tunix_params(model_dir: str, cfg: qwen2_model.ModelConfig) -> dict:
  """{tunix param path: array} built from the HF tensors with our own mapping (independent of Tunix's)."""
  D, N, K, H = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  out = {}
  files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
  if not files:
    raise ValueError(f"{model_dir}: no .safetensors file")
  for fname in files:
    with safe_open(os.path.join(model_dir, fname), framework="numpy") as f:
      for name in f.keys():
        w = f.get_tensor(name)
        p = name.split(".")
        if name == "model.embed_tokens.weight":
          out[("embedder", "input_embedding")] = w
        elif name == "model.norm.weight":
          out[("final_norm", "w")] = w
        elif name == "lm_head.weight":
          if not cfg.use_tied_embedding:
            out[("lm_head", "w")] = w.T
          # a tied checkpoint may still carry lm_head.weight; Tunix then uses the embedding, so it must equal it
          elif not np.array_equal(w, f.get_tensor("model.embed_tokens.weight")):
            raise ValueError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
        elif p[:2] == ["model", "layers"]:
          i, rest = int(p[2]), ".".join(p[3:])
          if rest == "self_attn.q_proj.weight":
            out[("layers", i, "attn", "q_proj", "w")] = w.T.reshape(D, N, H)
          elif rest == "self_attn.k_proj.weight":
            out[("layers", i, "attn", "k_proj", "w")] = w.T.reshape(D, K, H)
          elif rest == "self_attn.v_proj.weight":
            out[("layers", i, "attn", "v_proj", "w")] = w.T.reshape(D, K, H)
          elif rest == "self_attn.o_proj.weight":
            out[("layers", i, "attn", "o_proj", "w")] = w.T.reshape(N, H, D)
          elif rest in ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"):
            out[("layers", i, "attn", rest.split(".")[1][0] + "_bias")] = w
          elif rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
            out[("layers", i, "mlp", rest.split(".")[1], "kernel")] = w.T
          elif rest == "input_layernorm.weight":
            out[("layers", i, "input_layernorm", "w")] = w
          elif rest == "post_attention_layernorm.weight":
            out[("layers", i, "post_attention_layernorm", "w")] = w
          else:
            raise ValueError(f"{model_dir}: tensor {name} has no place in Tunix's Qwen2")
        else:
          raise ValueError(f"{model_dir}: tensor {name} has no place in Tunix's Qwen2")
  return out


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, tree


def check_weights(model, model_dir: str, cfg) -> int:
  """Every Tunix parameter equals (bit for bit) the HF tensor it comes from; returns the number checked."""
  expected = _expected_tunix_params(model_dir, cfg)
  got = dict(_flatten(nnx.state(model, nnx.Param).to_pure_dict()))
  if set(got) != set(expected):
    raise ValueError(f"parameter sets differ: only in Tunix {sorted(set(got) - set(expected))[:5]}, only in the "
                     f"file {sorted(set(expected) - set(got))[:5]}")
  for k, w in expected.items():
    a = np.asarray(jax.device_get(got[k]))
    if a.dtype != np.float32 or a.shape != w.shape or not np.array_equal(a, w.astype(np.float32)):
      raise ValueError(f"parameter {k} differs from the file's tensor (shape {a.shape} vs {w.shape})")
  return len(expected)


def load_model(model_dir: str, mesh=None):
  cfg, _ = read_hf_config(model_dir)
  model = qwen2_params.create_model_from_safe_tensors(model_dir, cfg, mesh=mesh, dtype=jnp.float32)
  check_weights(model, model_dir, cfg)
  return model, cfg


def make_optimizer(spec: dict):
  """AdamW (b1 0.9, b2 0.99, eps 1e-8, no weight decay) after global-norm clipping at 1: the optimizer of the
  sparkjax side of benchmarks/peers.py; "b2", "weight_decay", "grad_clip" (0 = none) override."""
  adamw = optax.adamw(spec["lr"], b1=0.9, b2=spec.get("b2", 0.99), eps=1e-8,
                      weight_decay=spec.get("weight_decay", 0.0))
  clip = spec.get("grad_clip", 1.0)
  return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw


def versions() -> dict:
  v = {}
  for pkg in ("google-tunix", "jax", "jaxlib", "flax", "optax", "numpy", "safetensors"):
    try:
      v[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      v[pkg] = None
  v["tunix"] = v.pop("google-tunix")
  v["python"] = platform.python_version()
  return v


def summarize(times: dict[str, list[float]]) -> dict:
  """{mode: seconds of each timed call} -> times, medians_s per mode; median_s / times_s of the first mode."""
  first = next(iter(times))
  return {"times": times, "medians_s": {m: statistics.median(t) for m, t in times.items()},
          "median_s": statistics.median(times[first]), "times_s": times[first]}


# ----------------------------------------------------------------------------------------------------------------
# Sampler.


def sampler_modes(spec: dict) -> list[str]:
  if spec.get("modes"):
    return list(spec["modes"])
  if spec.get("mode"):
    return [spec["mode"]]
  return ["verify"] if spec["kind"] == "sampler_n" else ["sample"]


def sampler_kwargs(spec: dict, mode: str) -> dict:
  """Tunix Sampler arguments for one mode (temperature 0 = Tunix's greedy; top_p set = its "top_p" mode)."""
  temp = float(spec.get("temperature", 1.0))
  if mode == "greedy" or (mode == "verify" and temp == 0.0):
    return dict(temperature=0.0)
  if mode == "sample":
    return dict(temperature=temp, top_p=1.0, top_k=None)
  if mode == "topk":
    return dict(temperature=temp, top_p=1.0, top_k=int(spec.get("top_k", 50)))
  if mode == "verify":
    return dict(temperature=temp, top_p=float(spec.get("top_p", 1.0)), top_k=spec.get("top_k") or None)
  raise ValueError(f"unknown sampler mode {mode!r} (greedy, sample, topk, verify)")


def workload_tokens(spec: dict, rows: int, length: int, vocab: int) -> np.ndarray:
  """The spec's token ids: np.load(spec["tokens"]) when given (checked to be [rows, length] in [0, vocab)),
  else random ids from np.random.default_rng(spec["seed"] or 0)."""
  if spec.get("tokens"):
    t = np.load(spec["tokens"])
    if t.shape != (rows, length):
      raise ValueError(f"{spec['tokens']}: shape {t.shape}, expected {(rows, length)}")
    if t.min() < 0 or t.max() >= vocab:
      raise ValueError(f"{spec['tokens']}: ids outside [0, {vocab})")
    return t.astype(np.int64)
  return np.random.default_rng(spec.get("seed", 0)).integers(0, vocab, (rows, length))


def run_sampler(spec: dict) -> dict:
  B, P, N = spec["batch"], spec["prompt_len"], spec["new_tokens"]
  n = spec.get("n", 1) if spec["kind"] == "sampler_n" else 1
  seed = spec.get("seed", 0)
  warmup, reps = spec.get("warmup", 3), spec.get("reps", 7)
  model, cfg = load_model(spec["model_dir"])
  tok = IntTokenizer()
  sampler = sampler_lib.Sampler(model, tok, sampler_lib.CacheConfig(
      cache_size=P + N, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))
  prompts = workload_tokens(spec, B, P, cfg.vocab_size)
  rows = np.repeat(prompts, n, axis=0)  # [B * n, P]: each prompt n times, adjacent
  strings = [ids_to_text(r) for r in rows]

  def check(out):
    if len(out.tokens) != len(rows) or any(len(t) != N for t in out.tokens):
      raise AssertionError(f"expected {len(rows)} rows of {N} new tokens, got lengths "
                           f"{sorted(set(len(t) for t in out.tokens))} over {len(out.tokens)} rows")
    if not np.array_equal(np.asarray(out.padded_prompt_tokens), rows):
      raise AssertionError("Tunix's prompt buffer differs from the prompts (padding or an added BOS?)")
    toks = np.stack([np.asarray(t) for t in out.tokens])
    if toks.min() < 0 or toks.max() >= cfg.vocab_size:
      raise AssertionError("generated ids out of [0, vocab)")
    return toks

  times, settings, first_rows, last = {}, {}, {}, None
  for mode in sampler_modes(spec):
    kw = sampler_kwargs(spec, mode)

    def call(i, kw=kw):
      out = sampler(strings, max_generation_steps=N, max_prompt_length=P, echo=False, seed=seed + i, **kw)
      jax.block_until_ready(out.tokens)
      return out

    for i in range(warmup):
      check(call(1000 + i))
    times[mode] = []
    for i in range(reps):
      t0 = time.perf_counter()
      out = call(i)
      times[mode].append(time.perf_counter() - t0)
      last = check(out)
    settings[mode], first_rows[mode] = kw, last[0][:16].tolist()
  # the string <-> id work a call does besides the model (included in the times above)
  t0 = time.perf_counter()
  for s in strings:
    tok.encode(s)
  for r in last:
    tok.decode(r.tolist())
  tokenizer_s = time.perf_counter() - t0
  res = summarize(times)
  res.update(warmup=warmup, rows=len(rows), tokenizer_s=tokenizer_s, sampler_settings=settings, cache_size=P + N,
             tokens_per_s={m: len(rows) * N / t for m, t in res["medians_s"].items()},
             first_row_tokens=first_rows, prompts_from=spec.get("tokens") or f"numpy seed {seed}")
  return res


# ----------------------------------------------------------------------------------------------------------------
# GRPO.


def even_fraction_reward(prompts, completions, **_):
  """Fraction of even token ids in each completion (cheap, not constant)."""
  out = []
  for c in completions:
    ids = c.split()
    out.append(sum(int(t) % 2 == 0 for t in ids) / max(1, len(ids)))
  return out


def run_grpo(spec: dict) -> dict:
  from tunix.rl import rl_cluster as rlc
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout
  from tunix.utils import mesh as mesh_lib

  NP, G, P, N = spec["prompts"], spec["group"], spec["prompt_len"], spec["new_tokens"]
  warmup, reps, seed = spec.get("warmup", 2), spec.get("reps", 5), spec.get("seed", 0)
  kl = {"k3": "low_var_kl", "k1": "kl"}[spec.get("kl", "k3")]
  agg = {"token_mean": "token-mean", "seq_mean_token_mean": "sequence-mean-token-mean"}[
      spec.get("aggregation", "token_mean")]
  mesh = mesh_lib.create_mesh((1, 1), ("fsdp", "tp"))
  actor, cfg = load_model(spec["model_dir"], mesh=mesh)
  reference, _ = load_model(spec["model_dir"], mesh=mesh)
  total = warmup + reps
  training_config = rlc.RLTrainingConfig(
      actor_optimizer=make_optimizer(spec),
      eval_every_n_steps=10**9,
      # more optimizer steps than the data set gives: the loop ends on StopIteration, after the last timestamp
      max_steps=total * spec.get("mu", 1) + 1,
  )
  rollout_config = base_rollout.RolloutConfig(
      max_tokens_to_generate=N, temperature=float(spec.get("temperature", 1.0)), top_p=1.0, top_k=None,
      max_prompt_length=P, kv_cache_size=P + N)
  cluster = rlc.RLCluster(
      actor=actor, reference=reference, tokenizer=IntTokenizer(),
      cluster_config=rlc.ClusterConfig(
          role_to_mesh={rlc.Role.ACTOR: mesh, rlc.Role.REFERENCE: mesh, rlc.Role.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False, training_config=training_config,
          rollout_config=rollout_config))
  algo = grpo_learner.GRPOConfig(
      num_generations=G, num_iterations=spec.get("mu", 1), beta=spec["kl_coef"], epsilon=spec.get("eps", 0.2),
      loss_agg_mode=agg, kl_loss_mode=kl)

  stats = {"completions": 0, "bad_lengths": 0, "groups_with_spread": 0, "groups": 0}

  def reward(prompts, completions, **kw):
    r = even_fraction_reward(prompts, completions)
    stats["completions"] += len(completions)
    stats["bad_lengths"] += sum(len(c.split()) != N for c in completions)
    g = np.asarray(r).reshape(-1, G)
    stats["groups"] += len(g)
    stats["groups_with_spread"] += int((g.std(axis=1) > 0).sum())
    return r

  learner = grpo_learner.GRPOLearner(cluster, algo, reward_fns=[reward])

  # phase clocks (synchronous calls only; nothing is blocked that Tunix does not block itself)
  phases = {"rollout": [], "update": []}

  def timed(name, fn):
    def wrapper(*a, **k):
      t0 = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        phases[name].append((t0, time.perf_counter() - t0))
    return wrapper

  cluster.generate = timed("rollout", cluster.generate)
  cluster.update_actor = timed("update", cluster.update_actor)

  if spec.get("tokens"):  # the driver's prompts, the same every iteration (as on the sparkjax side)
    batches = [np.array([ids_to_text(r) for r in workload_tokens(spec, NP, P, cfg.vocab_size)])] * total
  else:  # a fresh random batch per iteration
    rng = np.random.default_rng(seed)
    batches = [np.array([ids_to_text(r) for r in rng.integers(0, cfg.vocab_size, (NP, P))]) for _ in range(total)]
  stamps = []

  def dataset():
    for k, b in enumerate(batches):
      stamps.append(time.perf_counter())
      rollout_config.seed = seed + k  # read by the rollout that follows (a new key each iteration)
      yield {"prompts": b}
    stamps.append(time.perf_counter())

  t0 = time.perf_counter()
  learner.train(dataset())
  train_total = time.perf_counter() - t0
  per_iter = np.diff(stamps).tolist()
  if len(per_iter) != total or cluster.actor_trainer.train_steps != total * spec.get("mu", 1):
    raise AssertionError(f"expected {total} iterations, got {len(per_iter)} intervals and "
                         f"{cluster.actor_trainer.train_steps} optimizer steps")
  if stats["completions"] != total * NP * G or stats["bad_lengths"]:
    raise AssertionError(f"completions {stats['completions']} (expected {total * NP * G}), "
                         f"{stats['bad_lengths']} without exactly {N} tokens")
  if stats["groups_with_spread"] == 0:
    raise AssertionError("every group had equal rewards: advantages are all zero")
  res = summarize({"step": per_iter[warmup:]})
  res["warmup"] = warmup

  def per_iteration(name):  # seconds spent in `name` calls started within each iteration (mu update calls each)
    sums = [0.0] * total
    for start, dur in phases[name]:
      sums[int(np.searchsorted(stamps, start, side="right")) - 1] += dur
    return sums[warmup:]

  rollout, update = per_iteration("rollout"), per_iteration("update")
  res.update(
      compile_iterations_s=per_iter[:warmup], train_call_s=train_total, rows=NP * G,
      phases_s={"rollout": rollout, "update": update,
                "rest": [t - a - b for t, a, b in zip(per_iter[warmup:], rollout, update)]},
      optimizer_steps=cluster.actor_trainer.train_steps, groups_with_reward_spread=stats["groups_with_spread"],
      groups=stats["groups"], reward="fraction of even token ids in the completion",
      tunix_settings=dict(kl_loss_mode=kl, loss_agg_mode=agg, beta=spec["kl_coef"], epsilon=spec.get("eps", 0.2),
                          num_generations=G, num_iterations=spec.get("mu", 1), rollout_top_p=1.0,
                          rollout_top_k=None, kv_cache_size=P + N, weight_sync=bool(learner.should_sync_weights)))
  return res


# ----------------------------------------------------------------------------------------------------------------
# SFT.


def run_sft(spec: dict) -> dict:
  from tunix.sft import hooks as hooks_lib
  from tunix.sft import metrics_logger as sft_metrics_logger
  from tunix.sft import peft_trainer
  from tunix.sft import utils as sft_utils
  from tunix.utils import mesh as mesh_lib

  B, T = spec["batch"], spec["seq_len"]
  warmup, reps, seed = spec.get("warmup", 2), spec.get("reps", 5), spec.get("seed", 0)
  loss_start = spec.get("loss_start", spec.get("prompt_len", T // 2))
  use_mesh = spec.get("mesh", True)
  mesh = mesh_lib.create_mesh((1, 1), ("fsdp", "tp")) if use_mesh else None
  model, cfg = load_model(spec["model_dir"], mesh=mesh)
  with mesh if use_mesh else contextlib.nullcontext():
    trainer = peft_trainer.PeftTrainer(
        model, make_optimizer(spec),
        peft_trainer.TrainingConfig(eval_every_n_steps=10**9, max_steps=None, max_inflight_computations=1))
  if trainer._lora_enabled:  # pylint: disable=protected-access
    raise AssertionError("LoRA params found: this must be full-parameter training")

  def gen_model_input_fn(x: peft_trainer.TrainingInput):
    pad_mask = x.input_tokens != PAD_ID
    return {"input_tokens": x.input_tokens, "input_mask": x.input_mask,
            "positions": sft_utils.build_positions_from_mask(pad_mask),
            "attention_mask": sft_utils.make_causal_attn_mask(pad_mask)}

  trainer.with_gen_model_input_fn(gen_model_input_fn)

  stamps = {"start": [], "end": []}

  class Clock(hooks_lib.TrainingHooks):
    def on_train_start(self, ctx):
      pass

    def on_train_end(self, ctx):
      stamps["end"].append(time.perf_counter())

    def on_train_step_start(self, ctx):
      stamps["start"].append(time.perf_counter())

    def on_train_step_end(self, ctx, step, loss):
      pass

    def on_eval_step_start(self, ctx):
      pass

    def on_eval_step_end(self, ctx, loss):
      pass

  trainer.with_training_hooks(Clock())
  total = warmup + reps
  mask = np.zeros((B, T), bool)
  mask[:, loss_start:] = True
  if spec.get("tokens"):  # the driver's rows, the same every step (as on the sparkjax side)
    rows = workload_tokens(spec, B, T, cfg.vocab_size).astype(np.int32)
    data = [peft_trainer.TrainingInput(input_tokens=rows, input_mask=mask) for _ in range(total)]
  else:  # a fresh random batch per step
    rng = np.random.default_rng(seed)
    data = [peft_trainer.TrainingInput(input_tokens=rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
                                       input_mask=mask) for _ in range(total)]
  with mesh if use_mesh else contextlib.nullcontext():
    trainer.train(data)
  marks = stamps["start"] + stamps["end"]
  steps = np.diff(marks).tolist()
  if len(steps) != total or trainer.train_steps != total:
    raise AssertionError(f"expected {total} steps, timed {len(steps)}, trainer counted {trainer.train_steps}")
  train_mode = sft_metrics_logger.Mode.TRAIN
  losses = trainer.metrics_logger.get_metric_history("", "loss", train_mode).tolist() \
      if trainer.metrics_logger.metric_exists("", "loss", train_mode) else []
  res = summarize({"step": steps[warmup:]})
  res.update(warmup=warmup, compile_steps_s=steps[:warmup], tokens_per_s=B * T / res["median_s"], losses=losses,
             loss_tokens_per_row=T - max(loss_start, 1),
             tunix_settings=dict(loss="tunix.sft.peft_trainer._default_loss_fn", max_inflight_computations=1,
                                 lora=False, loss_start=loss_start, mesh="(1, 1) fsdp x tp" if use_mesh else None))
  return res


# ----------------------------------------------------------------------------------------------------------------
# Parity.


def check_parity(model_dir: str, ref_logits: str, ref_tokens: str, greedy_new: int) -> dict:
  model, cfg = load_model(model_dir)
  tokens = np.load(ref_tokens).astype(np.int32)
  ref = np.load(ref_logits).astype(np.float32)
  B, T = tokens.shape
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, toks):
    m = nnx.merge(graphdef, state)
    t = toks.shape[1]
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), toks.shape)
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (toks.shape[0], t, t))
    logits, _ = m(toks, pos, None, mask)
    return logits

  logits = np.asarray(forward(state, jnp.asarray(tokens)))
  if logits.shape != ref.shape:
    raise ValueError(f"logits shape {logits.shape} vs reference {ref.shape}")
  diff = np.abs(logits - ref)
  out = dict(max_abs_diff=float(diff.max()), max_rel_diff=float((diff / (np.abs(ref) + 1e-6)).max()),
             mean_abs_diff=float(diff.mean()), ref_max_abs=float(np.abs(ref).max()),
             argmax_agreement=float((logits.argmax(-1) == ref.argmax(-1)).mean()), shape=list(ref.shape))
  # Tunix's greedy Sampler on the first row vs argmax of its own full forward on the growing sequence
  if greedy_new > 0:
    s = sampler_lib.Sampler(model, IntTokenizer(), sampler_lib.CacheConfig(
        cache_size=T + greedy_new, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))
    got = np.asarray(s([ids_to_text(tokens[0])], max_generation_steps=greedy_new, max_prompt_length=T,
                       temperature=0.0).tokens[0])
    seq, want, gaps = list(tokens[0]), [], []
    for _ in range(greedy_new):
      lg = np.asarray(forward(state, jnp.asarray([seq], jnp.int32)))[0, -1]
      top2 = np.sort(lg)[-2:]
      gaps.append(float(top2[1] - top2[0]))
      want.append(int(lg.argmax()))
      seq.append(want[-1])
    out.update(greedy_tokens=got.tolist(), greedy_matches_full_forward=bool(np.array_equal(got, want)),
               full_forward_greedy=want, min_top2_gap=min(gaps))
  return out


# ----------------------------------------------------------------------------------------------------------------


RUNNERS = {"sampler": run_sampler, "sampler_n": run_sampler, "grpo": run_grpo, "sft": run_sft}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--spec")
  ap.add_argument("--out")
  ap.add_argument("--reps", type=int, help="override every workload's reps")
  ap.add_argument("--warmup", type=int, help="override every workload's warmup")
  ap.add_argument("--only", default="", help="comma-separated workload names to run")
  ap.add_argument("--check-parity", metavar="DIR")
  ap.add_argument("--ref-logits")
  ap.add_argument("--ref-tokens")
  ap.add_argument("--greedy-new", type=int, default=16)
  args = ap.parse_args(argv)

  if args.check_parity:
    if not (args.ref_logits and args.ref_tokens):
      ap.error("--check-parity needs --ref-logits and --ref-tokens")
    res = check_parity(args.check_parity, args.ref_logits, args.ref_tokens, args.greedy_new)
    res["versions"] = versions()
    print(json.dumps(res))
    if args.out:
      with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0

  if not (args.spec and args.out):
    ap.error("--spec and --out are required (or --check-parity)")
  with open(args.spec) as f:
    specs = json.load(f)
  if isinstance(specs, dict):
    specs = [specs]
  only = {s for s in args.only.split(",") if s}
  vers = versions()
  names = [s.get("name") for s in specs]
  if None in names or len(set(names)) != len(names):
    raise SystemExit(f"every workload needs a distinct name; got {names}")
  out = {"versions": vers, "device": str(jax.devices()[0]), "device_count": jax.device_count(),
         "cpu_count": os.cpu_count(), "results": {}}
  failed = False
  for spec in specs:
    spec = dict(spec)
    if only and spec.get("name") not in only:
      continue
    if args.reps is not None:
      spec["reps"] = args.reps
    if args.warmup is not None:
      spec["warmup"] = args.warmup
    kind = spec.get("kind")
    rec = {"name": spec.get("name"), "kind": kind, "spec": spec, "versions": vers}
    print(f"[tunix_side] {spec.get('name')} ({kind}) ...", file=sys.stderr, flush=True)
    try:
      if kind not in RUNNERS:
        raise ValueError(f"unknown workload kind {kind!r}; known: {', '.join(RUNNERS)}")
      rec.update(RUNNERS[kind](spec))
      rec["reps"] = len(rec["times_s"])
      medians = ", ".join(f"{m} {t:.4f} s" for m, t in rec["medians_s"].items())
      print(f"[tunix_side] {spec.get('name')}: median {medians} over {rec['reps']}", file=sys.stderr, flush=True)
    except Exception:  # pylint: disable=broad-exception-caught
      failed = True
      rec["error"] = traceback.format_exc()
      print(rec["error"], file=sys.stderr, flush=True)
    out["results"][rec["name"]] = rec
    with open(args.out, "w") as f:  # rewritten after each workload: a crash keeps what finished
      json.dump(out, f, indent=1)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
