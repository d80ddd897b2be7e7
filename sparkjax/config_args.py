"""Config plumbing: typed `:key=value` config arguments and readable errors for bad `--config.*` overrides."""

from __future__ import annotations

import re
import sys

import ml_collections
from absl import flags


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument like `size=tiny,steps=20,runlocal` into a ConfigDict typed by `defaults`.

  A bare name sets a bool to True. Unknown keys and values that do not convert to the default's type are errors.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is not known; known: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
      continue
    try:
      if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(value)
        out[key] = value.lower() in ("true", "1")
      elif default is None:
        out[key] = value
      else:
        out[key] = type(default)(value)
    except ValueError:
      raise ValueError(f"config argument {key}={value!r}: expected a {type(default).__name__}") from None
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns a misspelt `--config.x.y` override into a one-line error naming the key."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"FATAL flags error: {e}")
  except (AttributeError, KeyError) as e:
    msg = str(e)
    found = re.search(r"'([A-Za-z_][\w]*)", msg)
    key = found.group(1) if found else msg
    hint = re.search(r'Did you mean "[^"]+" instead of "[^"]+"\?', msg)
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    culprit = next((b for b in bad if b.rsplit(".", 1)[-1] == key or f".{key}." in b + "."), ", ".join(bad))
    sys.exit(f"FATAL config error: {culprit} names no field of the config (unknown key {key!r})"
             + (f". {hint.group(0)}" if hint else ""))
