"""GGUF -> Hugging Face conversion (sparkjax.models.gguf, sparkjax.tools.convert)."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest

from sparkjax.models import gguf as gguf_convert

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = REPO.parent / "shared/models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf"


def llamacpp_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf.py's q/k permutation (HF order -> llama.cpp order), verbatim."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama(path, rng, with_output=False):
  """A 2-layer float32 Llama GGUF with no tokenizer; returns the HF state dict it encodes."""
  hidden, n_head, n_kv, ff, vocab, layers = 8, 2, 1, 16, 32, 2
  sd = {"model.embed_tokens.weight": rng.normal(size=(vocab, hidden)), "model.norm.weight": rng.normal(size=hidden)}
  if with_output:
    sd["lm_head.weight"] = rng.normal(size=(vocab, hidden))
  for i in range(layers):
    for name, shape in [("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden // n_head, hidden)),
                        ("self_attn.v_proj", (hidden // n_head, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                        ("mlp.gate_proj", (ff, hidden)), ("mlp.up_proj", (ff, hidden)),
                        ("mlp.down_proj", (hidden, ff)), ("input_layernorm", (hidden,)),
                        ("post_attention_layernorm", (hidden,))]:
      sd[f"model.layers.{i}.{name}.weight"] = rng.normal(size=shape)
  sd = {k: v.astype(np.float32) for k, v in sd.items()}
  to_gguf = {v: k for k, v in gguf_convert._GLOBAL_NAMES.items()}
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(layers)
  writer.add_context_length(128)
  writer.add_embedding_length(hidden)
  writer.add_feed_forward_length(ff)
  writer.add_head_count(n_head)
  writer.add_head_count_kv(n_kv)
  writer.add_layer_norm_rms_eps(1e-6)
  writer.add_rope_freq_base(10000.0)
  for name, w in sd.items():
    if name.endswith("q_proj.weight"):
      w = llamacpp_permute(w, n_head)
    elif name.endswith("k_proj.weight"):
      w = llamacpp_permute(w, n_kv)
    if name.startswith("model.layers."):
      i, rest = name.split(".", 3)[2:]
      gguf_name = f"blk.{i}." + {v: k for k, v in gguf_convert._LAYER_NAMES.items()}[rest]
    else:
      gguf_name = to_gguf[name]
    writer.add_tensor(gguf_name, w)  # numpy (HF) shape; the writer stores ggml dims reversed
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return sd


def test_rotary_unpermute_inverts_llamacpp():
  rng = np.random.default_rng(0)
  for n_head, head_dim in [(9, 64), (3, 64), (4, 6)]:
    for shape in [(n_head * head_dim, 5), (n_head * head_dim,)]:
      w = rng.normal(size=shape).astype(np.float32)
      assert not np.array_equal(llamacpp_permute(w, n_head), w)
      np.testing.assert_array_equal(gguf_convert.llamacpp_to_hf_rotary(llamacpp_permute(w, n_head), n_head), w)
      np.testing.assert_array_equal(llamacpp_permute(gguf_convert.llamacpp_to_hf_rotary(w, n_head), n_head), w)


@pytest.mark.parametrize("with_output", [False, True])
def test_read_tiny_llama_round_trip(tmp_path, with_output):
  expected = write_tiny_llama(tmp_path / "tiny.gguf", np.random.default_rng(1), with_output)
  config, sd, meta = gguf_convert.read_gguf(tmp_path / "tiny.gguf")
  assert sd.keys() == expected.keys()
  for name, w in expected.items():
    np.testing.assert_array_equal(sd[name], w, err_msg=name)
  assert config["tie_word_embeddings"] is (not with_output)
  assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, 4)
  assert (config["vocab_size"], config["num_hidden_layers"], config["rms_norm_eps"]) == (32, 2, 1e-6)
  assert meta["general.architecture"] == "llama"


def test_llama3_rope_scaling_recovered():
  """Llama 3.1's rope_scaling, through the rope_freqs tensor llama.cpp writes in its place."""
  theta, dim, factor, low, high, old = 500000.0, 128, 8.0, 1.0, 4.0, 8192
  freqs = []
  for f in 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim):
    wavelen = 2 * math.pi / f
    smooth = (old / wavelen - low) / (high - low)
    if wavelen < old / high:
      freqs.append(1.0)
    elif wavelen > old / low:
      freqs.append(factor)
    else:
      freqs.append(1 / ((1 - smooth) / factor + smooth))
  assert gguf_convert.llama3_rope_scaling(np.float32(freqs), theta, dim) == {
      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}


def test_other_architecture_rejected(tmp_path):
  path = tmp_path / "gpt2.gguf"
  writer = gguf.GGUFWriter(str(path), "gpt2")
  writer.add_tensor("token_embd.weight", np.zeros((4, 2), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"gpt2\.gguf.*'gpt2'.*supported: llama"):
    gguf_convert.read_gguf(path)


def test_missing_or_invalid_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.gguf"):
    gguf_convert.read_gguf(tmp_path / "nope.gguf")
  (tmp_path / "text.gguf").write_text("not a gguf file")
  with pytest.raises(ValueError, match="text.gguf is not a readable GGUF"):
    gguf_convert.read_gguf(tmp_path / "text.gguf")


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
  write_tiny_llama(tmp_path / "tiny.gguf", np.random.default_rng(2))

  def broken_tokenizer(*args):
    raise RuntimeError("tokenizer step failed")

  monkeypatch.setattr(gguf_convert, "_save_tokenizer", broken_tokenizer)
  with pytest.raises(RuntimeError):
    gguf_convert.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "keep.txt").write_text("keep")
  with pytest.raises(RuntimeError):
    gguf_convert.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "old", overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "tiny.gguf"]
  assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "sparkjax.tools.convert", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def test_cli_refuses_non_empty_out_dir(tmp_path):
  write_tiny_llama(tmp_path / "tiny.gguf", np.random.default_rng(3))
  out = tmp_path / "out"
  out.mkdir()
  (out / "precious.txt").write_text("keep me")
  result = run_cli("--gguf", str(tmp_path / "tiny.gguf"), "--out", str(out))
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and "already exists" in result.stderr
  assert [p.name for p in out.iterdir()] == ["precious.txt"]
  assert (out / "precious.txt").read_text() == "keep me"


def test_cli_missing_file(tmp_path):
  result = run_cli("--gguf", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "out"))
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [f"convert: error: GGUF file not found: {tmp_path / 'nope.gguf'}"]
  assert not (tmp_path / "out").exists()


def test_smollm2_converted_dir(smollm2_dir):
  config = json.loads((smollm2_dir / "config.json").read_text())
  assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
  assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
  assert (config["num_attention_heads"], config["num_key_value_heads"], config["rope_theta"]) == (9, 3, 100000.0)
  assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "generation_config.json").is_file()
  assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_smollm2_tokenizer(smollm2_dir):
  from transformers import AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
  template = gguf.GGUFReader(SMOLLM2_GGUF).fields["tokenizer.chat_template"].contents()
  assert tokenizer.chat_template == template
  assert (tokenizer.eos_token, len(tokenizer)) == ("<|im_end|>", 49152)
  # llama.cpp's `smollm` pre-tokenizer splits digits first, so a blank line stays one token before a number.
  assert tokenizer.convert_ids_to_tokens(tokenizer("a\n\n12")["input_ids"]) == ["a", "ĊĊ", "1", "2"]


def test_smollm2_generates_paris(smollm2_dir):
  torch = pytest.importorskip("torch")
  from transformers import AutoModelForCausalLM, AutoTokenizer

  model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
  tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
  inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
  with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
  text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
  print(repr(text))
  assert "Paris" in text


# Tokenizer equivalence: our `tokenizers`-only rebuild against what transformers' GGUF reader (which needs torch)
# builds from the same file, with the digit split the conversion used to patch in.

CORPUS = [
    "What is the capital of France?",
    "a\n\n12",
    "3.14159",
    "x = 1,000,000 on 2024-06-01 at 09:30, id 007, -42e-3",
    "Solve $\\frac{3}{4} + \\sqrt{16}$; so $x^2 = 4.75$ and the answer is \\boxed{4.75}.",
    "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\n\nAnswer: \\boxed{36}",
    "def f(x):\n    return x ** 2  # square\n\n\tprint(f(3), [i for i in range(10)])\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }  // C++\r\n",
    "Ünïcödé naïve café — “quotes”, ‘single’ … ∑ x² ≤ ∞",
    "你好，世界！こんにちは 안녕하세요 Привет мир",
    "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
    "<|endoftext|><repo_name>x<file_sep>y<jupyter_code>",
    "<|im_start <|im_end|>partial<|im_",
    "don't I'll we're THEY'VE",
    "   leading and trailing   ",
    "\n\n\n",
    " ",
    "",
]
CHAT = [
    {"role": "user", "content": "What is 12 * 3?"},
    {"role": "assistant", "content": "12 * 3 = \\boxed{36}"},
    {"role": "user", "content": "And 12 * 4?"},
]


def transformers_gguf_tokenizer(path):
  """What the conversion did before: transformers' own GGUF tokenizer (imports torch), plus the digit split."""
  pytest.importorskip("torch")
  from tokenizers import pre_tokenizers
  from transformers import AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  if gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() in gguf_convert._DIGIT_SPLIT_PRE:
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
  return tokenizer


@pytest.fixture(scope="module")
def reference_tokenizer():
  if not SMOLLM2_GGUF.is_file():
    pytest.skip(f"shared SmolLM2 GGUF not found at {SMOLLM2_GGUF}")
  return transformers_gguf_tokenizer(SMOLLM2_GGUF)


def assert_same_tokenizer(ours, ref, corpus):
  assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(ref.backend_tokenizer.to_str())
  for attr in ["bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_id", "pad_token_id",
               "all_special_tokens", "add_bos_token", "add_eos_token", "chat_template"]:
    assert getattr(ours, attr) == getattr(ref, attr), attr
  assert len(ours) == len(ref)
  for text in [*corpus, "\n".join(corpus)]:
    ids = ours(text)["input_ids"]
    assert ids == ref(text)["input_ids"], text
    assert ours.decode(ids) == ref.decode(ids), text
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text


def test_smollm2_tokenizer_matches_transformers_gguf(smollm2_dir, reference_tokenizer):
  from transformers import AutoTokenizer

  ours = AutoTokenizer.from_pretrained(smollm2_dir)
  assert_same_tokenizer(ours, reference_tokenizer, CORPUS)
  for text in CORPUS:
    if "<|im_" not in text:  # a cut-off special token decodes to the same text, but not the same tokens
      assert ours.decode(ours(text)["input_ids"]) == text
  assert ours.convert_ids_to_tokens(ours("a\n\n12")["input_ids"]) == ["a", "ĊĊ", "1", "2"]
  for kwargs in [{"tokenize": False}, {"tokenize": True, "return_dict": False}]:
    ours_chat = ours.apply_chat_template(CHAT, add_generation_prompt=True, **kwargs)
    assert ours_chat == reference_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, **kwargs)
  assert ours_chat[-4:] == ours("<|im_start|>assistant\n")["input_ids"]


def write_tokenizer_gguf(path, meta):
  """A tensor-less Llama GGUF holding the tokenizer metadata of `meta`."""
  writer = gguf.GGUFWriter(str(path), "llama")
  for key in ["block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv"]:
    writer.add_uint32(f"llama.{key}", meta[f"llama.{key}"])
  writer.add_float32("llama.attention.layer_norm_rms_epsilon", meta["llama.attention.layer_norm_rms_epsilon"])
  writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
  writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
  writer.add_token_list(meta["tokenizer.ggml.tokens"])
  writer.add_token_types(meta["tokenizer.ggml.token_type"])
  writer.add_token_merges(meta["tokenizer.ggml.merges"])
  writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
  writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
  writer.add_unk_token_id(meta["tokenizer.ggml.unknown_token_id"])
  writer.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
  writer.add_add_bos_token(meta["tokenizer.ggml.add_bos_token"])
  writer.add_chat_template(meta["tokenizer.chat_template"])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def smollm2_metadata():
  if not SMOLLM2_GGUF.is_file():
    pytest.skip(f"shared SmolLM2 GGUF not found at {SMOLLM2_GGUF}")
  return gguf_convert._metadata(gguf.GGUFReader(SMOLLM2_GGUF))


@pytest.mark.parametrize("pre,add_bos", [("llama-bpe", True), ("tekken", False)])
def test_other_pre_tokenizers_match_transformers_gguf(tmp_path, smollm2_metadata, pre, add_bos):
  """The Llama 3 and Tekken splits, a user-defined token and add_bos_token, on SmolLM2's vocabulary."""
  pytest.importorskip("torch")
  meta = {**smollm2_metadata, "tokenizer.ggml.pre": pre, "tokenizer.ggml.add_bos_token": add_bos,
          "tokenizer.ggml.tokens": [*smollm2_metadata["tokenizer.ggml.tokens"], "<think>"],
          "tokenizer.ggml.token_type": [*smollm2_metadata["tokenizer.ggml.token_type"], 4]}  # 4: USER_DEFINED
  write_tokenizer_gguf(tmp_path / f"{pre}.gguf", meta)
  ours = gguf_convert.build_tokenizer(tmp_path / f"{pre}.gguf", meta)
  assert_same_tokenizer(ours, transformers_gguf_tokenizer(tmp_path / f"{pre}.gguf"),
                        [*CORPUS, "<think>2+2</think> is 4"])
  assert (ours("hi")["input_ids"][0] == ours.bos_token_id) is add_bos
  assert ours.convert_ids_to_tokens(ours("a<think>b")["input_ids"])[-3:] == ["a", "<think>", "b"]


def test_unsupported_tokenizer_rejected(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_tiny_llama(path, np.random.default_rng(4))
  meta = gguf_convert._metadata(gguf.GGUFReader(path))
  with pytest.raises(ValueError, match=r"tiny\.gguf: GGUF has no tokenizer"):
    gguf_convert.build_tokenizer(path, meta)
  meta.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"]})
  with pytest.raises(ValueError, match=r"tiny\.gguf: GGUF tokenizer model 'llama' is not supported; only 'gpt2'"):
    gguf_convert.build_tokenizer(path, meta)
  result = run_cli("--gguf", str(path), "--out", str(tmp_path / "out"))  # the CLI: one line, nothing written
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == f"convert: error: {path}: GGUF has no tokenizer" \
      " (no tokenizer.ggml.model / tokenizer.ggml.tokens metadata)"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_convert_without_torch(tmp_path, smollm2_dir, reference_tokenizer):
  """The conversion (and loading its tokenizer) on a machine without torch: `import torch` raises ImportError."""
  script = textwrap.dedent(f"""
      import json, sys, time
      sys.modules["torch"] = None  # makes `import torch` raise ImportError, as if torch were not installed
      try:
        import torch
        sys.exit("torch is still importable")
      except ImportError:
        pass
      from sparkjax.models.gguf import convert_gguf
      from transformers import AutoTokenizer

      start = time.perf_counter()
      out = convert_gguf({str(SMOLLM2_GGUF)!r}, {str(tmp_path / "hf")!r}).out_dir
      seconds = time.perf_counter() - start
      tokenizer = AutoTokenizer.from_pretrained(out)
      ids = tokenizer("What is the capital of France?")["input_ids"]
      torch_modules = [m for m, v in sys.modules.items() if m.split(".")[0] == "torch" and v is not None]
      print(json.dumps({{"ids": ids, "seconds": seconds, "torch_modules": torch_modules}}))
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  print(f"conversion without torch: {report['seconds']:.1f}s")
  assert report["torch_modules"] == []
  expected = reference_tokenizer("What is the capital of France?")["input_ids"]
  assert report["ids"] == expected
  from transformers import AutoTokenizer

  assert AutoTokenizer.from_pretrained(tmp_path / "hf")("What is the capital of France?")["input_ids"] == expected
  for name in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja"]:
    assert (tmp_path / "hf" / name).read_text() == (smollm2_dir / name).read_text(), name
