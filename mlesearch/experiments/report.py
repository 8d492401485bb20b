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
      included). The cost columns (``seconds``, ``task_loss_evaluations``, with ``"cost":
      True``) and metrics without a direction (``lower_is_better`` None) are not marked.
    """
    columns = [
        {"name": m.name, "label": m.label or m.name, "lower_is_better": m.lower_is_better}
        for m in metrics
    ] + [
        {"name": name, "label": label, "lower_is_better": None, "cost": True}
        for name, label in COST_COLUMNS
    ]
    rows = []
    for method in methods:
        method_runs = [r for r in runs if r["method"] == method]
        cells = {}
        for column in columns:
            name = column["name"]
            values = np.array(
                [r[name] if column.get("cost") else r[key][name] for r in method_runs],
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


def _aligned(header: Sequence[str], body: Sequence[Sequence[str]], right: bool) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned or left."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 or not right else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()
        for cells in [header, ["-" * w for w in widths], *body]
    ]
    return "\n".join(lines)


def format_table(
    summary: Mapping[str, Any],
    markdown: bool = False,
    paired: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
) -> str:
    """Renders `summarize`'s output as an aligned text table or as a markdown table.

    Args:
      summary: the output of `summarize`.
      markdown: a markdown table (best means in bold) instead of plain text (best means
        followed by ``*``).
      paired: the output of `paired_differences`; adds two columns for its first metric: the
        mean per-seed difference against the reference row with its confidence interval, and
        the seeds on which the row was better.
      only: the names of the columns to show, in the summary's order (None: every column), so
        that a terminal's table fits 100 characters.

    Returns:
      The table, without a trailing newline.
    """
    columns = [c for c in summary["columns"] if only is None or c["name"] in only]
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
            elif column["lower_is_better"] is not None or not column.get("cost"):
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
    return _aligned(header, body, right=True)


def validation_score(run: Mapping[str, Any], metric: str, key: str = "test") -> float:
    """A run's validation score of ``metric``, for choosing between rows without the test split.

    Args:
      run: a result of `train.run`.
      metric: a metric of the task's ``evaluate``.
      key: ``"test"`` or ``"test_selected"`` score the checkpoint that the run selected;
        ``"test_last"`` its last parameters.

    Returns:
      The validation value of ``metric`` at the evaluation of the selected step (or the last
      one), after the run's post-hoc correction when that recorded its validation score
      (``post_hoc[...]["valid_<metric>"]``). Runs without a history (hand-made ones) fall back
      to ``run[key][metric]``.
    """
    which = "last" if key == "test_last" else "selected"
    info = (run.get("post_hoc") or {}).get(which) or {}
    if f"valid_{metric}" in info:
        return float(info[f"valid_{metric}"])
    history = run.get("history") or []
    if not history:
        return float(run[key][metric])
    if which == "last":
        return float(history[-1]["valid"][metric])
    entry = next(h for h in history if h["step"] == run["selected_step"])
    return float(entry["valid"][metric])


def best_row(
    runs: Sequence[Mapping[str, Any]],
    rows: Sequence[str],
    metric: Metric,
    key: str = "test",
) -> str | None:
    """Of ``rows``, the one whose runs have the best mean validation score of ``metric``.

    Args:
      runs: results of `train.run`.
      rows: the candidate rows.
      metric: the metric that decides (see `validation_score`).
      key: which parameters of each run (see `validation_score`).

    Returns:
      The row's name (the first of equals), or None when no row has a run.
    """
    best, best_mean = None, None
    for row in rows:
        row_runs = [r for r in runs if r["method"] == row]
        if not row_runs:
            continue
        mean = float(np.mean([validation_score(r, metric.name, key) for r in row_runs]))
        if not math.isfinite(mean):
            continue
        if best_mean is None or (mean < best_mean if metric.lower_is_better else mean > best_mean):
            best, best_mean = row, mean
    return best


def reference_row(
    runs: Sequence[Mapping[str, Any]], methods: Sequence[str], metric: Metric, key: str = "test"
) -> str | None:
    """The best MLE row: the row of plain MLE fine-tuning with the best validation score.

    Rows whose runs have ``base_method == "mle"``, no post-hoc correction and no surrogate
    other than the MLE loss qualify; the best mean validation score of ``metric`` decides (see
    `best_row`), so the test split chooses nothing.

    Args:
      runs: results of `train.run`.
      methods: the rows.
      metric: the metric that decides.
      key: which parameters of each run (see `validation_score`).

    Returns:
      The row's name, or None when no row qualifies.
    """
    plain = [
        method
        for method in methods
        if (method_runs := [r for r in runs if r["method"] == method])
        and all(
            r.get("base_method", r["method"]) == "mle"
            and not r.get("post_hoc")
            and not r.get("surrogate")
            for r in method_runs
        )
    ]
    return best_row(runs, plain, metric, key)


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


# The groups of rows that the headline compares the focus row (MGS) with, and their labels.
HEADLINE_GROUPS = (
    ("mle", "best plain MLE row"),
    ("control", "best control (MLE with another loss or a post-hoc correction)"),
    ("rl", "best policy-gradient baseline (PG, MRT, GRPO)"),
    ("search", "best search without MGS's weighting (random search, uniform weights, ES)"),
    ("any", "best other row"),
)


def verdict(stats: Mapping[str, Any] | None, lower_is_better: bool) -> str:
    """``"better"``, ``"worse"`` or ``"no clear difference"``: what a paired interval says.

    Args:
      stats: one metric's entry of `paired_differences` (focus row minus comparator), or None.
      lower_is_better: the metric's direction.

    Returns:
      ``"better"`` when the interval excludes 0 on the focus row's side, ``"worse"`` when it
      excludes 0 on the other, else ``"no clear difference"`` (also with fewer than two seeds).
    """
    if stats is None or stats["low"] is None:
        return "no clear difference"
    low, high = stats["low"], stats["high"]
    if lower_is_better:
        low, high = -high, -low
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no clear difference"


def headline(
    runs: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    groups: Mapping[str, str],
    focus: str,
    primary: Metric,
    extra: Sequence[Metric] = (),
    key: str = "test",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The focus row (MGS) against the best row of each group, with paired intervals.

    For each group of `HEADLINE_GROUPS` (``"any"``: every row but the focus row), the row with
    the best mean validation score of ``primary`` is chosen (`best_row`: the test split chooses
    nothing), and the per-seed differences focus minus that row on the test split are reduced
    to a mean with Student's t interval (`paired_differences`).

    Args:
      runs: results of `train.run`.
      methods: the rows.
      groups: each row's group: ``"pretrained"``, ``"mle"``, ``"control"``, ``"rl"``,
        ``"search"`` or ``"mgs"``.
      focus: the row under test.
      primary: the metric compared.
      extra: metrics shown beside it (means only), such as the length of continuations.
      key: which parameters of each run (see `summarize`).
      confidence: the level of the intervals.

    Returns:
      ``{"focus", "metric", "key", "confidence", "rows": [{"group", "label", "row",
      "difference" (the stats of `paired_differences` or None), "verdict"}], "means": {row:
      {metric: mean}}, "table", "markdown"}``; groups without a row are left out.
    """
    entries = []
    for group, label in HEADLINE_GROUPS:
        candidates = [
            m for m in methods if m != focus and (groups.get(m) == group or group == "any")
        ]
        row = best_row(runs, candidates, primary, key)
        if row is None:
            continue
        paired = paired_differences(runs, [focus], [primary], row, key=key, confidence=confidence)
        stats = paired["rows"].get(focus, {}).get(primary.name)
        entries.append(
            {
                "group": group,
                "label": label,
                "row": row,
                "difference": stats,
                "verdict": verdict(stats, primary.lower_is_better),
            }
        )
    shown = [focus, *dict.fromkeys(e["row"] for e in entries)]
    means = {}
    for row in shown:
        row_runs = [r for r in runs if r["method"] == row]
        means[row] = {
            m.name: float(np.mean([r[key][m.name] for r in row_runs])) if row_runs else math.nan
            for m in (primary, *extra)
        }
    result = {
        "focus": focus,
        "metric": primary.name,
        "key": key,
        "confidence": confidence,
        "rows": entries,
        "means": means,
    }
    result["table"] = format_headline(result, primary, extra)
    result["markdown"] = format_headline(result, primary, extra, markdown=True)
    return result


def format_headline(
    result: Mapping[str, Any], primary: Metric, extra: Sequence[Metric] = (), markdown: bool = False
) -> str:
    """Renders `headline`'s output: one line per comparator, then the focus row's means.

    Args:
      result: the output of `headline`.
      primary: the metric compared.
      extra: the metrics shown beside it.
      markdown: a markdown table instead of aligned text.

    Returns:
      The table, without a trailing newline.
    """
    focus = result["focus"]
    label = primary.label or primary.name
    arrow = "↓" if primary.lower_is_better else "↑"
    confidence = round(100 * result["confidence"])
    header = [
        "compared with",
        "row",
        f"{label} {arrow}",
        *((m.label or m.name) for m in extra),
        f"Δ {focus} − row [{confidence}% CI]",
        f"{focus} better on",
        "verdict",
    ]
    means = result["means"]

    def metric_cells(row: str) -> list[str]:
        values = [means[row][m.name] for m in (primary, *extra)]
        return [f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}" for v in values]

    body = [["(the row under test)", focus, *metric_cells(focus), "", "", ""]]
    for entry in result["rows"]:
        difference, wins = format_difference(entry["difference"])
        body.append(
            [
                entry["group"],
                entry["row"],
                *metric_cells(entry["row"]),
                difference,
                wins,
                entry["verdict"],
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |"]
        lines.append(
            "|" + "|".join([":---", ":---"] + ["---:"] * (len(header) - 3) + [":---"]) + "|"
        )
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    # The terminal's version fits 100 characters: the kind of each row beside its name.
    header = ["row (kind)", *header[2:-3], f"Δ [{confidence}% CI]", "wins", "verdict"]
    body = [[f"{cells[1]} ({cells[0]})" if cells[-1] else cells[1], *cells[2:]] for cells in body]
    return _aligned(header, body, right=False)


def plot_histories(
    runs: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    metric: Metric,
    directory: Path,
    title: str,
) -> list[Path]:
    """Plots a validation metric against steps and against wall-clock seconds.

    One line per method (the mean over seeds) with a shaded band from the minimum to the maximum
    over seeds; each method has its own colour and line style, and the legend sits beside the
    axes, off the data. Rows with a post-hoc correction are left out: their validation history
    is that of the uncorrected model, and the correction applies to their test scores only (the
    figure says which rows were left out). Uses matplotlib's Agg canvas, so no display is
    needed.

    Args:
      runs: results of `train.run`, each with a ``history``.
      methods: the methods to plot.
      metric: the metric, read from ``history[i]["valid"]``.
      directory: where to write the PNG files.
      title: the title of both plots.

    Returns:
      The paths of the two PNG files written.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    post_hoc = [m for m in methods if any(r["method"] == m and r.get("post_hoc") for r in runs)]
    drawn = [m for m in methods if m not in post_hoc]
    colours = colormaps["tab10"].colors
    styles = ("-", "--", ":", "-.")
    label = metric.label or metric.name
    paths = []
    for axis_name, axis_label in (("step", "fine-tuning step"), ("seconds", "wall-clock seconds")):
        figure = Figure(figsize=(8.0, 4.0), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for index, method in enumerate(drawn):
            histories = [r["history"] for r in runs if r["method"] == method and r["history"]]
            if not histories:
                continue
            length = min(len(h) for h in histories)
            x = np.mean([[e[axis_name] for e in h[:length]] for h in histories], axis=0)
            values = np.array([[e["valid"][metric.name] for e in h[:length]] for h in histories])
            colour = colours[index % len(colours)]
            style = styles[(index // len(colours)) % len(styles)]
            axes.plot(x, values.mean(axis=0), label=method, color=colour, linestyle=style)
            if len(histories) > 1:
                axes.fill_between(
                    x, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.12
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
        if post_hoc:  # an entry without a line, at the end of the legend
            note = "not drawn (post-hoc\ncorrection, test only):\n" + "\n".join(post_hoc)
            axes.plot([], [], linestyle="none", label=note)
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        path = directory / f"valid_{metric.name}_vs_{axis_name}.png"
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def terminal_metrics(metrics: Sequence[Metric], primary: Metric) -> list[Metric]:
    """The metrics a terminal shows: the primary one and those without a direction (lengths).

    Keeps the terminal's tables within 100 characters; results.md and results.json have every
    metric.
    """
    return [m for m in metrics if m.name == primary.name or m.lower_is_better is None]


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
        terminal = [m.name for m in terminal_metrics(metrics, primary)]
        result[f"table{suffix}"] = format_table(summary, paired=paired, only=terminal)
        result[f"markdown{suffix}"] = format_table(summary, markdown=True, paired=paired)
    return result
