"""Pipeline `generate`: a HF (or GGUF-converted) model samples G chat completions for prompts from a JSONL file."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
from sparkjax import cli, config_check, sampling
from sparkjax.data.jsonl import read_jsonl, write_jsonl_atomic
from sparkjax.models import hf, tokenizer as tok_lib


def check_config(ch: config_check.Checks):
  """Everything known from the config alone (run by `main` before any work; see sparkjax/config_check.py)."""
  if ch.get("model.dir", ""):
    ch.satisfies("model.dir", hf.check_model_dir)
  else:
    ch.file("model.gguf", "GGUF file (or set model.dir to a Hugging Face directory)")
  ch.choice("model.dtype", ("float32", "bfloat16"))
  ch.file("data.path", "data file (.jsonl)")
  ch.int_range("data.num_prompts", 1)
  ch.int_range("data.batch_size", 1)
  s = "sampling"
  ch.satisfies(s, lambda c: sampling.SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                                                    top_p=c.top_p, top_k=c.top_k, num_samples=c.num_samples))


def _model_dir(config, workdir: Path) -> Path:
  if config.model.dir:
    return Path(config.model.dir)
  out = workdir / "model"
  if not (out / "config.json").is_file():
    from sparkjax.models.gguf import convert_gguf

    print(f"converting {config.model.gguf} -> {out}", file=sys.stderr)
    convert_gguf(config.model.gguf, out, overwrite=True)  # replaces only an earlier conversion's own files
  return out


def run(config, workdir: str) -> Path:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  # Model.
  model_dir = _model_dir(config, workdir)
  cfg = hf.load_config(model_dir, param_dtype=config.model.dtype, compute_dtype=config.model.dtype)
  params, cfg = hf.load_params(model_dir, cfg)
  tokenizer = tok_lib.load_tokenizer(model_dir)

  # Data.
  records = read_jsonl(config.data.path, required=[config.data.field], limit=config.data.num_prompts)
  prompts = [tok_lib.encode_prompt(tokenizer, r[config.data.field], chat=True, system=config.data.system)
             for r in records]

  # Sampling, batch by batch.
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  sp = sampling.SamplingParams(max_new_tokens=config.sampling.max_new_tokens,
                               temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                               top_k=config.sampling.top_k, num_samples=config.sampling.num_samples,
                               stop_tokens=tok_lib.stop_tokens(tokenizer, model_dir), pad_id=pad)
  rng = jax.random.key(config.seed)
  out, n_tokens, t0 = [], 0, time.time()
  bs = config.data.batch_size
  for i in cli.Progress(range(0, len(prompts), bs), total=-(-len(prompts) // bs), desc="generate", unit="batch"):
    results = sampling.generate(params, cfg, prompts[i:i + bs], jax.random.fold_in(rng, i), sp)
    for rec, rows in zip(records[i:i + bs], results):
      n_tokens += sum(len(r["tokens"]) for r in rows)
      out.append(dict(prompt=rec[config.data.field],
                      completions=[tokenizer.decode(r["tokens"], skip_special_tokens=True) for r in rows],
                      finished=[r["finished"] for r in rows]))
  seconds = time.time() - t0
  path = write_jsonl_atomic(workdir / "samples.jsonl", out)
  print(f"wrote {path}: {len(out)} prompts x {sp.num_samples} samples, {n_tokens} tokens in {seconds:.1f}s "
        f"({n_tokens / seconds:.1f} tok/s including compilation)")
  return path
