"""Entry point: `python -m sparkjax.main --config=configs/X.py[:args] [--config.a.b=v ...] --workdir=DIR`.

It only wires a config to its pipeline; each pipeline module reads top to bottom.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from sparkjax import distributed
from sparkjax.config_args import parse_flags

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "arith.py")
PIPELINES = {"arith_rl": "sparkjax.pipelines.arith_rl", "generate": "sparkjax.pipelines.generate",
             "hf_grpo": "sparkjax.pipelines.hf_grpo", "spark_prm": "sparkjax.pipelines.spark_prm"}

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file (configs/*.py[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and logs.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  config = flags.FLAGS.config
  logging.set_verbosity(logging.WARNING)  # library INFO chatter (orbax, jax backends) hides the progress bars
  if config.pipeline not in PIPELINES:
    sys.exit(f"config field pipeline={config.pipeline!r} is not known; known: {', '.join(PIPELINES)}")
  if "://" in flags.FLAGS.workdir:
    # pathlib would turn gs://b/x into a local directory gs:/b/x and lose the run's outputs on the VM's disk.
    sys.exit(f"error: --workdir={flags.FLAGS.workdir}: remote (gs://) workdirs are not supported yet; give a local "
             "path or a mounted bucket (gcsfuse), see launch_tpu/README.md")
  try:
    distributed.initialize_from_env()
    importlib.import_module(PIPELINES[config.pipeline]).run(config, flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Expected failures (bad input, non-finite loss) end with one clear line; set SPARKJAX_TRACEBACK=1 to debug.
    if os.environ.get("SPARKJAX_TRACEBACK"):
      raise
    sys.exit(f"error: {type(e).__name__}: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
