"""The SPARK-PRM Stage I/II report in the world: verifier diagnostics, the paper's claims checked against the
measured table, the markdown table and the F1-against-N picture.

Shapes: a Stage-I `table` is the dict `pipelines.spark_prm.stage1` returns (rows "single", "step_consensus@N",
"outcome_consensus@N", "meta_critique_*", "reference_guided", each {"step", "outcome", "processbench"}); `stage2` maps
"variant:format" to a PRM's ProcessBench result. F1 values are as the scorers return them: step / outcome F1 in
[0, 1], ProcessBench F1 in percent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from sparkjax.spark import verdicts as vd

_ANALYSIS_RE = re.compile(r"^\s*Step\s*(\d+)\s*:\s*(.*?)\s*(?:,|\.\s*The step)")


def _first_error(steps: Sequence[bool] | None) -> int | None:
  if steps is None:
    return None
  return next((i for i, ok in enumerate(steps) if not ok), -1)


def sampled_diagnostics(items, samples, num_steps_of=lambda it: len(it.steps)) -> dict:
  """How good one sampled verification is and how much the samples disagree.

  Args:
    items: N_items solutions with `.steps` (texts) and `.gold_verdicts` (exact labels, True = correct).
    samples: per item, G (text, `verdicts.Verification`) samples.

  Returns:
    dict(step_accuracy = mean over the G sample positions of `verdicts.step_f1(...)["accuracy"]` (propagated
    verdicts against exact labels; an unreadable sample's steps count as wrong), step_accuracy_per_sample [G],
    disagreement = fraction of items with >= 2 readable samples whose first-error indices are not all equal,
    copy_accuracy = fraction of analyses whose restated student step ("Step k: <step> , ...") equals the student's
    step k exactly (a world-format diagnostic: a verifier that cannot look the step up restates the correct step),
    copy_accuracy_wrong_steps = the same over steps whose exact label is incorrect).
  """
  g_max = max((len(r) for r in samples), default=0)
  per_sample = []
  for g in range(g_max):
    pred = []
    for it, row in zip(items, samples):
      v = row[g][1] if g < len(row) else None
      ok = v is not None and v.steps is not None and len(v.steps) == num_steps_of(it)
      pred.append(vd.propagate(v.steps) if ok else None)
    per_sample.append(vd.step_f1(pred, [list(it.gold_verdicts) for it in items])["accuracy"])
  readable_items = disagree = 0
  copied = analyses = copied_wrong = wrong = 0
  for it, row in zip(items, samples):
    firsts = {_first_error(vd.propagate(v.steps)) for _, v in row
              if v.steps is not None and len(v.steps) == num_steps_of(it)}
    n_read = sum(v.steps is not None and len(v.steps) == num_steps_of(it) for _, v in row)
    if n_read >= 2:
      readable_items += 1
      disagree += len(firsts) > 1
    for text, _ in row:
      for line in text.splitlines():
        m = _ANALYSIS_RE.match(line)
        if not m or not 1 <= int(m.group(1)) <= len(it.steps):
          continue
        k = int(m.group(1)) - 1
        same = " ".join(m.group(2).split()) == " ".join(it.steps[k].split())
        analyses += 1
        copied += same
        if not it.gold_verdicts[k]:
          wrong += 1
          copied_wrong += same
  mean = lambda xs: sum(xs) / len(xs) if xs else None
  return dict(step_accuracy=mean(per_sample), step_accuracy_per_sample=per_sample,
              disagreement=disagree / readable_items if readable_items else None,
              copy_accuracy=copied / analyses if analyses else None,
              copy_accuracy_wrong_steps=copied_wrong / wrong if wrong else None)


def _pb(table: dict, row: str):
  return table.get(row, {}).get("processbench", {}).get("f1")


def _claim(name: str, a_label: str, a, b_label: str, b, relation: str = ">") -> dict:
  """One paper claim as measured: holds = a {relation} b, None when a figure is missing."""
  holds = None if a is None or b is None else (a > b if relation == ">" else a >= b)
  return dict(claim=f"{a_label} {relation} {b_label}", holds=holds, measured={a_label: a, b_label: b})


def claims(table: dict, stage2: dict, n_list: Sequence[int]) -> list[dict]:
  """The paper's Stage I/II claims, each checked on the measured figures (ProcessBench F1 unless named).

    consensus > single verification: step_consensus@max(N) vs single;
    step-level > outcome-level consensus: step_consensus@max(N) vs outcome_consensus@max(N);
    step-consistency PRM >= reference-guided PRM, in each format both were trained in (prm, then prm_cot and disc
      when the run has them; the paper's claim is for its generative PRMs);
    PRM-CoT vs PRM on step-consistency data (the paper finds PRM-CoT ahead).
  """
  n = max(n_list)
  f1 = lambda run: stage2.get(run, {}).get("f1")
  out = [_claim("consensus_beats_single", f"step_consensus@{n}", _pb(table, f"step_consensus@{n}"), "single",
                _pb(table, "single")),
         _claim("step_beats_outcome", f"step_consensus@{n}", _pb(table, f"step_consensus@{n}"),
                f"outcome_consensus@{n}", _pb(table, f"outcome_consensus@{n}")),
         _claim("step_prm_vs_reference_prm", "step_consistency:prm", f1("step_consistency:prm"),
                "reference_guided:prm", f1("reference_guided:prm"), ">="),
         _claim("prm_cot_beats_prm", "step_consistency:prm_cot", f1("step_consistency:prm_cot"),
                "step_consistency:prm", f1("step_consistency:prm"))]
  names = ["consensus_beats_single", "step_beats_outcome", "step_prm_vs_reference_prm", "prm_cot_beats_prm"]
  for fmt in ("prm_cot", "disc"):
    if f"step_consistency:{fmt}" in stage2 and f"reference_guided:{fmt}" in stage2:
      out.append(_claim(f"step_{fmt}_vs_reference_{fmt}", f"step_consistency:{fmt}", f1(f"step_consistency:{fmt}"),
                        f"reference_guided:{fmt}", f1(f"reference_guided:{fmt}"), ">="))
      names.append(f"step_{fmt}_vs_reference_{fmt}")
  for c, name in zip(out, names):
    c["name"] = name
  return out


def headline(table: dict, stage2: dict, n_list: Sequence[int]) -> dict:
  """The figures a reader looks for first, under self-explanatory keys (None where the run did not produce one)."""
  n = max(n_list)
  f1 = lambda run: stage2.get(run, {}).get("f1")
  return {
      "verifier_sampled_step_accuracy": table.get("sampled", {}).get("step_accuracy"),
      "verifier_sample_disagreement": table.get("sampled", {}).get("disagreement"),
      "verifier_copy_accuracy": table.get("sampled", {}).get("copy_accuracy"),
      "single_verification_processbench_f1": _pb(table, "single"),
      f"step_consensus@{n}_processbench_f1": _pb(table, f"step_consensus@{n}"),
      f"outcome_consensus@{n}_processbench_f1": _pb(table, f"outcome_consensus@{n}"),
      "reference_guided_processbench_f1": _pb(table, "reference_guided"),
      "exact_label_prm_processbench_f1": f1("gold:prm"),
      "exact_label_disc_prm_processbench_f1": f1("gold:disc"),
      "exact_label_prm_cot_processbench_f1": f1("gold:prm_cot"),
      "step_consistency_prm_processbench_f1": f1("step_consistency:prm"),
      "step_consistency_prm_cot_processbench_f1": f1("step_consistency:prm_cot"),
      "reference_guided_prm_processbench_f1": f1("reference_guided:prm"),
  }


def num(x, digits: int = 1) -> str:
  """A metric for printing; "-" when undefined (e.g. ProcessBench F1 of a set without correct solutions)."""
  return "-" if x is None else f"{x:.{digits}f}"


def table_markdown(table: dict, stage2: dict, claim_list: Sequence[dict] = ()) -> str:
  """The Stage I rows, the Stage II rows and the claims, as markdown."""
  lines = []
  if "sampled" in table:
    s = table["sampled"]
    lines += [f"Verifier, one sampled verification: step accuracy {num(s['step_accuracy'], 3)}, samples disagree "
              f"on the first error for {num(s['disagreement'], 3)} of solutions, restated steps copied exactly "
              f"{num(s['copy_accuracy'], 3)} ({num(s['copy_accuracy_wrong_steps'], 3)} on incorrect steps).", ""]
  lines += ["| verifier labels (Stage I) | step F1 | outcome F1 | ProcessBench F1 | acc_err | acc_cor |",
            "|---|---|---|---|---|---|"]
  for k, v in table.items():
    if isinstance(v, dict) and "step" in v:
      pb = v["processbench"]
      lines.append(f"| {k} | {num(v['step']['f1'], 3)} | {num(v['outcome']['f1'], 3)} | {num(pb['f1'])} | "
                   f"{num(pb['acc_err'])} | {num(pb['acc_cor'])} |")
  lines += ["", "| PRM (Stage II): data variant : format | ProcessBench F1 | acc_err | acc_cor | outcome F1 | "
            "steps |", "|---|---|---|---|---|---|"]
  for k, v in stage2.items():
    lines.append(f"| {k} | {num(v.get('f1'))} | {num(v.get('acc_err'))} | {num(v.get('acc_cor'))} | "
                 f"{num(v['outcome']['f1'], 3)} | {v.get('train_steps', '-')} |")
  if claim_list:
    lines += ["", "| paper claim | holds in the world | measured |", "|---|---|---|"]
    for c in claim_list:
      verdict = {True: "yes", False: "no", None: "not measured"}[c["holds"]]
      lines.append(f"| {c['claim']} | {verdict} | " + ", ".join(f"{k} {num(v)}" for k, v in c["measured"].items())
                   + " |")
  return "\n".join(lines)


def plot_f1_vs_n(table: dict, n_list: Sequence[int], path: Path) -> Path:
  """F1 against the number of sampled verifications N for step- and outcome-level consensus (ProcessBench F1 and
  step F1), with single, meta-critique and reference-guided verification as horizontal lines. Writes a PNG."""
  import matplotlib
  matplotlib.use("Agg")  # files only: no display on a TPU host or in CI
  import matplotlib.pyplot as plt

  ns = sorted(n_list)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label, scale in ((axes[0], "processbench", "ProcessBench F1 (%)", 1.0),
                                (axes[1], "step", "step F1 (incorrect step = positive, %)", 100.0)):
    get = lambda row: (table[row][key]["f1"] * scale if table.get(row) and table[row][key]["f1"] is not None
                       else None)
    for level, marker in (("step_consensus", "o"), ("outcome_consensus", "s")):
      pts = [(n, get(f"{level}@{n}")) for n in ns]
      pts = [(n, y) for n, y in pts if y is not None]
      if pts:
        ax.plot([n for n, _ in pts], [y for _, y in pts], marker=marker, label=level.replace("_", " "))
    for row, style in (("single", ":"), ("meta_critique_base", "--"), ("meta_critique_outcome", "-."),
                       ("reference_guided", (0, (1, 3)))):
      y = get(row)
      if y is not None:
        ax.axhline(y, linestyle=style, color="grey", label=row.replace("_", " "))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N sampled verifications")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle("Stage I in the world: verifier labels against exact labels")
  fig.tight_layout()
  path = Path(path)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
