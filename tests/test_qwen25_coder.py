"""The real Qwen2.5-Coder-0.5B-Instruct GGUF (mostly Q5_0, some Q8_0 / Q6_K / Q4_K), converted by sparkjax, against
transformers loading the same file with its own GGUF reader: weights, logits, tokenizer ids, and a greedy answer.

The file comes from the model cache that `python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct
--gguf-only` fills (.ci/run does); without it these tests skip and say so.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax.tools import fetch_model
from test_gguf import CHAT, CORPUS

NAME = "qwen2.5-coder-0.5b-instruct"
# Beyond test_gguf's corpus (Chinese, code, numbers, ChatML tokens): what Qwen's vocabulary adds.
QWEN_CORPUS = [
    "我们来计算一下：12 × 3 = 36。所以答案是 \\boxed{36}。",
    "１２３ 全角数字，以及 3.14159e-10 和 12345678901234567890",
    "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>",
    "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c<|fim_middle|>",
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n",
    "import numpy as np\nx = np.arange(10)[::-1]  # 反转\nprint(f\"{x.sum():,}\")\n",
]
PROMPT = ("Write a Python function that returns the n-th Fibonacci number, then compute fib(10). "
          "用中文解释一下。")


@pytest.fixture(scope="module")
def qwen_gguf():
  path = fetch_model.cached_gguf(NAME)
  if path is None:
    pytest.skip(f"{NAME} GGUF not in the model cache ({fetch_model.cache_path(NAME)}); fetch it with "
                f"`python -m sparkjax.tools.fetch_model {NAME} --gguf-only` (.ci/run does)")
  return path


@pytest.fixture(scope="module")
def qwen_dir(qwen_gguf, tmp_path_factory):
  from sparkjax.models.gguf import convert_gguf

  start = time.perf_counter()
  out = convert_gguf(qwen_gguf, tmp_path_factory.mktemp("qwen05") / "hf").out_dir
  print(f"converted {NAME} in {time.perf_counter() - start:.1f}s")
  return out


@pytest.fixture(scope="module")
def reference_model(qwen_gguf):
  """transformers' own GGUF reader (dequantising with `gguf` as well), in float32."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("accelerate")
  from transformers import AutoModelForCausalLM

  return AutoModelForCausalLM.from_pretrained(qwen_gguf.parent, gguf_file=qwen_gguf.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def jax_model(qwen_dir):
  from sparkjax.models import hf

  return hf.load_params(qwen_dir)


def test_config_and_weights_match_transformers_gguf(qwen_dir, reference_model):
  import torch
  from transformers import AutoModelForCausalLM

  config = json.loads((qwen_dir / "config.json").read_text())
  assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (
      "qwen2", 24, 896, 4864)
  assert (config["num_attention_heads"], config["num_key_value_heads"], config["rope_theta"]) == (14, 2, 1000000.0)
  # The file carries its own (Q8_0) output.weight beside the (Q5_0) embeddings: untied, as llama.cpp runs it.
  assert config["tie_word_embeddings"] is False and config["eos_token_id"] == 151645
  ours = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).state_dict()
  ref = reference_model.state_dict()
  assert ours.keys() == ref.keys()
  for name in ref:
    assert torch.equal(ours[name], ref[name]), name


def test_logits_match_transformers_gguf(qwen_dir, reference_model, jax_model):
  """Our JAX decoder on the converted directory against transformers' model from the GGUF. Measured here: max abs
  difference 7e-5 with logits up to 32 (2e-6 of the largest), every argmax equal; float32 summation order is all that
  differs, so the bound is 1e-5 of the largest logit (about 5x the measured)."""
  import torch

  from sparkjax.models import tokenizer as tok_lib, transformer

  params, cfg = jax_model
  tokenizer = tok_lib.load_tokenizer(qwen_dir)
  ids = tok_lib.encode_prompt(tokenizer, PROMPT, chat=True)
  ours = np.asarray(transformer.forward(params, cfg, jnp.asarray([ids])))
  with torch.no_grad():
    ref = reference_model(torch.tensor([ids])).logits.numpy()
  diff, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
  agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
  print(f"{len(ids)} tokens: max |logit| {scale:.2f}, max abs diff {diff:.2e} ({diff / scale:.1e} of it), "
        f"argmax agreement {agree:.3f}")
  assert diff <= 1e-5 * scale
  assert agree == 1.0


def test_tokenizer_matches_transformers_gguf(qwen_dir, qwen_gguf):
  """Identical ids, decodes and chat template as transformers' GGUF tokenizer; the tokenizer.json differs from it
  only by Qwen2's NFC normalizer (`sparkjax.models.gguf.build_tokenizer`), which changes no NFC text."""
  pytest.importorskip("torch")
  from transformers import AutoTokenizer

  ours = AutoTokenizer.from_pretrained(qwen_dir)
  ref = AutoTokenizer.from_pretrained(qwen_gguf.parent, gguf_file=qwen_gguf.name)
  ours_json, ref_json = json.loads(ours.backend_tokenizer.to_str()), json.loads(ref.backend_tokenizer.to_str())
  assert (ours_json.pop("normalizer"), ref_json.pop("normalizer")) == ({"type": "NFC"}, None)
  assert ours_json == ref_json
  for attr in ["bos_token", "eos_token", "pad_token", "eos_token_id", "pad_token_id", "all_special_tokens",
               "chat_template"]:
    assert getattr(ours, attr) == getattr(ref, attr), attr
  assert len(ours) == len(ref) == 151936  # the vocabulary, its [PAD151665]... tail included
  corpus = [*CORPUS, *QWEN_CORPUS]
  for text in [*corpus, "\n".join(corpus)]:
    ids = ours(text)["input_ids"]
    assert ids == ref(text)["input_ids"], text
    assert ours.decode(ids) == ref.decode(ids), text
  assert ours.convert_ids_to_tokens(ours("x = 2024")["input_ids"]) == ["x", "Ġ=", "Ġ", "2", "0", "2", "4"]
  for kwargs in [{"tokenize": False}, {"tokenize": True, "return_dict": False}]:
    assert ours.apply_chat_template(CHAT, add_generation_prompt=True, **kwargs) == \
        ref.apply_chat_template(CHAT, add_generation_prompt=True, **kwargs)


def test_greedy_chat_answers(qwen_dir, jax_model):
  """One short real-model generation with sparkjax's jitted sampler."""
  from sparkjax import sampling
  from sparkjax.models import tokenizer as tok_lib

  params, cfg = jax_model
  tokenizer = tok_lib.load_tokenizer(qwen_dir)
  questions = ["What is the capital of France?", "What is 12 * 3? Answer with the number only."]
  sp = sampling.SamplingParams(max_new_tokens=12, temperature=0.0, stop_tokens=tok_lib.stop_tokens(tokenizer, qwen_dir),
                               pad_id=tokenizer.pad_token_id)
  prompts = [tok_lib.encode_prompt(tokenizer, q, chat=True) for q in questions]
  results = sampling.generate(params, cfg, prompts, jax.random.key(0), sp)
  answers = [tokenizer.decode(rows[0]["tokens"], skip_special_tokens=True) for rows in results]
  print(answers)
  assert "Paris" in answers[0]
  assert answers[1].strip() == "36"
