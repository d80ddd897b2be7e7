"""Entry point: `python -m sparkjax.main --config=configs/X.py[:args] [--config.a.b=v ...] --workdir=DIR`.

It only wires a config to its pipeline: the config is checked first (every field the pipeline declares in its
`check_config`, before any work), the workdir must be a writable directory, then the pipeline runs top to bottom.
User errors end with one line and exit code 2 (`sparkjax.cli`).
"""

from __future__ import annotations

from sparkjax import cli  # first: it quiets libraries before they are imported

if __name__ == "__main__":
  cli.reexec_with_huge_pages()  # before jax starts: XLA:CPU's temporaries on huge pages (cli.huge_pages_env)

import importlib
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from sparkjax.config_args import parse_flags

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "spark.py")
PIPELINES = {"arith_rl": "sparkjax.pipelines.arith_rl", "generate": "sparkjax.pipelines.generate",
             "hf_grpo": "sparkjax.pipelines.hf_grpo", "spark_prm": "sparkjax.pipelines.spark_prm",
             "spark_rl": "sparkjax.pipelines.spark_rl", "spark": "sparkjax.pipelines.spark",
             "coevolve": "sparkjax.pipelines.coevolve"}

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file (configs/*.py[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and logs.")
flags.mark_flags_as_required(["workdir"])


def check_workdir(workdir: str) -> Path:
  if "://" in workdir:
    # pathlib would turn gs://b/x into a local directory gs:/b/x and lose the run's outputs on the VM's disk.
    raise ValueError(f"--workdir={workdir}: remote (gs://) workdirs are not supported yet; give a local path or a "
                     "mounted bucket (gcsfuse), see launch_tpu/README.md")
  return cli.check_output_dir(workdir, "--workdir")


def run_pipeline(config, workdir: str):
  from sparkjax import config_check, distributed

  if config.get("pipeline") not in PIPELINES:
    raise ValueError(f"config pipeline={config.get('pipeline')!r} is not known; known: {', '.join(PIPELINES)}")
  pipeline = importlib.import_module(PIPELINES[config.pipeline])
  distributed.initialize_from_env()  # before the checks: the mesh is checked against the global device count
  checks = config_check.Checks(config)
  pipeline.check_config(checks)
  checks.done()
  path = check_workdir(workdir)
  pipeline.run(config, str(path))


def main(argv) -> int:
  del argv
  cli.quiet_logs()
  return cli.run("sparkjax.main", lambda: run_pipeline(flags.FLAGS.config, flags.FLAGS.workdir))


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
