"""JSON-lines files with errors that name the file, the line and the field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), limit: int | None = None) -> list[dict]:
  """Records of a .jsonl file (one JSON object a line; blank lines skipped), each checked for `required` fields."""
  return list(iter_jsonl(path, required, limit))


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = (), limit: int | None = None) -> Iterator[dict]:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file {str(path)!r} does not exist")
  n = 0
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      if limit is not None and n >= limit:
        return
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
      missing = [k for k in required if k not in rec]
      if missing:
        raise ValueError(f"{path}:{lineno}: missing field(s) {', '.join(map(repr, missing))} "
                         f"(has {', '.join(map(repr, rec))})")
      n += 1
      yield rec


def write_jsonl_atomic(path: str | os.PathLike, records) -> Path:
  """Writes records to `path` through a temporary file so a crash never leaves a truncated file behind."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
  return path
