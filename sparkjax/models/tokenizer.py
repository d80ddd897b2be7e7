"""Tokenizers and chat templates through `transformers`, plus the stop tokens a model's generation needs."""

from __future__ import annotations

import json
import os
from pathlib import Path


def load_tokenizer(path: str | os.PathLike):
  """A `transformers` tokenizer from a model/tokenizer directory or a bare `tokenizer.json` file."""
  from transformers import AutoTokenizer, PreTrainedTokenizerFast

  path = Path(path)
  if path.is_file() and path.name.endswith(".json"):
    return PreTrainedTokenizerFast(tokenizer_file=str(path))
  if not path.is_dir():
    raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
  if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                           "tokenizer.model")):
    raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
  # A generic fast tokenizer (e.g. the world's) saved beside a model's config.json: AutoTokenizer would build the
  # model type's own tokenizer class (Qwen2Tokenizer for qwen2), which re-creates the pre-tokenizer and encodes
  # differently, so such a directory is read back as the tokenizer it was saved as.
  cfg_file = path / "tokenizer_config.json"
  if cfg_file.is_file() and (path / "tokenizer.json").is_file():
    import json

    cls = json.loads(cfg_file.read_text()).get("tokenizer_class")
    if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
      return PreTrainedTokenizerFast.from_pretrained(str(path))
  return AutoTokenizer.from_pretrained(str(path))


def encode_prompt(tokenizer, text: str, chat: bool = False, system: str | None = None) -> list[int]:
  """Token ids of `text`, wrapped in the tokenizer's chat template (with the assistant turn opened) if `chat`."""
  if not chat:
    return tokenizer.encode(text, add_special_tokens=True)
  if not tokenizer.chat_template:
    raise ValueError("--chat was given but the tokenizer has no chat template")
  messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
  ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer transformers
    ids = ids["input_ids"]
  return list(ids)


def stop_tokens(tokenizer, model_dir: str | os.PathLike | None = None) -> tuple[int, ...]:
  """End-of-sequence ids: the tokenizer's eos plus those in the model's generation_config.json / config.json."""
  ids = set()
  if tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  for name in ("generation_config.json", "config.json"):
    f = Path(model_dir) / name if model_dir else None
    if f is not None and f.is_file():
      eos = json.loads(f.read_text()).get("eos_token_id")
      ids.update([eos] if isinstance(eos, int) else (eos or []))
  return tuple(sorted(ids))
