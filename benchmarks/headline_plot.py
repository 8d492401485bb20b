"""MGS against every other row of one or more comparisons: paired differences with intervals.

Reads the ``results.json`` that ``mlesearch compare TASK --seeds N --workdir DIR`` writes and draws,
for each task, one point per row: the mean over seeds of MGS's advantage over that row on the
test split (oriented so that right of 0 is MGS better, whichever direction the metric has), with
the 95% paired t interval. An interval that crosses 0 is no evidence either way.

    python benchmarks/headline_plot.py DIR_TEXT/results.json DIR_DIGITS_LT/results.json \
        --out benchmarks/results/experiments/headline.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mlesearch.experiments import report
from mlesearch.experiments.tasks import Metric

# One colour per kind of row (`cli.row_group`).
COLOURS = {
    "pretrained": "tab:gray",
    "mle": "tab:blue",
    "control": "tab:green",
    "rl": "tab:red",
    "search": "tab:purple",
    "mgs": "tab:orange",
}
LABELS = {
    "pretrained": "not fine-tuned",
    "mle": "MLE",
    "control": "control (MLE on another loss)",
    "rl": "policy gradient (PG, MRT, GRPO)",
    "search": "search without selection or guide",
    "mgs": "MGS variant",
}


def advantages(results: dict[str, Any], focus: str = "mgs") -> tuple[Metric, list[dict[str, Any]]]:
    """MGS's paired advantage over each other row of one comparison.

    Args:
      results: a ``results.json`` of ``mlesearch compare``.
      focus: the row under test.

    Returns:
      The primary metric, and one ``{"row", "group", "mean", "low", "high", "wins", "seeds"}``
      per row, where ``mean``, ``low`` and ``high`` are focus minus row, signed so that
      positive is better for the focus row.
    """
    name = results["headline"]["metric"]
    column = next(c for c in results["summary"]["columns"] if c["name"] == name)
    metric = Metric(name, column["lower_is_better"], column["label"])
    sign = -1.0 if metric.lower_is_better else 1.0
    runs = [r for r in results["runs"] if r["method"] in results["methods"]]
    entries = []
    for row in results["methods"]:
        if row == focus:
            continue
        paired = report.paired_differences(runs, [focus], [metric], row)
        stats = paired["rows"][focus][name]
        low, high = sorted((sign * stats["low"], sign * stats["high"]))
        entries.append(
            {
                "row": row,
                "group": results["groups"][row],
                "mean": sign * stats["mean"],
                "low": low,
                "high": high,
                "wins": stats["wins"],
                "seeds": stats["num_seeds"],
            }
        )
    return metric, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json of a comparison")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for path in args.results:
        results = json.loads(path.read_text())
        metric, entries = advantages(results)
        panels.append((results["config"]["task"], len(results["seeds"]), metric, entries))
    height = 1.2 + 0.28 * max(len(entries) for *_, entries in panels)
    figure = Figure(figsize=(5.2 * len(panels), height), layout="constrained")
    FigureCanvasAgg(figure)
    seen = set()
    for index, (task, seeds, metric, entries) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for y, entry in enumerate(reversed(entries)):
            group = entry["group"]
            label = LABELS[group] if group not in seen else None
            seen.add(group)
            axes.errorbar(
                entry["mean"],
                y,
                xerr=[[entry["mean"] - entry["low"]], [entry["high"] - entry["mean"]]],
                fmt="o",
                color=COLOURS[group],
                capsize=3,
                label=label,
            )
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_yticks(range(len(entries)), [e["row"] for e in reversed(entries)])
        axes.set_xlabel(f"MGS's advantage in test {metric.label} (> 0: MGS better)")
        axes.set_title(f"{task}, {seeds} seeds: MGS better → / ← worse", fontsize="medium")
        axes.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=3, fontsize="small")
    figure.savefig(args.out, dpi=120)
    print(f"Wrote {args.out}")
    for task, seeds, metric, entries in panels:
        print(
            f"\n{task} ({seeds} seeds), MGS's advantage in {metric.label}, 95% paired t interval:"
        )
        for entry in entries:
            print(
                f"  {entry['row']:<20} {entry['mean']:+.4f} [{entry['low']:+.4f}, "
                f"{entry['high']:+.4f}]  MGS better on {entry['wins']}/{entry['seeds']}"
            )


if __name__ == "__main__":
    main()
