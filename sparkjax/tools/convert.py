"""Convert a Llama-family GGUF file into a Hugging Face model directory.

    python -m sparkjax.tools.convert \\
        --gguf ../shared/models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out /tmp/smollm2-135m-instruct [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
import time

from sparkjax.models.gguf import convert_gguf


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sparkjax.tools.convert", description=__doc__.splitlines()[0])
  parser.add_argument("--gguf", required=True, help="input .gguf file")
  parser.add_argument("--out", required=True, help="output Hugging Face directory")
  parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
  args = parser.parse_args(argv)

  start = time.perf_counter()
  try:
    result = convert_gguf(args.gguf, args.out, overwrite=args.overwrite)
  except (OSError, ValueError, ImportError) as e:  # bad input or setup: one line, no traceback
    print(f"convert: error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {result.out_dir}: {', '.join(result.files)}")
  print(f"{result.num_tensors} tensors, {result.num_params:,} parameters, {time.perf_counter() - start:.1f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
