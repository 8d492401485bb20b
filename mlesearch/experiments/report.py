"""The report of a comparison: the results table, paired differences, and plots.

What lives here: `summarize` (means and standard deviations over seeds), `reference_row` and
`paired_differences` (per-seed differences against the best MLE row, with Student's t
intervals), `format_table` (aligned text or markdown, in the style of the paper's tables),
`tables` (all of them for one comparison), and `plot_histories` (a validation metric against
steps and wall-clock seconds, with matplotlib). What does not: running the comparison
(`cli.compare`) and the training loop (`train`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlesearch.experiments.tasks import Metric

COST_COLUMNS = (
    ("seconds", "seconds"),
    ("task_loss_evaluations", "task-loss evals"),
)


def summarize(
    runs: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[Metric],
    key: str = "test",
) -> dict[str, Any]:
    """Aggregates final test metrics over seeds: one row per method.

    Args:
      runs: results of `train.run`, each with ``method``, ``test``, ``seconds`` and
        ``task_loss_evaluations``.
      methods: the methods (or rows), in the order of the rows.
      metrics: the task's metrics, in the order of the columns.
      key: which test metrics of each run: ``"test"`` (as reported), ``"test_selected"`` or
        ``"test_last"``.

    Returns:
      ``{"columns": [{"name", "label", "lower_is_better"}], "rows": [{"method", "num_seeds",
      "cells": {name: {"mean", "std", "best"}}}]}``. ``std`` is the sample standard deviation
      over seeds (0 for one seed); ``best`` marks the best mean of each metric column (ties
      included). The cost columns (``seconds``, ``task_loss_evaluations``) are not marked.
    """
    columns = [
        {"name": m.name, "label": m.label or m.name, "lower_is_better": m.lower_is_better}
        for m in metrics
    ] + [{"name": name, "label": label, "lower_is_better": None} for name, label in COST_COLUMNS]
    rows = []
    for method in methods:
        method_runs = [r for r in runs if r["method"] == method]
        cells = {}
        for column in columns:
            name = column["name"]
            values = np.array(
                [
                    r[key][name] if column["lower_is_better"] is not None else r[name]
                    for r in method_runs
                ],
                dtype=np.float64,
            )
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            cells[name] = {"mean": float(np.mean(values)), "std": std, "best": False}
        rows.append({"method": method, "num_seeds": len(method_runs), "cells": cells})
    for column in columns:
        if column["lower_is_better"] is None:
            continue
        name = column["name"]
        means = [row["cells"][name]["mean"] for row in rows]
        finite = [m for m in means if math.isfinite(m)]
        if not finite:
            continue
        best = min(finite) if column["lower_is_better"] else max(finite)
        for row in rows:
            row["cells"][name]["best"] = math.isclose(
                row["cells"][name]["mean"], best, rel_tol=1e-9, abs_tol=1e-12
            )
    return {"columns": columns, "rows": rows}


def _format_cell(cell: Mapping[str, Any], name: str, num_seeds: int) -> str:
    mean, std = cell["mean"], cell["std"]
    if name == "task_loss_evaluations":
        text = f"{mean:.0f}"
    elif name == "seconds":
        text = f"{mean:.2f} ± {std:.2f}" if num_seeds > 1 else f"{mean:.2f}"
    else:
        text = f"{mean:.4f} ± {std:.4f}" if num_seeds > 1 else f"{mean:.4f}"
    return text


def format_difference(stats: Mapping[str, Any] | None) -> tuple[str, str]:
    """The paired-difference cells of a row: ``"+0.0123 [+0.0050, +0.0196]"`` and ``"4/5"``."""
    if stats is None:
        return "(reference)", ""
    interval = f" [{stats['low']:+.4f}, {stats['high']:+.4f}]" if stats["low"] is not None else ""
    return f"{stats['mean']:+.4f}{interval}", f"{stats['wins']}/{stats['num_seeds']}"


def format_table(
    summary: Mapping[str, Any],
    markdown: bool = False,
    paired: Mapping[str, Any] | None = None,
) -> str:
    """Renders `summarize`'s output as an aligned text table or as a markdown table.

    Args:
      summary: the output of `summarize`.
      markdown: a markdown table (best means in bold) instead of plain text (best means
        followed by ``*``).
      paired: the output of `paired_differences`; adds two columns for its first metric: the
        mean per-seed difference against the reference row with its confidence interval, and
        the seeds on which the row was better.

    Returns:
      The table, without a trailing newline.
    """
    columns = summary["columns"]
    header = ["method"] + [
        c["label"]
        + ("" if c["lower_is_better"] is None else (" ↓" if c["lower_is_better"] else " ↑"))
        for c in columns
    ]
    paired_metric = None
    if paired is not None:
        paired_metric = paired["metrics"][0]
        label = next(c["label"] for c in columns if c["name"] == paired_metric)
        confidence = round(100 * paired["confidence"])
        header += [f"Δ {label} vs {paired['reference']} [{confidence}% CI]", "better on"]
    body = []
    for row in summary["rows"]:
        cells = [row["method"]]
        for column in columns:
            cell = row["cells"][column["name"]]
            text = _format_cell(cell, column["name"], row["num_seeds"])
            if markdown:
                text = f"**{text}**" if cell["best"] else text
            elif column["lower_is_better"] is not None:
                text += " *" if cell["best"] else "  "  # keeps the digits aligned
            cells.append(text)
        if paired is not None:
            stats = paired["rows"].get(row["method"], {}).get(paired_metric)
            cells += format_difference(stats)
        body.append(cells)
    if markdown:
        # A "|" inside a cell (as in the label "|len - ref|") would end the cell.
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for cells in [header, None, *body]:
        if cells is None:
            lines.append("  ".join("-" * w for w in widths))
            continue
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines)


def reference_row(
    runs: Sequence[Mapping[str, Any]], methods: Sequence[str], metric: Metric, key: str = "test"
) -> str | None:
    """The best MLE row: the row of plain MLE fine-tuning with the best mean of ``metric``.

    Rows whose runs have ``base_method == "mle"`` and no post-hoc correction qualify. Choosing
    on the test split favours the reference, which makes the paired differences against it
    conservative.

    Args:
      runs: results of `train.run`.
      methods: the rows.
      metric: the metric that decides.
      key: which test metrics of each run (see `summarize`).

    Returns:
      The row's name, or None when no row qualifies.
    """
    best, best_mean = None, None
    for method in methods:
        method_runs = [r for r in runs if r["method"] == method]
        if not method_runs or any(
            r.get("base_method", r["method"]) != "mle" or r.get("post_hoc") for r in method_runs
        ):
            continue
        mean = float(np.mean([r[key][metric.name] for r in method_runs]))
        better = best_mean is None or (
            mean < best_mean if metric.lower_is_better else mean > best_mean
        )
        if better:
            best, best_mean = method, mean
    return best


def paired_differences(
    runs: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[Metric],
    reference: str,
    key: str = "test",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per-seed differences of every row against a reference row, with confidence intervals.

    For each row, metric and seed that both rows ran, ``d_s = row_s - reference_s``. Pairing by
    seed removes what the two runs share (the pretrained model, the data order of the seed), so
    the interval is of the difference itself: Student's t interval
    ``mean ± t_{(1+confidence)/2, k-1} · sd / sqrt(k)`` over the ``k`` seeds.

    Args:
      runs: results of `train.run`.
      methods: the rows.
      metrics: the metrics, the first of which the table shows.
      reference: the reference row (see `reference_row`).
      key: which test metrics of each run (see `summarize`).
      confidence: the level of the intervals, in (0, 1).

    Returns:
      ``{"reference", "key", "confidence", "metrics": [names], "rows": {row: {metric:
      {"mean", "low", "high", "wins", "num_seeds", "differences"}}}}``; ``wins`` counts the
      seeds where the row was better (larger for a higher-is-better metric); ``low`` and
      ``high`` are None for fewer than two seeds. The reference row is left out of ``rows``.
    """
    from scipy import stats as scipy_stats

    by_seed = {(r["method"], r["seed"]): r[key] for r in runs}
    rows: dict[str, Any] = {}
    for method in methods:
        if method == reference:
            continue
        seeds = sorted(
            seed for (name, seed) in by_seed if name == method and (reference, seed) in by_seed
        )
        if not seeds:
            continue
        rows[method] = {}
        for metric in metrics:
            differences = np.array(
                [
                    by_seed[(method, s)][metric.name] - by_seed[(reference, s)][metric.name]
                    for s in seeds
                ],
                dtype=np.float64,
            )
            mean = float(differences.mean())
            low = high = None
            if len(differences) > 1:
                spread = float(differences.std(ddof=1)) / math.sqrt(len(differences))
                half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(differences) - 1)) * spread
                low, high = mean - half, mean + half
            better = differences < 0 if metric.lower_is_better else differences > 0
            rows[method][metric.name] = {
                "mean": mean,
                "low": low,
                "high": high,
                "wins": int(better.sum()),
                "num_seeds": len(differences),
                "differences": differences.tolist(),
            }
    return {
        "reference": reference,
        "key": key,
        "confidence": confidence,
        "metrics": [m.name for m in metrics],
        "rows": rows,
    }


def plot_histories(
    runs: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    metric: Metric,
    directory: Path,
    title: str,
) -> list[Path]:
    """Plots a validation metric against steps and against wall-clock seconds.

    One line per method (the mean over seeds) with a shaded band from the minimum to the maximum
    over seeds. Uses matplotlib's Agg canvas, so no display is needed.

    Args:
      runs: results of `train.run`, each with a ``history``.
      methods: the methods to plot.
      metric: the metric, read from ``history[i]["valid"]``.
      directory: where to write the PNG files.
      title: the title of both plots.

    Returns:
      The paths of the two PNG files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    label = metric.label or metric.name
    paths = []
    for axis_name, axis_label in (("step", "fine-tuning step"), ("seconds", "wall-clock seconds")):
        figure = Figure(figsize=(6.0, 4.0), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for method in methods:
            histories = [r["history"] for r in runs if r["method"] == method and r["history"]]
            if not histories:
                continue
            length = min(len(h) for h in histories)
            x = np.mean([[e[axis_name] for e in h[:length]] for h in histories], axis=0)
            values = np.array([[e["valid"][metric.name] for e in h[:length]] for h in histories])
            (line,) = axes.plot(x, values.mean(axis=0), label=method)
            if len(histories) > 1:
                axes.fill_between(
                    x, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2
                )
        axes.set_xlabel(axis_label)
        better = "lower" if metric.lower_is_better else "higher"
        axes.set_ylabel(f"validation {label} ({better} is better)")
        shaded = (
            " (lines: mean over seeds; bands: min to max)"
            if len({r["seed"] for r in runs}) > 1
            else ""
        )
        axes.set_title(f"{title}{shaded}", fontsize="medium")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        path = directory / f"valid_{metric.name}_vs_{axis_name}.png"
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def tables(
    runs: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[Metric],
    primary: Metric,
) -> dict[str, Any]:
    """The comparison's tables, at the selected (``test``) and the last (``test_last``) parameters.

    Args:
      runs: results of `train.run`.
      methods: the rows.
      metrics: the task's metrics, in the order of the columns.
      primary: the metric that picks the reference row and whose paired differences are shown.

    Returns:
      ``{"summary", "paired", "table", "markdown"}`` and the same keys with ``_last``: the
      outputs of `summarize` and `paired_differences` (None without a reference row), and the
      text and markdown tables of `format_table`.
    """
    ordered_metrics = [primary, *(m for m in metrics if m is not primary)]
    result: dict[str, Any] = {}
    for suffix, key in (("", "test"), ("_last", "test_last")):
        summary = summarize(runs, methods, metrics, key=key)
        reference = reference_row(runs, methods, primary, key=key)
        paired = (
            None
            if reference is None
            else paired_differences(runs, methods, ordered_metrics, reference, key=key)
        )
        result[f"summary{suffix}"] = summary
        result[f"paired{suffix}"] = paired
        result[f"table{suffix}"] = format_table(summary, paired=paired)
        result[f"markdown{suffix}"] = format_table(summary, markdown=True, paired=paired)
    return result
