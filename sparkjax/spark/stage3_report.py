"""Stage III's report in the world: the table of every run, the paper's Stage III claims checked on it, and the
held-out accuracy curves as a picture.

A report is `pipelines.spark_rl.stage3`'s dict: sft (accuracy, greedy_accuracy), heldout (problems,
samples_per_problem), iterations, runs {name: dict(reward, design, prm_format, format_constraint, history
{str(iteration): dict(accuracy, greedy_accuracy)}, train {metric: dict(start, end)}, seconds)}.
"""

from __future__ import annotations

import math
from pathlib import Path

HACKS = ("hack_appended", "hack_extra_answer", "hack_boxed", "hack_step_collapse", "hack_step_inflation")
METRICS = (("greedy_accuracy", "greedy"), ("accuracy", "sampled"))
HACK_GROWTH = 0.01  # a format hack "appears" when its rate grows by at least this share of rollouts over a run


def final(report: dict, name: str, metric: str) -> float | None:
  run = report["runs"].get(name)
  if run is None:
    return None
  return run["history"][str(report["iterations"])][metric]


def standard_error(report: dict, metric: str, p: float) -> float:
  """Binomial standard error of a held-out accuracy p: over the problems (greedy) or all samples (sampled; an
  underestimate, samples of one problem are correlated)."""
  n = report["heldout"]["problems"] * (report["heldout"]["samples_per_problem"] if metric == "accuracy" else 1)
  return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def hack_rate(run: dict, when: str = "end") -> float | None:
  """Share of the rollouts that break the format in one of the known hacks (mean over that part of the run)."""
  parts = [run["train"].get(f"score_{h}", {}).get(when) for h in HACKS]
  return None if any(p is None for p in parts) else float(sum(parts))


def find(report: dict, fmt: str | None = None, design: str = "process_outcome", enforce: bool = True,
         reward: str | None = None) -> str | None:
  """The first run (in config order) with this reward (a baseline name) or PRM format, design and constraint."""
  for name, r in report["runs"].items():
    if reward is not None and r["reward"] == reward:
      return name
    if fmt is not None and r["prm_format"] == fmt and r["design"] == design and r["format_constraint"] == enforce:
      return name
  return None


def _claim(claim: str, metric: str, report: dict, a: str | None, b: str | None, relation: str = ">") -> dict:
  va = final(report, a, metric) if a else None
  vb = final(report, b, metric) if b else None
  holds = None if va is None or vb is None else (va > vb if relation == ">" else va >= vb)
  # Twice the standard error of the difference of two independent accuracies: a gap below it is within noise.
  noise = (2 * math.hypot(standard_error(report, metric, va), standard_error(report, metric, vb))
           if holds is not None else None)
  return dict(claim=f"{claim} ({metric})", holds=holds, measured={a or "missing": va, b or "missing": vb},
              within_noise=None if holds is None else abs(va - vb) < noise)


def claims(report: dict) -> list[dict]:
  """The paper's Stage III claims, each on held-out greedy and sampled accuracy after the last iteration:
    PRM-CoT reward >= RLVR (paper 47.4 vs 43.9);  PRM-CoT > PRM > ORM (41.1 / 34.0 / 33.5; all process-aware
    outcome); selective advantage best of the PRM-CoT reward designs (44.0 vs 41.1 for process-aware outcome);
    the format constraint stops the hack (hack rate over the last fifth of the run, constraint on vs off).
  """
  cot, prm, orm = find(report, "prm_cot"), find(report, "prm"), find(report, "orm")
  rlvr = find(report, reward="rlvr")
  out = []
  for metric, _ in METRICS:
    out += [_claim("PRM-CoT reward >= RLVR", metric, report, cot, rlvr, ">="),
            _claim("PRM-CoT > PRM", metric, report, cot, prm), _claim("PRM > ORM", metric, report, prm, orm)]
    designs = {r["design"]: n for n, r in report["runs"].items()
               if r["prm_format"] == "prm_cot" and r["format_constraint"]}
    if "selective_advantage" in designs and len(designs) > 1:
      sel = final(report, designs["selective_advantage"], metric)
      others = {d: final(report, n, metric) for d, n in designs.items() if d != "selective_advantage"}
      out.append(dict(claim=f"selective advantage best of the PRM-CoT designs ({metric})",
                      holds=all(sel > v for v in others.values()),
                      measured={"selective_advantage": sel} | others))
  off = next((n for n, r in report["runs"].items() if not r["format_constraint"]), None)
  if off is not None:
    on = find(report, report["runs"][off]["prm_format"], report["runs"][off]["design"])
    a, a0 = hack_rate(report["runs"][off]), hack_rate(report["runs"][off], "start")
    b = hack_rate(report["runs"][on]) if on else None
    # The claim needs a hack to stop: without the constraint the rate must grow (by a point or more) over the run.
    appeared = None if a is None or a0 is None else a >= a0 + HACK_GROWTH
    holds = None if b is None or not appeared else b < a
    out.append(dict(claim="the format constraint stops the hack (hack rate, last fifth of the run)",
                    holds=holds, hack_appeared_without=appeared,
                    measured={f"{off}": a, f"{off} (first fifth)": a0, f"{on}": b},
                    hacks_off={h: report["runs"][off]["train"][f"score_{h}"] for h in HACKS}))
  return out


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f}"


def table_markdown(report: dict) -> str:
  """The runs' table and the claims, in Markdown."""
  sft, it = report["sft"], report["iterations"]
  h = report["heldout"]
  lines = [f"Held-out accuracy (%) on {h['problems']} held-out problems (greedy; sampled: {h['samples_per_problem']} "
           f"samples each at the policy's T), after SFT and after {it} GRPO iterations; training diagnostics are "
           "means over the last fifth of the iterations (PRM agreement and false positives against the exact "
           "answer check).", "",
           "| run | greedy | sampled | train answer acc | PRM agrees | PRM false pos. | format valid | hack rate "
           "| steps | s |", "|---|---|---|---|---|---|---|---|---|---|",
           f"| SFT policy | {_pct(sft['greedy_accuracy'])} | {_pct(sft['accuracy'])} | | | | | | | "
           f"{sft.get('seconds', 0):.0f} |"]
  se = standard_error(report, "greedy_accuracy", sft["greedy_accuracy"])
  for name, r in report["runs"].items():
    t = lambda k: r["train"].get(k, {}).get("end")
    steps = t("score_num_steps")
    lines.append(f"| {name} | {_pct(final(report, name, 'greedy_accuracy'))} | {_pct(final(report, name, 'accuracy'))} "
                 f"| {_pct(t('score_answer_correct'))} | {_pct(t('score_prm_agrees'))} | "
                 f"{_pct(t('score_prm_false_positive'))} | {_pct(t('score_format_valid'))} | {_pct(hack_rate(r))} | "
                 f"{'—' if steps is None else f'{steps:.2f}'} | {r['seconds']:.0f} |")
  lines += ["", f"One run per row. Standard error of a greedy accuracy near the SFT policy's: {100 * se:.1f} points.",
            "", "| claim | holds | measured |", "|---|---|---|"]
  for c in claims(report) if "claims" not in report else report["claims"]:
    if c.get("hack_appeared_without") is False:
      lines.append(f"| {c['claim']} | not testable: no format hack appeared without the constraint | "
                   + ", ".join(f"{k} {_pct(v)}" for k, v in c["measured"].items()) + " |")
      continue
    if c["holds"] is None:  # a run the claim compares was not part of this experiment
      continue
    shown = ", ".join(f"{k} {_pct(v)}" for k, v in c["measured"].items())
    noise = " (within noise)" if c.get("within_noise") else ""
    lines.append(f"| {c['claim']} | {c['holds']}{noise} | {shown} |")
  errors = errors_markdown(report)
  return "\n".join(lines + (["", errors] if errors else []))


def errors_markdown(report: dict) -> str:
  """The error probe (`spark.error_probe`): per run, the policy's sampled held-out responses by kind before and
  after RL, with the share of each kind its PRM accepted (as correct)."""
  from sparkjax.spark.error_probe import KINDS

  runs = {n: r for n, r in report["runs"].items() if r.get("errors")}
  if not runs:
    return ""
  lines = ["Held-out responses by first error (count, and in brackets the % the run's PRM accepted as correct), of "
           "the SFT policy (before) and after RL:", "",
           "| run | when | " + " | ".join(KINDS) + " |", "|---|---|" + "---|" * len(KINDS)]
  for name, r in runs.items():
    for when in ("before", "after"):
      cells = []
      for k in KINDS:
        e = r["errors"][when].get(k)
        if e is None:
          cells.append("0")
        elif e["accepted"] is None:
          cells.append(str(e["n"]))
        else:
          cells.append(f"{e['n']} ({100 * e['accepted'] / max(e['n'], 1):.0f}%)")
      lines.append(f"| {name} | {when} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_accuracy(report: dict, path: Path) -> Path:
  """Held-out greedy and sampled accuracy against GRPO iterations, one line per run. Writes a PNG."""
  import matplotlib
  matplotlib.use("Agg")  # files only: no display on a TPU host or in CI
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for ax, (metric, label) in zip(axes, METRICS):
    for name, r in report["runs"].items():
      pts = sorted((int(i), v[metric]) for i, v in r["history"].items())
      pts = [(0, report["sft"][metric])] + [p for p in pts if p[0] > 0]
      style = "--" if not r["format_constraint"] else ":" if r["reward"] == "random" else "-"
      ax.plot([i for i, _ in pts], [100 * v for _, v in pts], style, marker=".", label=name)
    ax.set_xlabel("GRPO iteration")
    ax.set_ylabel(f"held-out {label} accuracy (%)")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, loc="best")
  fig.suptitle("Stage III in the world: held-out accuracy by reward (one run each, same SFT start and budget)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return Path(path)


# ---- replicates --------------------------------------------------------------------------------------------------


def combine(reports: list[dict]) -> dict:
  """Per run, the final held-out accuracies and training diagnostics of several replicates (`stage3.replicate`,
  one workdir each) as lists, with their mean and spread (sample standard deviation; 0 for one replicate)."""
  names = [n for n in reports[0]["runs"] if all(n in r["runs"] for r in reports)]
  out = {}
  for name in names:
    row = {}
    for metric, _ in METRICS:
      row[metric] = [final(r, name, metric) for r in reports]
    row["prm_false_positive"] = [r["runs"][name]["train"].get("score_prm_false_positive", {}).get("end")
                                 for r in reports]
    row["hack_rate"] = [hack_rate(r["runs"][name]) for r in reports]
    out[name] = {k: dict(values=v, mean=_mean(v), sd=_sd(v)) for k, v in row.items()}
  return dict(replicates=len(reports), sft=[r["sft"] for r in reports], runs=out)


def _mean(v):
  v = [x for x in v if x is not None]
  return sum(v) / len(v) if v else None


def _sd(v):
  v = [x for x in v if x is not None]
  if len(v) < 2:
    return 0.0 if v else None
  m = sum(v) / len(v)
  return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def combined_markdown(c: dict) -> str:
  """The replicates' table: mean +- sd (and each value) of held-out greedy and sampled accuracy per run."""
  fmt = lambda d: "—" if d["mean"] is None else (f"{100 * d['mean']:.1f} ± {100 * d['sd']:.1f} ("
                                                  + " / ".join(_pct(x) for x in d["values"]) + ")")
  lines = [f"Held-out accuracy (%) after RL, mean ± sd over {c['replicates']} replicates (each value in brackets); "
           "same SFT policy, other RL prompts and sampling keys per replicate.", "",
           "| run | greedy | sampled | PRM false pos. (end) |", "|---|---|---|---|"]
  for name, r in c["runs"].items():
    lines.append(f"| {name} | {fmt(r['greedy_accuracy'])} | {fmt(r['accuracy'])} | {fmt(r['prm_false_positive'])} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  """`python -m sparkjax.spark.stage3_report WORKDIR...`: the replicates' table of several Stage III workdirs."""
  import argparse
  import json
  import sys

  ap = argparse.ArgumentParser(prog="python -m sparkjax.spark.stage3_report", description=main.__doc__)
  ap.add_argument("workdirs", nargs="+", help="workdirs of spark_rl / spark runs (each holds stage3/results.json)")
  ap.add_argument("--json", default="", help="also write the combined figures here")
  args = ap.parse_args(argv)
  reports = []
  for d in args.workdirs:
    path = Path(d) / "stage3" / "results.json"
    if not path.is_file():
      print(f"stage3_report: error: {path} does not exist (not a finished Stage III workdir)", file=sys.stderr)
      return 2
    reports.append(json.loads(path.read_text()))
  c = combine(reports)
  print(combined_markdown(c))
  if args.json:
    Path(args.json).write_text(json.dumps(c, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
