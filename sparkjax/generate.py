"""Command-line generation with any supported HF model directory.

  python -m sparkjax.generate --model DIR --prompt "What is the capital of France?" --chat --temperature 0
"""

from __future__ import annotations

from sparkjax import cli  # first: it quiets libraries before they are imported

import sys
import time

from absl import app, flags

flags.DEFINE_string("model", None, "Hugging Face model directory (config.json + safetensors + tokenizer).")
flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat the flag for a batch.")
flags.DEFINE_bool("chat", False, "Wrap each prompt in the tokenizer's chat template.")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate per sample.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 = greedy.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1].")
flags.DEFINE_integer("top_k", 0, "Top-k filter; 0 = off.")
flags.DEFINE_integer("num_samples", 1, "Completions per prompt (they share one prefill).")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")
flags.mark_flags_as_required(["model", "prompt"])
FLAGS = flags.FLAGS


def main(argv) -> int:
  del argv
  cli.quiet_logs()
  return cli.run("generate", generate)


def generate():
  import jax

  from sparkjax import sampling
  from sparkjax.models import hf, tokenizer as tok_lib

  sp = sampling.SamplingParams(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                               top_p=FLAGS.top_p, top_k=FLAGS.top_k, num_samples=FLAGS.num_samples)
  cfg = hf.load_config(FLAGS.model, param_dtype=FLAGS.dtype, compute_dtype=FLAGS.dtype)
  tokenizer = tok_lib.load_tokenizer(FLAGS.model)
  prompts = [tok_lib.encode_prompt(tokenizer, p, FLAGS.chat) for p in FLAGS.prompt]
  t0 = time.time()
  params, cfg = hf.load_params(FLAGS.model, cfg)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  sp = sampling.SamplingParams(**{**sp.__dict__, "stop_tokens": tok_lib.stop_tokens(tokenizer, FLAGS.model),
                                  "pad_id": pad})
  print(f"loaded {cfg.model_type} ({cfg.num_params() / 1e6:.1f}M params) in {time.time() - t0:.1f}s",
        file=sys.stderr)
  t0 = time.time()
  results = sampling.generate(params, cfg, prompts, jax.random.key(FLAGS.seed), sp)
  n_tokens = sum(len(r["tokens"]) for rows in results for r in rows)
  print(f"generated {n_tokens} tokens in {time.time() - t0:.1f}s (including compilation)", file=sys.stderr)
  for text, rows in zip(FLAGS.prompt, results):
    for g, r in enumerate(rows):
      header = f"=== prompt: {text!r}" + (f" sample {g}" if len(rows) > 1 else "")
      print(header)
      print(tokenizer.decode(r["tokens"], skip_special_tokens=True))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
