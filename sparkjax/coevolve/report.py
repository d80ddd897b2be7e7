"""The CoEvolve world experiment's report: the table, the paper's claims checked against the measurements, and the
curves (held-out policy accuracy and judge quality against iterations, one line per run).

Two choices, both because the measurements showed them necessary: the judge's discrimination is measured by
balanced accuracy ((P(Yes | right) + P(No | wrong)) / 2; a judge that says "No" to everything scores the share of
wrong responses as accuracy but 0.5 here), and besides each run's final evaluation the claims read the mean of its
last `LATE` evaluations, since held-out greedy accuracy moves by several points between neighbouring evaluations
of one run.

Regenerate results.md and curves.png from a results.json: python -m sparkjax.coevolve.report WORKDIR; combine
replicates (`coevolve.replicate`, one workdir each): python -m sparkjax.coevolve.report WORKDIR1 WORKDIR2 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LATE = 3  # evaluations averaged for the "late" figures


def final(report: dict, run: str) -> dict:
  r = report["runs"][run]
  return r["history"][str(report["iterations"])]


def late(report: dict, run: str) -> dict:
  """Means of every metric over the run's last LATE evaluations (iteration > 0)."""
  hist = report["runs"][run]["history"]
  evals = [hist[i] for i in sorted(hist, key=int) if int(i) > 0][-LATE:]
  return {k: sum(e[k] for e in evals) / len(evals) for k in evals[0]}


def start(report: dict) -> dict:
  s = report["sft"]
  return dict(greedy_accuracy=s["greedy_accuracy"], accuracy=s["accuracy"], **s["judge"])


def loop_balanced(loop: dict) -> float:
  """The test-time loop's first-round judge: 1 - (FPR + FNR) / 2 ("not Yes", unreadable included, is its No)."""
  return 1.0 - (loop["judge_false_positive_rate"] + loop["judge_false_negative_rate"]) / 2.0


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f}"


def table_markdown(report: dict) -> str:
  """Markdown: one row for the SFT model and one per run (final evaluation; late means in brackets); accuracies
  in %."""
  head = ("| model | judge updates | greedy | sampled | judge balanced acc | pointwise acc | pairwise acc | "
          "false-positive rate | reflection success | test-time loop: without -> with |")
  lines = [head, "|" + "---|" * 10]

  def row(name, h, lt, loop, updates):
    b = (lambda k: f"{_pct(h[k])} ({_pct(lt[k])})") if lt else (lambda k: _pct(h[k]))
    lines.append(f"| {name} | {updates} | {b('greedy_accuracy')} | {b('accuracy')} | {b('balanced_accuracy')} | "
                 f"{b('pointwise_accuracy')} | {b('pairwise_accuracy')} | {b('false_positive_rate')} | "
                 f"{b('reflection_success')} | {_pct(loop['accuracy_without'])} -> {_pct(loop['accuracy_with'])} |")

  row("SFT (start of every run)", start(report), None, report["sft"]["self_judge"], "—")
  for name, r in report["runs"].items():
    row(name, final(report, name), late(report, name), r["self_judge"], r["counters"]["judge_updates"])
  h = report["heldout"]
  lines.append("")
  lines.append(f"{h['problems']} held-out problems; sampled accuracy over {h['samples_per_problem']} samples each "
               f"(T = 1); judge metrics on {h['judge_samples_per_problem']} policy samples per problem, judged "
               f"greedily; {report['iterations']} policy iterations per run, one run each. Each cell: the final "
               f"evaluation (in brackets the mean of the last {LATE} evaluations). Balanced accuracy = "
               "(P(Yes | right) + P(No | wrong)) / 2, an unreadable verdict counting as neither (0.5 for a judge "
               "that gives one verdict to everything). The test-time loop: "
               "greedy answer, pointwise self-judge, reflect unless Yes, at most 2 rounds.")
  lines.append("")
  lines += [f"- {c['claim']}: **{c['verdict']}** — {c['evidence']}" for c in report.get("claims", [])]
  return "\n".join(lines)


def claims(report: dict) -> list[dict]:
  """The paper's three claims, each with a verdict (holds / fails) and the numbers behind it. A comparison holds
  only when the final evaluation and the late mean agree; when they disagree the verdict says so."""
  runs = report["runs"]
  out = []

  def verdict(final_holds: bool, late_holds: bool) -> str:
    return "holds" if final_holds and late_holds else "fails" if not final_holds and not late_holds else (
        "inconclusive (final and late means disagree)")

  if "coevolve" in runs and "policy_only" in runs:
    a, b = final(report, "coevolve"), final(report, "policy_only")
    la, lb = late(report, "coevolve"), late(report, "policy_only")
    out.append(dict(
        claim="co-evolving beats GRPO policy-only (paper 58.8 vs 55.2)",
        verdict=verdict(a["greedy_accuracy"] > b["greedy_accuracy"], la["greedy_accuracy"] > lb["greedy_accuracy"]),
        evidence=f"held-out greedy {_pct(a['greedy_accuracy'])} vs {_pct(b['greedy_accuracy'])} (late "
                 f"{_pct(la['greedy_accuracy'])} vs {_pct(lb['greedy_accuracy'])}), sampled {_pct(a['accuracy'])} "
                 f"vs {_pct(b['accuracy'])} (late {_pct(la['accuracy'])} vs {_pct(lb['accuracy'])})"))
  if "coevolve" in runs:
    s0, end, lt = start(report), final(report, "coevolve"), late(report, "coevolve")
    holds = lambda e: e["balanced_accuracy"] > s0["balanced_accuracy"] + 0.02
    ev = (f"balanced accuracy {_pct(s0['balanced_accuracy'])} after SFT -> {_pct(end['balanced_accuracy'])} after "
          f"CoEvolve (late {_pct(lt['balanced_accuracy'])}); pointwise accuracy {_pct(s0['pointwise_accuracy'])} -> "
          f"{_pct(end['pointwise_accuracy'])} with false-positive rate {_pct(s0['false_positive_rate'])} -> "
          f"{_pct(end['false_positive_rate'])}; pairwise {_pct(s0['pairwise_accuracy'])} -> "
          f"{_pct(end['pairwise_accuracy'])}")
    if "policy_only" in runs:
      c = final(report, "policy_only")
      ev += f"; policy-only (judge never trained) ends at balanced {_pct(c['balanced_accuracy'])}"
    out.append(dict(claim="the judge improves as the policy trains (balanced accuracy up by more than 2 points)",
                    verdict=verdict(holds(end), holds(lt)), evidence=ev))
  models = [("SFT", report["sft"]["self_judge"])] + [(n, r["self_judge"]) for n, r in runs.items()]
  models = [(n, m, loop_balanced(m)) for n, m in models if "judge_false_positive_rate" in m]  # rounds > 0
  if models:
    delta = lambda m: m["accuracy_with"] - m["accuracy_without"]
    weak = [(n, m, b) for n, m, b in models if b < 0.55]  # at chance: the verdict barely depends on the answer
    hurt = [n for n, m, _ in weak if delta(m) < 0]
    helped = [n for n, m, _ in weak if delta(m) > 0]
    verdict = ("holds" if hurt and not helped else "fails" if helped else
               "not testable (no weak judge made the loop reflect)" if all(m["reflections"] == 0 for _, m, _ in weak)
               else "fails")
    out.append(dict(claim="a weak judge hurts at test time (paper: base model 49.1 -> 39.9 with the loop)",
                    verdict=verdict,
                    evidence="loop effect (points), the first-round judge's balanced accuracy, reflections: "
                    + ", ".join(f"{n} {100 * delta(m):+.1f} ({_pct(b)}, {int(m['reflections'])})"
                                for n, m, b in models) + "; a weak judge is one below 55"))
  return out


CURVE_METRICS = (("greedy_accuracy", "policy: held-out greedy accuracy"),
                 ("accuracy", "policy: held-out sampled accuracy"),
                 ("balanced_accuracy", "judge: balanced accuracy"),
                 ("pairwise_accuracy", "judge: pairwise accuracy"),
                 ("false_positive_rate", "judge: false-positive rate"),
                 ("reflection_success", "reflection success"))


def plot(report: dict, path: Path) -> Path:
  """Six panels (CURVE_METRICS) against policy iterations, one line per run, starting at the SFT model. PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 3, figsize=(15, 8))
  s0 = start(report)
  for ax, (metric, label) in zip(axes.flat, CURVE_METRICS):
    for name, r in report["runs"].items():
      pts = [(0, s0[metric])] + sorted((int(i), v[metric]) for i, v in r["history"].items() if int(i) > 0)
      ax.plot([i for i, _ in pts], [100 * v for _, v in pts], "-" if r["judge"] else "--", marker=".", label=name)
    ax.set_xlabel("policy iteration")
    ax.set_ylabel(f"{label} (%)")
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=8)
  fig.suptitle("SPARK-CoEvolve in the world (one run each, same SFT start and policy rollouts)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return Path(path)


def regenerate(workdir: Path) -> str:
  """results.md, curves.png and the claims of WORKDIR/coevolve/results.json, rewritten by this code."""
  out = Path(workdir) / "coevolve"
  report = json.loads((out / "results.json").read_text())
  report["claims"] = claims(report)
  (out / "results.json").write_text(json.dumps(report, indent=2))
  md = table_markdown(report)
  (out / "results.md").write_text(md + "\n")
  plot(report, out / "curves.png")
  return md


def combine_markdown(reports: list[dict]) -> str:
  """Replicates (`coevolve.replicate`, one workdir each): per run, the final held-out greedy and sampled accuracy
  and the judge's balanced accuracy as mean ± sd (each replicate in brackets), in %."""
  import numpy as np

  names = [n for n in reports[0]["runs"] if all(n in r["runs"] for r in reports)]
  fmt = lambda v: f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0.0:.1f} (" + \
      " / ".join(f"{100 * x:.1f}" for x in v) + ")"
  lines = [f"| run ({len(reports)} replicates) | greedy % | sampled % | judge balanced acc % |", "|---|---|---|---|"]
  for n in names:
    f = [final(r, n) for r in reports]
    lines.append(f"| {n} | {fmt([x['greedy_accuracy'] for x in f])} | {fmt([x['accuracy'] for x in f])} | "
                 f"{fmt([x['balanced_accuracy'] for x in f])} |")
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit("usage: python -m sparkjax.coevolve.report WORKDIR [WORKDIR ...] (coevolve workdirs; several: "
             "replicates, combined)")
  if len(sys.argv) == 2:
    print(regenerate(Path(sys.argv[1])))
  else:
    print(combine_markdown([json.loads((Path(d) / "coevolve" / "results.json").read_text()) for d in sys.argv[1:]]))
