"""Qwen2 GGUF import on small synthetic files written with the `gguf` package: every quantisation type the real
Qwen2.5 files use, parity with transformers' own GGUF reader, the tokenizer, and the bad-input errors."""

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from sparkjax.models import gguf as gguf_convert

REPO = Path(__file__).resolve().parents[1]
T = gguf.GGMLQuantizationType
# Rows of 256 so that every type's block (32 or 256 values) fits; 4 heads of 64, 2 kv heads.
HIDDEN, HEADS, KV_HEADS, FF, LAYERS = 256, 4, 2, 512, 2

BYTE_TOKENS = list(gguf_convert._bytes_to_unicode().values())
MERGES = ["Ġ t", "h e", "Ġt he", "ä ½", "ä½ ł"]  # the last two build 你 (e4 bd a0) from its bytes
SPECIAL = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<tool_call>", 4)]  # 3 CONTROL, 4 USER_DEF.
TOKENS = BYTE_TOKENS + [m.replace(" ", "") for m in MERGES] + [t for t, _ in SPECIAL]
TOKEN_TYPES = [1] * (len(TOKENS) - len(SPECIAL)) + [t for _, t in SPECIAL]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The tensor types of the real files, one per kind of tensor (norms and biases stay F32, as llama.cpp keeps them).
MIXED = {"token_embd": T.Q4_K, "output": T.Q6_K, "attn_q": T.Q5_0, "attn_k": T.Q8_0, "attn_v": T.Q6_K,
         "attn_output": T.Q4_K, "ffn_gate": T.Q5_0, "ffn_up": T.Q8_0, "ffn_down": T.Q6_K}


def random_blocks(rng, qtype, rows, cols):
  """Random (rows, bytes per row) blocks of a K-quant type, the f16 super-block scales set to small finite values
  (gguf cannot quantise to K-quants, and random bytes there would give inf/NaN)."""
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  data = rng.integers(0, 256, size=(rows, cols // block, type_size), dtype=np.uint8)
  scale = lambda v: np.frombuffer(np.float16(v).tobytes(), np.uint8)
  if qtype == T.Q4_K:  # d, dmin at bytes 0..3, then 12 bytes of 6-bit scales / mins, 128 bytes of nibbles
    data[..., 0:2], data[..., 2:4] = scale(0.004), scale(0.002)
  elif qtype == T.Q6_K:  # ql[128], qh[64], int8 scales[16], then d at bytes 208..209
    data[..., 208:210] = scale(0.0005)
  else:
    raise ValueError(qtype)
  return data.reshape(rows, -1)


def encode(rng, w, qtype):
  """`w` (float32, HF layout) as the GGUF payload of `qtype` (raw uint8 blocks, or the array itself for F32)."""
  if qtype == T.F32:
    return w
  if qtype in (T.Q4_K, T.Q6_K):
    return random_blocks(rng, qtype, *w.shape)
  return gguf.quants.quantize(w, qtype)


def write_tiny_qwen2(path, rng, types=None, tied=False, arch="qwen2"):
  """A 2-layer Qwen2 GGUF (q/k/v biases, byte-level BPE tokenizer with the qwen2 pre-tokenizer, ChatML template).

  `types` maps a tensor kind (MIXED's keys) to its type, F32 by default. Returns {gguf name: (payload, type)}."""
  types = types or {}
  vocab = len(TOKENS)
  shapes = {"token_embd": (vocab, HIDDEN), "output": (vocab, HIDDEN), "attn_q": (HIDDEN, HIDDEN),
            "attn_k": (HIDDEN // HEADS * KV_HEADS, HIDDEN), "attn_v": (HIDDEN // HEADS * KV_HEADS, HIDDEN),
            "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FF, HIDDEN), "ffn_up": (FF, HIDDEN), "ffn_down": (HIDDEN, FF)}
  tensors = {}

  def add(name, kind, shape, scale=0.05):
    qtype = types.get(kind, T.F32)
    w = (rng.normal(size=shape) * scale).astype(np.float32)
    tensors[name] = (encode(rng, w, qtype), qtype)

  add("token_embd.weight", "token_embd", shapes["token_embd"], 0.5)
  if not tied:
    add("output.weight", "output", shapes["output"])
  tensors["output_norm.weight"] = (1 + 0.1 * rng.normal(size=HIDDEN).astype(np.float32), T.F32)
  for i in range(LAYERS):
    for kind in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]:
      add(f"blk.{i}.{kind}.weight", kind, shapes[kind])
    for kind in ["attn_q", "attn_k", "attn_v"]:
      tensors[f"blk.{i}.{kind}.bias"] = ((0.3 * rng.normal(size=shapes[kind][0])).astype(np.float32), T.F32)
    for norm in ["attn_norm", "ffn_norm"]:
      tensors[f"blk.{i}.{norm}.weight"] = (1 + 0.1 * rng.normal(size=HIDDEN).astype(np.float32), T.F32)

  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(LAYERS)
  writer.add_context_length(512)
  writer.add_embedding_length(HIDDEN)
  writer.add_feed_forward_length(FF)
  writer.add_head_count(HEADS)
  writer.add_head_count_kv(KV_HEADS)
  writer.add_rope_freq_base(1000000.0)
  writer.add_layer_norm_rms_eps(1e-6)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("qwen2")
  writer.add_token_list(TOKENS)
  writer.add_token_types(TOKEN_TYPES)
  writer.add_token_merges(MERGES)
  writer.add_bos_token_id(TOKENS.index("<|endoftext|>"))
  writer.add_eos_token_id(TOKENS.index("<|im_end|>"))
  writer.add_pad_token_id(TOKENS.index("<|endoftext|>"))
  writer.add_add_bos_token(False)
  writer.add_chat_template(CHATML)
  for name, (payload, qtype) in tensors.items():
    writer.add_tensor(name, payload, raw_dtype=None if qtype == T.F32 else qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return tensors


def reference_dequantize(payload, qtype, shape):
  """Dequantisation that does not go through `gguf.quants` (what the converter uses): F32 as is, Q8_0 and Q5_0 from
  ggml's block layout here, the K-quants with transformers' own torch kernels."""
  if qtype == T.F32:
    return payload
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  blocks = payload.reshape(-1, type_size)
  d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
  if qtype == T.Q8_0:  # d, 32 x int8
    values = d * blocks[:, 2:].view(np.int8)
  elif qtype == T.Q5_0:  # d, 32 high bits (uint32), 16 bytes of low nibbles: value j and j + 16 share byte j
    high = blocks[:, 2:6].copy().view("<u4")
    lo = np.concatenate([blocks[:, 6:] & 0xF, blocks[:, 6:] >> 4], axis=1).astype(np.int32)
    hi = ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32)
    values = d * ((lo | hi << 4) - 16)
  else:
    torch = pytest.importorskip("torch")
    from transformers.integrations.gguf.dequant import dequantize

    values = dequantize(torch.from_numpy(np.ascontiguousarray(payload)).reshape(-1), int(qtype)).numpy()
  return np.asarray(values, np.float32).reshape(shape)


def hf_name(gguf_name):
  return gguf_convert._hf_name(gguf_name, "qwen2")


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_0, T.Q6_K, T.Q8_0, T.F32], ids=lambda t: t.name)
def test_each_quantisation_type(tmp_path, qtype):
  """Every weight matrix of one type: dequantised values equal an independent decoder's, in HF layout, q/k rows
  unpermuted (llama.cpp's Qwen2 converter does not permute them), biases kept."""
  rng = np.random.default_rng(int(qtype))
  tensors = write_tiny_qwen2(tmp_path / "tiny.gguf", rng, types=dict.fromkeys(MIXED, qtype))
  config, sd, _ = gguf_convert.read_gguf(tmp_path / "tiny.gguf")
  assert sd.keys() == {hf_name(n) for n in tensors}
  for name, (payload, t) in tensors.items():
    expected_shape = sd[hf_name(name)].shape
    np.testing.assert_array_equal(sd[hf_name(name)], reference_dequantize(payload, t, expected_shape), err_msg=name)
  assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (HIDDEN, HIDDEN)
  assert sd["model.layers.0.self_attn.k_proj.bias"].shape == (HIDDEN // HEADS * KV_HEADS,)
  assert (config["model_type"], config["architectures"], config["tie_word_embeddings"]) == (
      "qwen2", ["Qwen2ForCausalLM"], False)
  assert (config["rope_theta"], config["rms_norm_eps"], config["num_key_value_heads"]) == (1000000.0, 1e-6, 2)


def test_f32_weights_round_trip_exactly(tmp_path):
  """F32 tensors come back bit for bit: the values written, no permutation, no scaling."""
  tensors = write_tiny_qwen2(tmp_path / "tiny.gguf", np.random.default_rng(0), tied=True)
  config, sd, _ = gguf_convert.read_gguf(tmp_path / "tiny.gguf")
  for name, (payload, _) in tensors.items():
    np.testing.assert_array_equal(sd[hf_name(name)], payload, err_msg=name)
  assert config["tie_word_embeddings"] is True and "lm_head.weight" not in sd


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
  """The mixed-type tiny Qwen2 GGUF and its conversion."""
  tmp = tmp_path_factory.mktemp("mixed")
  write_tiny_qwen2(tmp / "mixed.gguf", np.random.default_rng(7), types=MIXED)
  gguf_convert.convert_gguf(tmp / "mixed.gguf", tmp / "hf")
  return tmp / "mixed.gguf", tmp / "hf"


def test_mixed_types_match_transformers_gguf_reader(mixed_model):
  """The converted directory against transformers loading the same GGUF with its own reader (dequantising with
  `gguf` too): the same weights bit for bit, and our JAX decoder's logits to float32 precision."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("accelerate")  # transformers needs it to load a GGUF
  import jax.numpy as jnp
  from transformers import AutoModelForCausalLM

  from sparkjax.models import hf, transformer

  gguf_path, hf_dir = mixed_model
  ref = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
  ours = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
  assert ref_sd.keys() == ours_sd.keys()
  for name in ref_sd:
    assert torch.equal(ref_sd[name], ours_sd[name]), name
  ids = [[TOKENS.index("<|im_start|>"), 5, 77, 260, 3, 200, 31, 9, 258, TOKENS.index("<|im_end|>")]]
  with torch.no_grad():
    expected = ref(torch.tensor(ids)).logits.numpy()
  params, cfg = hf.load_params(hf_dir)
  assert (cfg.model_type, cfg.qkv_bias, cfg.tie_embeddings) == ("qwen2", True, False)
  logits = np.asarray(transformer.forward(params, cfg, jnp.asarray(ids)))
  np.testing.assert_allclose(logits, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_tokenizer_matches_transformers_gguf(mixed_model):
  """The qwen2 pre-tokenizer (single digits), control and user-defined tokens, the chat template: the same ids as
  transformers' GGUF tokenizer; the one difference is Qwen2's NFC normalizer (see `build_tokenizer`)."""
  pytest.importorskip("torch")
  from transformers import AutoTokenizer

  gguf_path, hf_dir = mixed_model
  ours = AutoTokenizer.from_pretrained(hf_dir)
  ref = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
  ours_json, ref_json = json.loads(ours.backend_tokenizer.to_str()), json.loads(ref.backend_tokenizer.to_str())
  assert ours_json.pop("normalizer") == {"type": "NFC"} and ref_json.pop("normalizer") is None
  assert ours_json == ref_json
  assert json.loads((hf_dir / "tokenizer.json").read_text())["normalizer"] == {"type": "NFC"}
  corpus = ["the 2024 then 12345", "你好 你", "<|im_start|>user\nhi<|im_end|>", "<tool_call>x</tool_call>",
            "def f(x):\n    return x ** 2\n", "  \n\n  spaces ", ""]
  for text in corpus:
    assert ours(text)["input_ids"] == ref(text)["input_ids"], text
    assert ours.decode(ours(text)["input_ids"]) == text
  assert ours.convert_ids_to_tokens(ours(" the 123")["input_ids"]) == ["Ġthe", "Ġ", "1", "2", "3"]
  assert ours.convert_ids_to_tokens(ours("你")["input_ids"]) == ["ä½ł"]
  chat = [{"role": "user", "content": "What is 2+2?"}]
  assert ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
      ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
  assert (ours.eos_token, ours.pad_token, ours.bos_token) == ("<|im_end|>", "<|endoftext|>", "<|endoftext|>")
  # Not-NFC text: "e" + combining acute is composed first (as upstream Qwen2.5's tokenizer.json does)
  assert ours("e\u0301")["input_ids"] == ours("\u00e9")["input_ids"] != ref("e\u0301")["input_ids"]


def test_unsupported_architecture_names_supported(tmp_path):
  write_tiny_qwen2(tmp_path / "phi.gguf", np.random.default_rng(0), arch="phi3")
  with pytest.raises(ValueError, match=r"phi\.gguf: unsupported GGUF architecture 'phi3'; supported: llama, qwen2"):
    gguf_convert.read_gguf(tmp_path / "phi.gguf")


def set_type_id(path, tensor_name, type_id):
  """Overwrites the type id in `tensor_name`'s header entry (name, rank u32, dims u64 x rank, type u32, offset)."""
  data = bytearray(path.read_bytes())
  key = len(tensor_name).to_bytes(8, "little") + tensor_name.encode()
  at = data.index(key) + len(key)
  rank = int.from_bytes(data[at:at + 4], "little")
  at += 4 + 8 * rank
  data[at:at + 4] = type_id.to_bytes(4, "little")
  path.write_bytes(bytes(data))


def test_unknown_quantisation_type_names_tensor(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_tiny_qwen2(path, np.random.default_rng(0))
  set_type_id(path, "blk.1.attn_v.weight", 99)
  with pytest.raises(ValueError, match=r"tiny\.gguf: tensor 'blk\.1\.attn_v\.weight' has quantisation type id 99, "
                                       r"unknown to gguf [0-9.]+ \(supported: F32, F16, .*Q4_K.*\)"):
    gguf_convert.read_gguf(path)


def test_undecodable_quantisation_type_names_tensor(tmp_path):
  """A type the reader knows but `gguf` cannot dequantise (Q8_K: llama.cpp's intermediate type)."""
  path = tmp_path / "tiny.gguf"
  write_tiny_qwen2(path, np.random.default_rng(0), types={"ffn_up": T.Q4_K})
  set_type_id(path, "blk.0.ffn_up.weight", int(T.Q8_K))  # Q8_K blocks are larger: place it where the bytes suffice
  with pytest.raises(ValueError) as e:
    gguf_convert.read_gguf(path)
  assert "tensor 'blk.0.ffn_up.weight'" in str(e.value) and "Q8_K" in str(e.value), str(e.value)


def test_truncated_file_names_tensor_and_leaves_out_dir(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_tiny_qwen2(path, np.random.default_rng(0), types={"ffn_down": T.Q6_K})
  size = path.stat().st_size
  with open(path, "r+b") as f:
    f.truncate(size - 1000)
  with pytest.raises(ValueError, match=r"tiny\.gguf: truncated: tensor '.*' \(.*\) ends at byte [0-9,]+ but the file "
                                       rf"has {size - 1000:,} bytes"):
    gguf_convert.read_gguf(path)
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("keep")
  result = subprocess.run([sys.executable, "-m", "sparkjax.tools.convert", "--gguf", str(path), "--out", str(out),
                           "--overwrite"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and "truncated: tensor" in result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.gguf"]
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
  with open(path, "r+b") as f:  # cut inside the header (the tokenizer's arrays)
    f.truncate(2000)
  with pytest.raises(ValueError, match=r"tiny\.gguf is a truncated or damaged GGUF file \(2,000 bytes; the reader "
                                       r"stopped in its header: .*\)"):
    gguf_convert.read_gguf(path)


def test_yarn_rope_scaling_becomes_config(tmp_path):
  meta = {"qwen2.embedding_length": 256, "qwen2.attention.head_count": 4, "qwen2.feed_forward_length": 512,
          "qwen2.block_count": 2, "qwen2.attention.layer_norm_rms_epsilon": 1e-6, "qwen2.context_length": 131072,
          "qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
          "qwen2.rope.scaling.original_context_length": 32768}
  config = gguf_convert._hf_config(meta, {"model.embed_tokens.weight": (264, 256)}, None, Path("x.gguf"), "qwen2")
  assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
  del meta["qwen2.rope.scaling.original_context_length"]
  with pytest.raises(ValueError, match="rope scaling type 'yarn' is not supported"):
    gguf_convert._hf_config(meta, {"model.embed_tokens.weight": (264, 256)}, None, Path("x.gguf"), "qwen2")
