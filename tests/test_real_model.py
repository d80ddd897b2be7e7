"""The real pretrained SmolLM2-135M-Instruct (shared 4-bit GGUF, converted by sparkjax) and the real Qwen tokenizer."""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax.models import hf, tokenizer as tok_lib, transformer

ROOT = Path(__file__).resolve().parents[1]
QWEN_TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "qwen3"


def test_converted_smollm2_logits_match_transformers(smollm2_dir):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  params, cfg = hf.load_params(smollm2_dir)
  tokenizer = tok_lib.load_tokenizer(smollm2_dir)
  ids = tok_lib.encode_prompt(tokenizer, "What is the capital of France?", chat=True)
  ours = np.asarray(transformer.forward(params, cfg, jnp.asarray([ids])))
  model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(torch.tensor([ids])).logits.numpy()
  assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, np.abs(theirs).max())
  assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99


def test_generate_cli_answers_paris(smollm2_dir):
  r = subprocess.run([sys.executable, "-m", "sparkjax.generate", f"--model={smollm2_dir}", "--chat",
                      "--temperature=0", "--max_new_tokens=24", "--prompt=What is the capital of France?"],
                     capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert r.returncode == 0, r.stderr
  assert "Paris" in r.stdout


@pytest.mark.parametrize("args,msg", [(["--model=/nonexistent/dir"], "does not exist"),
                                      (["--top_p=1.5"], "top_p=1.5: expected a value in (0, 1]")])
def test_generate_cli_bad_input(smollm2_dir, args, msg):
  base = [f"--model={smollm2_dir}", "--prompt=hi", "--max_new_tokens=2"]
  r = subprocess.run([sys.executable, "-m", "sparkjax.generate", *base, *args], capture_output=True, text=True,
                     cwd=ROOT, timeout=600)
  assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr


def test_qwen_tokenizer_round_trips():
  if not QWEN_TOKENIZER.is_dir():
    pytest.skip(f"shared Qwen tokenizer not found at {QWEN_TOKENIZER}")
  tok = tok_lib.load_tokenizer(QWEN_TOKENIZER)
  text = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nAnswer: \\boxed{36} — 你好, ∑ x²"
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.convert_tokens_to_ids("<|im_end|>") == 151645 and tok.eos_token_id == 151645
  chat = tok_lib.encode_prompt(tok, "hi", chat=True)
  assert tok.decode(chat).startswith("<|im_start|>") and 151645 in tok_lib.stop_tokens(tok)
