"""One Stage II PRM of a `spark_prm` workdir, trained again and scored on the selection set (never the held-out one).

    python -m sparkjax.tools.prm_selection --config=configs/spark_prm.py --workdir=/tmp/spark_prm \
        --run=gold:prm_cot --seed=1 [--config.stage2.format_batch.prm_cot=128 ...] [--out=run.json]

The selection set (`sparkjax/pipelines/prm_selection.py`) is where the config's Stage II choices are made: the
generator's solutions to training-split problems Stage I never drew, so neither the PRMs' training data nor the
held-out ProcessBench the table reports is looked at. The run trains as the pipeline's Stage II does
(`spark_prm.run_plan`, `spark_prm.train_run`) from the workdir's generator and Stage-I file, with the config's fields as
overridden and `--seed` as the data order (the pipeline uses `config.seed`). It prints and writes (`--out`) the
ProcessBench F1, acc_err / acc_cor, outcome F1 and seconds. In the workdir it only adds the selection set's solutions
(WORKDIR/selection_items-m<M>.json), so runs on one workdir score the same set.
"""

from __future__ import annotations

from sparkjax import cli  # first: it quiets libraries before they are imported

if __name__ == "__main__":
  cli.reexec_with_huge_pages()

import json
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from sparkjax.config_args import parse_flags

config_flags.DEFINE_config_file("config", None, "The spark_prm config the workdir was run with (configs/*.py[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "A spark_prm workdir whose Stage I is complete.")
flags.DEFINE_string("run", None, "The Stage II run, 'variant:format' (e.g. gold:prm_cot).")
flags.DEFINE_integer("seed", None, "Data-order seed of the PRM's training (default: config.seed, as the pipeline).")
flags.DEFINE_integer("m", 12, "Generator solutions per selection problem.")
flags.DEFINE_integer("problems", 0, "Use only the first this many selection problems (0 = all).")
flags.DEFINE_string("out", None, "Also write the result as JSON here.")
flags.mark_flags_as_required(["config", "workdir", "run"])


def main(argv) -> int:
  del argv
  cli.quiet_logs()
  f = flags.FLAGS

  def go():
    if f.config.get("pipeline") != "spark_prm":
      raise ValueError(f"--config: pipeline={f.config.get('pipeline')!r}; this tool reads spark_prm workdirs")
    if f.m < 1 or f.problems < 0:
      raise ValueError(f"--m={f.m} --problems={f.problems}: expected m >= 1 and problems >= 0")
    from sparkjax import config_check
    from sparkjax.pipelines import prm_selection, spark_prm

    checks = config_check.Checks(f.config)
    spark_prm.check_config(checks)
    checks.done()
    out = prm_selection.run(f.config, Path(f.workdir), f.run, f.seed, f.m, f.problems)
    print(json.dumps(out))
    if f.out:
      Path(f.out).write_text(json.dumps(out, indent=2) + "\n")

  return cli.run("sparkjax.tools.prm_selection", go)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
