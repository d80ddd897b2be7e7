"""Convert a Llama- or Qwen2-family GGUF file into a Hugging Face model directory.

    python -m sparkjax.tools.convert \\
        --gguf ../shared/models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out /tmp/smollm2-135m-instruct [--overwrite]

--overwrite replaces the files an earlier conversion wrote into --out and nothing else.
"""

from __future__ import annotations

from sparkjax import cli  # first: it quiets libraries before they are imported

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sparkjax.tools.convert", description=__doc__.splitlines()[0])
  parser.add_argument("--gguf", required=True, help="input .gguf file")
  parser.add_argument("--out", required=True, help="output Hugging Face directory")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the files an earlier conversion wrote into --out (other files are left alone)")
  args = parser.parse_args(argv)

  def convert():
    from sparkjax.models.gguf import convert_gguf

    start = time.perf_counter()
    result = convert_gguf(args.gguf, args.out, overwrite=args.overwrite)
    print(f"wrote {result.out_dir}: {', '.join(result.files)}")
    print(f"{result.num_tensors} tensors, {result.num_params:,} parameters, {time.perf_counter() - start:.1f}s")

  return cli.run("convert", convert)


if __name__ == "__main__":
  sys.exit(main())
