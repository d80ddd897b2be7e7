"""Generation with the real SmolLM2-135M-Instruct (the shared 4-bit GGUF): Stage I's generator role on GSM8K.

Command:   python -m sparkjax.main --config=configs/generate.py --workdir=/tmp/sparkjax_generate
Smoke:     python -m sparkjax.main --config=configs/generate.py:runlocal --workdir=/tmp/sparkjax_smoke
Hardware:  a 2-core CPU, about a minute (conversion of the GGUF ~10 s, compilation, then decoding).
Expect:    `samples.jsonl` in the workdir with `num_samples` chat completions for each of the first `num_prompts`
           GSM8K test questions, and the decode throughput printed. The converted HF model is kept in
           `<workdir>/model` and reused on the next run.
Args:      num_prompts=8, num_samples=4, max_new_tokens=192, runlocal (2 prompts x 2 samples x 16 tokens).
"""

from pathlib import Path

import ml_collections

from sparkjax.config_args import parse_arg

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, num_prompts=8, num_samples=4, max_new_tokens=192)
  c = ml_collections.ConfigDict()
  c.pipeline = "generate"
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.dir = ""  # a HF directory; empty: convert `gguf` into <workdir>/model
  c.model.gguf = str(SHARED / "models" / "smollm2-135m-instruct-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf")
  c.model.dtype = "float32"

  c.data = ml_collections.ConfigDict()
  c.data.path = str(SHARED / "data" / "gsm8k" / "test.jsonl")
  c.data.field = "question"
  c.data.num_prompts = arg.num_prompts
  c.data.batch_size = 8
  c.data.system = "Solve the problem step by step. Write each step as 'Step k: ...' and end with 'Answer: X'."

  c.sampling = ml_collections.ConfigDict()
  c.sampling.num_samples = arg.num_samples
  c.sampling.max_new_tokens = arg.max_new_tokens
  c.sampling.temperature = 0.7  # the paper's generator settings (T=0.7, top_p=0.95)
  c.sampling.top_p = 0.95
  c.sampling.top_k = 0

  if arg.runlocal:
    c.data.num_prompts = 2
    c.sampling.num_samples = 2
    c.sampling.max_new_tokens = 16
  return c
