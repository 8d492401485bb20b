"""The ``mlesearch`` command: run one method, or compare several over seeds, on an experiment.

What lives here: ``main`` (the console script), config loading with command-line overrides
(`load_config`, `apply_overrides`), and the comparison (`compare`), which runs every method over
seeds from one shared MLE checkpoint, prints a results table in the style of the paper's, and
writes ``results.json``, ``results.md`` and plots of the task's primary metric against steps and
against wall-clock time. What does not: the training loop (`train`), the tasks, and the tables
and plots themselves (`report`).

Usage::

    mlesearch run digits --config.method=mgs --config.mgs.num_candidates=8
    mlesearch run configs/digits.py --workdir /tmp/digits
    mlesearch compare digits --methods mle,mgs,pg,mrt --seeds 3
    mlesearch                        # the default comparison on text completion

``CONFIG`` is a task name (``digits`` loads ``mlesearch.experiments.configs.digits``) or the path
of a config file with a ``get_config()`` function. Every field can be set with
``--config.<field>=<value>`` (or ``--config.<field> <value>``); values are read as the type of the
field they replace.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import itertools
import json
import shlex
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from mlesearch.experiments import report, train
from mlesearch.experiments.configs.common import METHODS
from mlesearch.experiments.tasks import Metric

DEFAULT_TASK = "text_completion"
DEFAULT_METHODS = ("mle", "mgs", "pg", "mrt")
DEFAULT_SEEDS = 3
# Seeds of the bare ``mlesearch`` command: every row at 3 seeds took 16 minutes on two CPU cores,
# over the 15 we allow the main job; ``--seeds 5`` gives the full table.
MAIN_JOB_SEEDS = 2
# Rows of the bare command: MGS, the selection control (uniform weights), MLE as it is and given
# MGS's time, and the two policy-gradient baselines. Every row of the config over 2 seeds would
# take about 17 minutes on two CPU cores (estimated from the 5-seed run's per-row times, not
# timed); MRT, random search and MGS on the paper's summed-NLL task loss are in `compare
# text_completion --seeds 5`. These 7 rows took 7.5 and 8.4 minutes in two CI runs.
MAIN_JOB_METHODS = ("pretrained", "mle", "mle_long", "mgs", "mgs_uniform", "pg", "grpo")
RUNS_DIR = "mlesearch_runs"
GRID = "grid"
# Metrics that the headline shows beside the primary one, where the task has them.
HEADLINE_EXTRA_METRICS = {"avg_len": "length", "avg_len_ref": "ref. length"}
CONFIG_PREFIX = "--config."
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class ConfigError(ValueError):
    """A config that cannot be loaded, or a command-line override that does not apply."""


# ---------------------------------------------------------------------------------------------
# Configs and overrides.


def available_configs() -> list[str]:
    """The names of the configs in ``mlesearch.experiments.configs``, e.g. ``["digits"]``."""
    import mlesearch.experiments.configs

    return sorted(
        path.stem
        for directory in mlesearch.experiments.configs.__path__
        for path in Path(directory).glob("*.py")
        if path.stem not in ("__init__", "common")
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads an experiment config from a task name or a config file.

    Args:
      spec: a config name (``"digits"`` loads ``mlesearch.experiments.configs.digits``) or the
        path of a Python file that defines ``get_config()``.

    Returns:
      The ConfigDict that ``get_config()`` returns.

    Raises:
      ConfigError: if the file or config does not exist or has no ``get_config``.
    """
    return _config_from_module(_config_module(spec), spec)


def _config_from_module(module: Any, spec: str) -> ml_collections.ConfigDict:
    """``module.get_config()``, checked (see `load_config`)."""
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"The config {spec!r} defines no get_config() function.")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() of {spec!r} must return an ml_collections.ConfigDict.")
    return config


def _config_module(spec: str) -> Any:
    """The module of a config name or config file (see `load_config`)."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"No config file {spec!r}.")
        module_spec = importlib.util.spec_from_file_location(f"_mlesearch_config_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"Cannot load {spec!r} as a Python module.")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        names = available_configs()
        if spec not in names:
            raise ConfigError(
                f"Unknown config {spec!r}: give a config file (path/to/config.py) or one of "
                f"{', '.join(names)}."
            )
        module = importlib.import_module(f"mlesearch.experiments.configs.{spec}")
    return module


def _parse_bool(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} is a bool: give true or false, not {text!r}.")


def parse_value(text: str, current: Any, name: str) -> Any:
    """Reads ``text`` as a value of the type of ``current``, the field's present value.

    Args:
      text: the value as written on the command line.
      current: the value it replaces; its type decides how ``text`` is read (bool, int,
        float, str; tuples, lists and None fields take a Python literal).
      name: the field's name, for error messages.

    Returns:
      The value.

    Raises:
      ConfigError: if ``text`` cannot be read as that type.
    """
    if isinstance(current, bool):
        return _parse_bool(text, name)
    try:
        if isinstance(current, int):
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(text) if text.strip().lstrip("+-").isdigit() else int(number)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        kind = "an int" if isinstance(current, int) else "a float"
        raise ConfigError(f"{name} is {kind}, got {text!r}.") from None
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ConfigError(
            f"{name} is a {type(current).__name__}: give a Python literal, not {text!r}."
        ) from None
    if isinstance(current, tuple | list):
        if not isinstance(value, tuple | list):
            raise ConfigError(f"{name} is a {type(current).__name__}, got {text!r}.")
        return type(current)(value)
    return value


def apply_override(config: ml_collections.ConfigDict, field: str, text: str) -> None:
    """Sets ``config.<field>`` from its command-line text.

    Args:
      config: the config, changed in place.
      field: a dotted field name such as ``"mgs.num_candidates"``.
      text: the value as written on the command line.

    Raises:
      ConfigError: for a field that does not exist, a group of fields, or a value of the wrong
        type.
    """
    parts = field.split(".")
    node = config
    for depth, part in enumerate(parts):
        name = "config." + ".".join(parts[: depth + 1])
        parent = "config" + "".join("." + p for p in parts[:depth])
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"Unknown field {name}: {parent} is a value, not a group of fields.")
        if part not in node:
            fields = ", ".join(sorted(node.keys()))
            raise ConfigError(f"Unknown field {name}. The fields of {parent} are: {fields}.")
        if depth < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    name = "config." + field
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"{name} is a group of fields; set one of them: "
            f"{', '.join(f'{name}.{k}' for k in sorted(current.keys()))}."
        )
    try:
        node[parts[-1]] = parse_value(text, current, name)
    except TypeError as error:
        raise ConfigError(f"Cannot set {name} to {text!r}: {error}") from None


def split_overrides(arguments: Sequence[str]) -> list[tuple[str, str]]:
    """Reads ``--config.a.b=v`` and ``--config.a.b v`` arguments into ``(field, text)`` pairs.

    Args:
      arguments: the command-line arguments that are overrides.

    Returns:
      ``[("a.b", "v"), ...]`` in order.

    Raises:
      ConfigError: for an argument that is not an override, or one without a value.
    """
    overrides = []
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith(CONFIG_PREFIX) or len(argument) == len(CONFIG_PREFIX):
            raise ConfigError(
                f"Unrecognised argument {argument!r}; config fields are set with "
                "--config.<field>=<value>."
            )
        body = argument[len(CONFIG_PREFIX) :]
        if "=" in body:
            field, text = body.split("=", 1)
        elif index + 1 < len(arguments):
            field, text = body, arguments[index + 1]
            index += 1
        else:
            raise ConfigError(f"{argument} needs a value: {argument}=<value>.")
        overrides.append((field, text))
        index += 1
    return overrides


def apply_overrides(
    config: ml_collections.ConfigDict, arguments: Sequence[str]
) -> ml_collections.ConfigDict:
    """Applies command-line overrides to a config.

    Args:
      config: the config, changed in place.
      arguments: ``--config.<field>=<value>`` arguments.

    Returns:
      ``config``.

    Raises:
      ConfigError: as `split_overrides` and `apply_override`.
    """
    for field, text in split_overrides(arguments):
        apply_override(config, field, text)
    return config


def parse_methods(text: str, rows: Sequence[str] = ()) -> list[str]:
    """Reads a comma-separated list of methods or row names.

    Args:
      text: e.g. ``"mle,mgs"``.
      rows: the row names of the config (``config.rows``), accepted besides ``METHODS``.

    Returns:
      The names, in order.

    Raises:
      ConfigError: for an unknown or repeated name, or none.
    """
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS and m not in rows]
    if unknown or not methods:
        rows_text = f"; or a row of the config: {', '.join(rows)}" if rows else ""
        raise ConfigError(
            f"Unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(METHODS)}{rows_text}."
        )
    if len(set(methods)) != len(methods):
        raise ConfigError(f"A method is listed twice in {text!r}.")
    return methods


def _merge_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str
) -> None:
    for field, value in overrides.items():
        if field not in config:
            raise ConfigError(
                f"{where} sets config.{field}, which does not exist; the fields there are: "
                f"{', '.join(sorted(config.keys()))}."
            )
        if isinstance(config[field], ml_collections.ConfigDict):
            if not isinstance(value, Mapping | ml_collections.ConfigDict):
                raise ConfigError(f"{where}: config.{field} is a group of fields, not a value.")
            _merge_overrides(config[field], value, f"{where}.{field}")
        else:
            try:
                config[field] = value
            except TypeError as error:
                raise ConfigError(f"{where}: cannot set config.{field}: {error}") from None


def row_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The config of one row of a comparison: ``config`` with the row's overrides applied.

    Args:
      config: the experiment config.
      name: a row of ``config.rows`` (its overrides are merged field by field), or a method
        (``config.method`` is set to it).

    Returns:
      A new ConfigDict, with ``rows`` and ``compare_methods`` emptied and ``tune`` off (a run
      does not depend on the other rows, nor on whether a grid is being searched).

    Raises:
      ConfigError: for an unknown name, or a row that sets an unknown field or no method.
    """
    result = ml_collections.ConfigDict(config.to_dict())
    # What the comparison runs is not part of a run's config: another list of rows, or a search
    # of the grids, reads back the same finished runs.
    result.rows = ml_collections.ConfigDict()
    result.compare_methods = ""
    result.tune = False
    rows = config.get("rows") or {}
    if name in rows:
        overrides = rows[name].to_dict()
        overrides.pop(GRID, None)
        if overrides.get("method") not in METHODS:
            raise ConfigError(
                f"config.rows.{name} must name a method, one of {', '.join(METHODS)}; got "
                f"{overrides.get('method')!r}."
            )
        _merge_overrides(result, overrides, f"config.rows.{name}")
    elif name in METHODS:
        result.method = name
    else:
        raise ConfigError(f"{name!r} is neither a method nor a row of the config.")
    return result


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def row_grid(config: ml_collections.ConfigDict, name: str) -> dict[str, tuple[Any, ...]]:
    """The settings searched for a row: its ``grid``, as dotted field names and their values.

    Args:
      config: the experiment config.
      name: a row of ``config.rows``, or a method (which has no grid).

    Returns:
      ``{"learning_rate": (0.0025, 0.005, 0.01), "pg.mle_weight": (0.0, 0.5)}``, in the order
      of the config; empty for a row without a grid.

    Raises:
      ConfigError: for a grid field that the config does not have or that is a group, or a
        field with no values.
    """
    rows = config.get("rows") or {}
    if name not in rows or GRID not in rows[name]:
        return {}
    grid = _flatten(rows[name][GRID].to_dict())
    if not grid:
        raise ConfigError(f"config.rows.{name}.grid is empty; give it fields or remove it.")
    base = row_config(config, name)
    result = {}
    for field, values in grid.items():
        node = base
        *parents, leaf = field.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(f"config.rows.{name}.grid.{field}: the config has no field {field}.")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise ConfigError(f"config.rows.{name}.grid.{field}: {field} is a group of fields.")
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ConfigError(
                f"config.rows.{name}.grid.{field} must be a non-empty tuple of values, got "
                f"{values!r}."
            )
        result[field] = tuple(values)
    return result


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values, the last field varying fastest.

    Args:
      grid: dotted field names and their values, as `row_grid` returns them.

    Returns:
      A list of ``{field: value}``; ``[{}]`` for an empty grid.
    """
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _point_values(point: Mapping[str, Any]) -> str:
    return ",".join(
        f"{field}={value:g}" if isinstance(value, float) else f"{field}={value}"
        for field, value in point.items()
    )


def point_name(row: str, point: Mapping[str, Any]) -> str:
    """The run name of a point of a row's grid: ``pg@learning_rate=0.001,pg.mle_weight=0.5``."""
    return f"{row}@{_point_values(point)}" if point else row


def with_point(
    config: ml_collections.ConfigDict, point: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the dotted fields of ``point`` set to its values."""
    result = ml_collections.ConfigDict(config.to_dict())
    for field, value in point.items():
        node = result
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        try:
            node[leaf] = value
        except TypeError as error:
            raise ConfigError(f"Cannot set config.{field} to {value!r}: {error}") from None
    return result


def seed_config(
    config: ml_collections.ConfigDict, seed: int, shared_pretraining: bool = False
) -> ml_collections.ConfigDict:
    """The config of one seed of a comparison.

    Args:
      config: a row's config.
      seed: the seed.
      shared_pretraining: keep the config's pretraining seed (and data split) for every seed.

    Returns:
      A copy with ``seed``; unless ``shared_pretraining``, also ``pretrain.seed = seed`` and,
      where the task has one, ``task_config.split_seed = seed``, so that each seed pretrains
      its own model (on its own split) and paired differences cover that variation too.
    """
    result = ml_collections.ConfigDict(config.to_dict())
    result.seed = int(seed)
    if not shared_pretraining:
        result.pretrain.seed = int(seed)
        if "split_seed" in result.task_config:
            result.task_config.split_seed = int(seed)
    return result


def parse_seeds(text: str, first_seed: int) -> list[int]:
    """Reads ``--seeds``: a count ``N`` (seeds ``first_seed .. first_seed + N - 1``) or a
    comma-separated list of seeds."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes a count or a list such as 0,1,2; got {text!r}.") from None
    if "," not in text and seeds:
        if seeds[0] < 1:
            raise ConfigError(f"--seeds must be at least 1, got {seeds[0]}.")
        seeds = list(range(first_seed, first_seed + seeds[0]))
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds must list distinct seeds, got {text!r}.")
    return seeds


# ---------------------------------------------------------------------------------------------
# The comparison.


def _row_names(config: ml_collections.ConfigDict) -> list[str]:
    return list((config.get("rows") or {}).keys())


def resolve_methods(
    config: ml_collections.ConfigDict, methods: Sequence[str] | None = None
) -> list[str]:
    """The rows of a comparison: ``methods`` checked, or the config's default rows.

    Args:
      config: the experiment config.
      methods: names from ``METHODS`` or ``config.rows``; None for ``config.compare_methods``,
        or ``DEFAULT_METHODS`` when that is empty.

    Returns:
      The row names, in order.

    Raises:
      ConfigError: for an unknown or repeated name.
    """
    if methods is None:
        methods = [m for m in str(config.get("compare_methods") or "").split(",") if m.strip()]
        methods = methods or list(DEFAULT_METHODS)
    return parse_methods(",".join(methods), _row_names(config))


class PlannedRow(NamedTuple):
    """One setting that a comparison runs over every seed.

    Attributes:
      row: the row of the table it belongs to.
      name: the run name: ``row``, or `point_name` for a point of a row's grid.
      config: its config (``seed`` not yet set).
      point: the grid values it sets (empty for a row run at its own values).
    """

    row: str
    name: str
    config: ml_collections.ConfigDict
    point: dict[str, Any]


def plan_rows(
    config: ml_collections.ConfigDict, methods: Sequence[str], tune: bool
) -> list[PlannedRow]:
    """The settings of a comparison: each row at its values, or every point of its grid.

    Args:
      config: the experiment config.
      methods: the rows.
      tune: search the grids (``config.tune``).

    Returns:
      The `PlannedRow` s, rows in order and each row's points in `grid_points` order.

    Raises:
      ConfigError: for a bad row or grid.
    """
    plan = []
    for row in methods:
        base = row_config(config, row)
        grid = row_grid(config, row)
        points = grid_points(grid) if tune and grid else [{}]
        for point in points:
            plan.append(PlannedRow(row, point_name(row, point), with_point(base, point), point))
    return plan


def row_group(config: ml_collections.ConfigDict) -> str:
    """What kind of row a config is, for the headline (`report.headline`).

    Returns:
      ``"pretrained"``; ``"mle"`` (MLE on the task's MLE loss, no correction); ``"control"``
      (MLE on another surrogate or with a post-hoc correction); ``"rl"`` (PG, MRT, GRPO);
      ``"search"`` (random search, MGS with uniform weights, the evolution strategies); or
      ``"mgs"``.
    """
    method = config.method
    if method == "pretrained":
        return "pretrained"
    if method == "mle":
        return "control" if config.surrogate or config.post_hoc else "mle"
    if method in ("pg", "mrt", "grpo"):
        return "rl"
    if method in ("random_search", "open_es", "guided_es") or config.mgs.weighting == "uniform":
        return "search"
    return "mgs"


# What each method is, for the legend of the rows that `compare` prints and writes.
METHOD_DESCRIPTIONS = {
    "pretrained": "the pretrained model, not fine-tuned",
    "mle": "MLE (cross-entropy, or the surrogate named)",
    "mgs": "MGS in the paper's placement (with_mgs around the optimiser)",
    "mgs_after": "MGS after the optimiser (chain(optimiser, mgs))",
    "random_search": "MGS's search without the guide (lambda = 1)",
    "pg": "policy gradient (REINFORCE with a moving-average baseline)",
    "mrt": "minimum risk training",
    "grpo": "GRPO: group-normalised advantages, clipped ratio",
    "open_es": "OpenAI evolution strategy (evosax's Open_ES)",
    "guided_es": "guided evolution strategy (evosax's GuidedES), guided by the MLE update",
}


def row_legend(config: ml_collections.ConfigDict, methods: Sequence[str]) -> list[str]:
    """One line per row: what its method is, and the settings its row changes.

    Args:
      config: the experiment config, with its ``rows``.
      methods: the rows of the comparison.

    Returns:
      Lines ``"row: description; field=value, ..."``, without the grids (``results.md`` lists
      those searched).
    """
    rows = config.get("rows") or {}
    lines = []
    for row in methods:
        overrides = rows[row].to_dict() if row in rows else {"method": row}
        method = overrides.pop("method", row)
        overrides.pop(GRID, None)
        settings = _point_values(_flatten(overrides)).replace(",", ", ")
        description = METHOD_DESCRIPTIONS.get(method, method)
        lines.append(f"{row}: {description}" + (f"; {settings}" if settings else ""))
    return lines


def choose_points(
    runs: Sequence[dict[str, Any]], plan: Sequence[PlannedRow], primary: Metric
) -> dict[str, dict[str, Any]]:
    """For each row whose grid was searched, the point with the best mean validation score.

    The runs of the chosen point are renamed to the row (``run["method"] = row``), so that
    the tables report them as the row; the others keep their point names.

    Args:
      runs: the results of every planned setting, each with ``method`` its run name.
      plan: the comparison's `PlannedRow` s.
      primary: the metric that decides (`report.validation_score` at the selected checkpoint).

    Returns:
      ``{row: {"points": [{"name", "values", "valid": mean score, "chosen"}], "chosen":
      values}}`` for the rows with more than one point.
    """
    record: dict[str, dict[str, Any]] = {}
    rows = dict.fromkeys(p.row for p in plan)
    for row in rows:
        points = [p for p in plan if p.row == row]
        if len(points) == 1 and not points[0].point:
            continue
        chosen = report.best_row(runs, [p.name for p in points], primary)
        entries = []
        for point in points:
            scores = [
                report.validation_score(r, primary.name) for r in runs if r["method"] == point.name
            ]
            entries.append(
                {
                    "name": point.name,
                    "values": point.point,
                    "valid": float(np.mean(scores)) if scores else None,
                    "chosen": point.name == chosen,
                }
            )
        for run in runs:
            if run["method"] == chosen:
                run["method"] = row
        record[row] = {
            "points": entries,
            "chosen": next((p.point for p in points if p.name == chosen), None),
        }
    return record


def compare(
    config: ml_collections.ConfigDict,
    methods: Sequence[str] | None,
    seeds: Sequence[int],
    workdir: str | Path,
    *,
    pretrained_dir: str | Path | None = None,
    progress: bool | None = None,
    echo: bool = True,
    shared_pretraining: bool = False,
) -> dict[str, Any]:
    """Runs every row over every seed, and reports on the test split.

    A row is a method, or a named row of ``config.rows`` (a method with config overrides, such
    as MLE at half the learning rate). Each seed ``s`` pretrains its own model
    (``pretrain.seed = s``, and ``task_config.split_seed = s`` where the task has a data split
    seed; see `seed_config`), and every row of that seed fine-tunes from it, so that the paired
    differences over seeds include pretraining and split variance; ``shared_pretraining``
    uses the config's one pretrained model for every seed instead. Every run selects its
    checkpoint on the validation task loss (``config.select_checkpoint``); the table reports
    those, and a second table the last parameters. Both come with the per-seed paired
    differences of the primary metric against the best plain-MLE row, chosen on validation
    (see `report.reference_row`), and a headline compares the MGS row with the best row of
    each kind (`report.headline`). With ``config.tune``, each row that has a ``grid`` runs
    every point of it and reports the point with the best mean validation score
    (`choose_points`).

    Writes, in ``workdir``: ``results.json`` (the config, every run's history and final metrics,
    the grids searched, the tables and the paired differences), ``results.md`` (the tables in
    markdown) and two plots of the task's primary validation metric, against steps and against
    wall-clock seconds. Runs already finished in ``workdir`` with the same config are read back,
    not repeated.

    Args:
      config: the experiment config; ``method`` and ``seed`` are replaced by each run's.
      methods: rows (names from ``METHODS`` or ``config.rows``); None: those of
        ``config.compare_methods``, or ``DEFAULT_METHODS`` when it is empty.
      seeds: the seeds of the runs of each row.
      workdir: the work directory (pretrained models, checkpoints, results).
      pretrained_dir: where the pretrained models live; default ``<workdir>/pretrained``
        (each seed's in ``pretrain_seed_<s>`` below it, unless ``shared_pretraining``).
      progress: show progress bars: True, False, or None for only on a terminal.
      echo: print the progress of the comparison and the table.
      shared_pretraining: one pretrained model (and split) for every seed, for quick runs.

    Returns:
      ``{"summary", "summary_last", "paired", "paired_last", "table", "markdown", "headline",
      "grids", "runs", "files": {"json", "markdown", "plots"}}``; the runs are those of
      `train.run`, without their parameters, with ``row`` and ``point`` added.

    Raises:
      ValueError: for an unknown method, row or task, or an invalid config.
    """
    methods = resolve_methods(config, methods)
    plan = plan_rows(config, methods, bool(config.get("tune", False)))
    for planned in plan:
        train.check_config(planned.config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    task = train.get_task(config)
    for planned in plan:
        train.check_task_settings(task, planned.config)
    primary = next(
        (m for m in task.metrics if m.name == task.primary_metric),
        Metric(task.primary_metric, lower_is_better=True),
    )
    # The progress lines show what the terminal's tables show; the tables that follow, the rest.
    shown_metrics = report.terminal_metrics(task.metrics, primary)
    pretrained_root = (
        workdir / train.PRETRAINED_DIR if pretrained_dir is None else Path(pretrained_dir)
    )
    runs: list[dict[str, Any]] = []
    pretrain_records = {}
    for seed in seeds:
        base = seed_config(config, seed, shared_pretraining)
        seed_task = train.get_task(base)
        seed_pretrained = (
            pretrained_root if shared_pretraining else pretrained_root / f"pretrain_seed_{seed}"
        )
        _, record = train.pretrain(base, seed_pretrained, task=seed_task, progress=progress)
        pretrain_records[str(seed)] = {k: v for k, v in record.items() if k != "fingerprint"}
        if echo:
            valid = record["valid"]
            shown = ", ".join(f"{m.label or m.name} {valid[m.name]:.4g}" for m in shown_metrics)
            which = "shared by every seed" if shared_pretraining else f"seed {seed}"
            print(
                f"Pretrained model, {which} (MLE, {record['steps']} steps, kept step "
                f"{record['best_step']}): validation {shown}. In {seed_pretrained}.",
                flush=True,
            )
        for planned in plan:
            run_config = seed_config(planned.config, seed, shared_pretraining)
            result = train.run(
                run_config,
                workdir,
                pretrained_dir=seed_pretrained,
                task=train.get_task(run_config),
                progress=progress,
                name=planned.name,
            )
            result.pop("params", None)
            result["row"], result["point"] = planned.row, planned.point
            runs.append(result)
            if echo:
                shown = ", ".join(
                    f"{m.label or m.name} {result['test'][m.name]:.4g}" for m in shown_metrics
                )
                print(
                    f"  {planned.name:<18} seed {seed}: test {shown} (step "
                    f"{result['selected_step']}), {result['seconds']:.2f} s, "
                    f"{result['task_loss_evaluations']} task-loss evals",
                    flush=True,
                )
    # Row by row, as the table reads, rather than in the order the seeds ran.
    order = {planned.name: index for index, planned in enumerate(plan)}
    runs.sort(key=lambda r: (order[r["method"]], list(seeds).index(r["seed"])))
    grids = choose_points(runs, plan, primary)
    grid_record = {
        row: {
            "grid": {k: list(v) for k, v in row_grid(config, row).items()},
            "tuned": row in grids,
            **grids.get(row, {}),
        }
        for row in methods
        if row_grid(config, row)
    }
    table_runs = [r for r in runs if r["method"] in methods]
    tables = report.tables(table_runs, methods, task.metrics, primary)
    groups = {row: row_group(row_config(config, row)) for row in methods}
    focus = next((m for m in methods if m == config.method), None) or next(
        (m for m in methods if groups[m] == "mgs"), None
    )
    extra = [
        Metric(name, True, label)
        for name, label in HEADLINE_EXTRA_METRICS.items()
        if table_runs and all(name in (r["test"] or {}) for r in table_runs)
    ]
    headline = (
        None
        if focus is None
        else report.headline(table_runs, methods, groups, focus, primary, extra)
    )
    title = f"{task.name}, {len(seeds)} seed{'s' * (len(seeds) > 1)}"
    plots = report.plot_histories(table_runs, methods, primary, workdir, title)
    selection = (
        "parameters of the evaluation with the best validation task loss"
        if bool(config.select_checkpoint)
        else "last parameters"
    )
    pretraining = (
        "one pretrained model for every seed"
        if shared_pretraining
        else "each seed with its own pretrained model"
        + (" and data split" if "split_seed" in config.task_config else "")
    )
    legend = (
        f"Test split, {task.name}: mean ± std over {len(seeds)} seed(s), {pretraining}; "
        f"{selection}; best mean per metric marked. Δ: mean over seeds of the per-seed "
        "difference from the reference row (the plain MLE row with the best validation score), "
        "with Student's t interval; better on: seeds where the row beat the reference. seconds: "
        "fine-tuning wall-clock time (without evaluation and compilation); task-loss evals: "
        "batch-sized task-loss evaluations."
    )
    legend_last = "The same runs, scored at their last parameters (no checkpoint selection)."
    legend_headline = (
        f"Headline: {focus} against the best row of each kind, each chosen on the validation "
        f"split; Δ is {focus} minus that row on the test split, per seed, with a 95% t interval."
    )
    tuned_text = "".join(
        f"\n{row}, mean validation {primary.label or primary.name} per point (* chosen): "
        + ", ".join(
            f"{_point_values(p['values'])} {p['valid']:.4f}{' *' if p['chosen'] else ''}"
            for p in g["points"]
        )
        + "."
        for row, g in grid_record.items()
        if g["tuned"]
    )
    tuned_markdown = "".join(
        f"\n\n{row}: mean validation {primary.label or primary.name} over the seeds, per point "
        "of its grid (chosen in bold).\n\n| setting | validation |\n|:---|---:|\n"
        + "\n".join(
            f"| {_point_values(p['values'])} | "
            + (f"**{p['valid']:.4f}**" if p["chosen"] else f"{p['valid']:.4f}")
            + " |"
            for p in g["points"]
        )
        for row, g in grid_record.items()
        if g["tuned"]
    )
    json_path = workdir / "results.json"
    markdown_path = workdir / "results.md"
    json_path.write_text(
        json.dumps(
            {
                "config": config.to_dict(),
                "methods": list(methods),
                "seeds": [int(s) for s in seeds],
                "shared_pretraining": bool(shared_pretraining),
                "pretrain": pretrain_records,
                "groups": groups,
                "grids": grid_record,
                "headline": headline,
                "runs": runs,
                **tables,
            },
            indent=2,
            default=str,
        )
    )
    headline_md = f"{legend_headline}\n\n{headline['markdown']}\n\n" if headline else ""
    rows_legend = row_legend(config, methods)
    rows_md = "The rows:\n\n" + "\n".join(f"- {line}" for line in rows_legend) + "\n\n"
    markdown_path.write_text(
        f"{headline_md}{rows_md}{legend}\n\n{tables['markdown']}\n\n{legend_last}\n\n"
        f"{tables['markdown_last']}\n{tuned_markdown}\n"
    )
    files = {
        "json": str(json_path),
        "markdown": str(markdown_path),
        "plots": [str(p) for p in plots],
    }
    if echo:
        # Prose wrapped to the width of the tables (100 characters).
        def wrap(text: str, indent: str = "") -> str:
            return textwrap.fill(
                text,
                100,
                initial_indent=indent,
                subsequent_indent=indent + "  ",
                break_long_words=False,  # paths stay whole
                break_on_hyphens=False,
            )

        print("\nThe rows:\n" + "\n".join(wrap(line, "  ") for line in rows_legend))
        print(f"\n{wrap(f'{legend} {markdown_path.name} has every column.')}\n")
        print(f"{tables['table']}\n\n{wrap(legend_last)}\n\n{tables['table_last']}\n")
        if headline:
            print(f"{wrap(legend_headline)}\n\n{headline['table']}\n")
        if tuned_text:
            print("\n".join(wrap(line) for line in tuned_text.strip().splitlines()) + "\n")
        print(
            wrap(f"Wrote {json_path}, {markdown_path} and the plots {', '.join(map(str, plots))}.")
        )
    return {**tables, "headline": headline, "grids": grid_record, "runs": runs, "files": files}


# ---------------------------------------------------------------------------------------------
# The command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlesearch",
        description=(
            "MLE-guided parameter search (MGS) and its baselines on the paper's experiments. "
            "Without a command, runs the default comparison: compare "
            f"{DEFAULT_TASK} --seeds {MAIN_JOB_SEEDS} --methods {','.join(MAIN_JOB_METHODS)}."
        ),
        epilog=(
            "Set any config field with --config.<field>=<value>, e.g. --config.steps=100 "
            "--config.mgs.num_candidates=8; mlesearch config CONFIG lists the fields and their "
            "defaults. Ctrl-C stops a run; the same command resumes it from its last checkpoint "
            "(saved at least every minute). CONFIG is a config name "
            f"({', '.join(available_configs())}) or a path to a config file."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="{run,compare,config}")

    def add_common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("config", metavar="CONFIG", help="config name or config file")
        sub.add_argument(
            "--workdir",
            default=None,
            help=f"work directory (default: ./{RUNS_DIR}/<task>)",
        )
        sub.add_argument(
            "--pretrained-dir",
            default=None,
            help="the pretrained model, shared between work directories "
            "(default: <workdir>/pretrained)",
        )
        sub.add_argument("--no-progress", action="store_true", help="do not show progress bars")

    run_parser = commands.add_parser(
        "run", help="fine-tune one method (config.method) for one seed (config.seed)"
    )
    add_common(run_parser)
    compare_parser = commands.add_parser(
        "compare", help="compare methods over seeds; write a table and plots"
    )
    add_common(compare_parser)
    compare_parser.add_argument(
        "--shared-pretraining",
        action="store_true",
        help="one pretrained model (and data split) for every seed, for quick runs (default: "
        "seed s pretrains its own, with pretrain.seed=s and, where the task has one, "
        "task_config.split_seed=s)",
    )
    compare_parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {','.join(METHODS)} or the rows of the config (default: "
        f"config.compare_methods, or {','.join(DEFAULT_METHODS)} if it is empty)",
    )
    compare_parser.add_argument(
        "--seeds",
        default=str(DEFAULT_SEEDS),
        help="a count N (seeds config.seed .. config.seed+N-1) or a list such as 0,1,2 "
        "(default: %(default)s)",
    )
    config_parser = commands.add_parser(
        "config", help="list a config's fields and their values (the defaults of run and compare)"
    )
    config_parser.add_argument("config", metavar="CONFIG", help="config name or config file")
    return parser


def describe_config(config: ml_collections.ConfigDict, spec: str = "") -> str:
    """Every field of ``config`` as ``--config.<field>=<value>`` lines.

    Args:
      config: an experiment config.
      spec: the config's name or path as given on the command line, for the header.

    Returns:
      Text: a header, then one line per field in the syntax that overrides it.
    """
    lines = []

    def walk(node: Any, prefix: str) -> None:
        for key in sorted(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict) and len(value):
                walk(value, f"{prefix}{key}.")
            else:
                if isinstance(value, ml_collections.ConfigDict):
                    value = value.to_dict()
                if isinstance(value, bool):
                    text = str(value).lower()
                elif isinstance(value, str):
                    text = value
                else:
                    text = repr(value)
                # Quoted for a POSIX shell, as it would be typed on the command line.
                lines.append(f"{CONFIG_PREFIX}{prefix}{key}={shlex.quote(text)}")

    walk(config, "")
    header = f"Fields of {spec or config.task} (set any with --config.<field>=<value>):"
    return "\n".join([header, *lines])


def _check_directory(path: Path, what: str) -> str | None:
    """Creates ``path`` and checks that files can be written there; the problem, or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mlesearch_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        return f"cannot use {path} as the {what}: {reason}."
    return None


def _command_run(
    config: ml_collections.ConfigDict,
    workdir: Path,
    pretrained_dir: str | None,
    progress: bool | None,
) -> None:
    task = train.get_task(config)
    result = train.run(config, workdir, pretrained_dir=pretrained_dir, task=task, progress=progress)
    shown = ", ".join(f"{m.label or m.name} {result['test'][m.name]:.4g}" for m in task.metrics)
    print(
        f"{config.method} seed {config.seed} on {task.name}: test {shown}; "
        f"{result['seconds']:.2f} s, {result['task_loss_evaluations']} task-loss evaluations."
    )
    print(f"Wrote {Path(result['directory']) / train.RESULT_FILE}.")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mlesearch`` command.

    Args:
      argv: the arguments after the program name; None reads ``sys.argv[1:]``. Empty runs the
        default comparison.

    Returns:
      The exit status, 0. Errors exit through ``SystemExit`` with status 2 (bad arguments) or 1
      (a failed run), with a message on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv:
        workdir = Path(RUNS_DIR) / DEFAULT_TASK
        methods = ",".join(MAIN_JOB_METHODS)
        print(
            f"No command given: running compare {DEFAULT_TASK} --seeds {MAIN_JOB_SEEDS} "
            f"--methods {methods} --workdir {workdir} (mlesearch --help lists the commands; "
            f"compare {DEFAULT_TASK} --seeds 5 runs every row of the config, for the table of "
            "docs/experiments.md).",
            flush=True,
        )
        argv = ["compare", DEFAULT_TASK, "--seeds", str(MAIN_JOB_SEEDS), "--methods", methods]
        argv += ["--workdir", str(workdir)]
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.error(
            "choose a command: run, compare or config (or none, for the default comparison)"
        )
    if args.command == "config":
        try:
            module = _config_module(args.config)
            config = apply_overrides(_config_from_module(module, args.config), rest)
        except ValueError as error:
            parser.error(str(error))
        doc = inspect.getdoc(module.get_config) or ""
        print(((doc + "\n\n") if doc else "") + describe_config(config, args.config))
        return 0
    try:
        config = apply_overrides(load_config(args.config), rest)
        train.check_config(config)
        methods = (
            parse_methods(args.methods, _row_names(config))
            if args.command == "compare" and args.methods is not None
            else None
        )
        seeds = parse_seeds(args.seeds, int(config.seed)) if args.command == "compare" else None
        if args.command == "compare":  # every row's settings, before anything is trained
            rows = resolve_methods(config, methods)
            for planned in plan_rows(config, rows, bool(config.get("tune", False))):
                try:
                    train.check_config(planned.config)
                except ValueError as error:
                    raise ValueError(f"row {planned.name}: {error}") from None
    except ConfigError as error:
        parser.error(str(error))
    except ValueError as error:
        parser.error(str(error))
    workdir = Path(args.workdir) if args.workdir else Path(RUNS_DIR) / str(config.task)
    directories = [(workdir, "work directory")]
    if args.pretrained_dir:
        directories.append((Path(args.pretrained_dir), "pretrained directory"))
    for directory, what in directories:
        problem = _check_directory(directory, what)
        if problem:
            parser.exit(2, f"mlesearch: error: {problem}\n")
    progress = False if args.no_progress else None
    try:
        if args.command == "run":
            _command_run(config, workdir, args.pretrained_dir, progress)
        else:
            compare(
                config,
                methods,
                seeds,
                workdir,
                pretrained_dir=args.pretrained_dir,
                progress=progress,
                shared_pretraining=args.shared_pretraining,
            )
    except ValueError as error:
        parser.exit(1, f"mlesearch: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(
            130,
            f"\nmlesearch: interrupted. Finished runs and checkpoints are in {workdir}; run the "
            "same command again to resume from them.\n",
        )
    return 0
