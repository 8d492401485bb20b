"""Ablations of MGS's knobs (n, σ, α, λ, weighting) on one experiment, scored on validation.

Each setting is a set of config overrides applied to the experiment's config. The script runs
``method=mgs`` (unless a setting overrides ``method``), and MLE once as the reference row, over
the given seeds; each seed pretrains its own model (and data split, where the task has one), as
``mlesearch compare`` does. It prints one row per setting: the mean ± std over seeds of the
task's metrics on the **validation** split (at each run's selected checkpoint), the fine-tuning
time and, against the MLE row, the mean per-seed difference of the primary metric with its 95%
t interval and the seeds on which the setting was better; it writes the rows as JSON and
markdown.

Settings are chosen here, so the test split stays out of it: ``--split test`` scores the test
split instead, for a final row that was chosen beforehand. The seeds start at ``--first-seed``
(100), away from the seeds that ``mlesearch compare`` reports (0, 1, ...), so that the chosen
setting is confirmed on seeds nobody tuned on.

    python benchmarks/ablation.py text_completion --seeds 3 --workdir /tmp/ablation
    python benchmarks/ablation.py digits --seeds 3 --setting "n=8" mgs.num_candidates=8

Without ``--setting``, the default grid below (one knob changed at a time from the config).
``--config.FIELD=VALUE`` overrides, as for the ``mlesearch`` command, apply to every setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mlesearch.experiments import cli, report, train

# One knob at a time, from the experiment's own MGS settings.
DEFAULT_GRID: dict[str, list[str]] = {
    "config": [],
    "n=2": ["mgs.num_candidates=2"],
    "n=8": ["mgs.num_candidates=8"],
    "sigma x1/3": ["mgs.sigma=*0.3333"],
    "sigma x3": ["mgs.sigma=*3"],
    "mix=0 (guided only)": ["mgs.mix=0.0"],
    "mix=1 (random search)": ["mgs.mix=1.0"],
    "importance weights": ["mgs.weighting=importance"],
    "target ESS 0.25": ["mgs.target_ess=0.25"],
    "fixed alpha=1": ["mgs.auto_temperature=False", "mgs.temperature=1.0"],
    "learning rate x10": ["learning_rate=*10"],
    "MLE, learning rate x10": ["method=mle", "learning_rate=*10"],
    "learning rate x10, sigma x1/3": ["learning_rate=*10", "mgs.sigma=*0.3333"],
}


def _apply(config, overrides: list[str]) -> None:
    for override in overrides:
        field, text = override.split("=", 1)
        if text.startswith("*"):  # relative to the config's value
            current = config
            *parents, leaf = field.split(".")
            for name in parents:
                current = current[name]
            value = float(current[leaf]) * float(text[1:])
            current[leaf] = round(value) if isinstance(current[leaf], int) else value
        else:
            cli.apply_override(config, field, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment config name, e.g. text_completion")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", default="mlesearch_runs/ablation")
    parser.add_argument(
        "--setting",
        nargs="+",
        action="append",
        metavar=("NAME", "FIELD=VALUE"),
        help="a setting: its name, then overrides such as mgs.sigma=10 (repeatable)",
    )
    parser.add_argument("--no-mle", action="store_true", help="skip the MLE reference row")
    parser.add_argument(
        "--split",
        choices=("valid", "test"),
        default="valid",
        help="the split that scores the settings (default: valid; test only for a final row)",
    )
    parser.add_argument("--first-seed", type=int, default=100, help="the first seed (default 100)")
    parser.add_argument(
        "--shared-pretraining",
        action="store_true",
        help="one pretrained model for every seed (default: one per seed)",
    )
    args, config_overrides = parser.parse_known_args()  # --config.FIELD=VALUE, for every setting
    grid = {s[0]: s[1:] for s in args.setting} if args.setting else DEFAULT_GRID

    base = cli.apply_overrides(cli.load_config(args.config), config_overrides)
    workdir = Path(args.workdir)
    task = train.get_task(base)
    names = [m.name for m in task.metrics]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    def scores(result: dict) -> dict:
        if args.split == "test":
            return result["test"]
        return {name: report.validation_score(result, name) for name in names}

    rows = []
    all_runs = []
    settings = ([("MLE (reference)", None)] if not args.no_mle else []) + list(grid.items())
    for label, overrides in settings:
        config = cli.apply_overrides(cli.load_config(args.config), config_overrides)
        config.method = "mle" if overrides is None else "mgs"
        _apply(config, overrides or [])
        train.check_config(config)
        directory = workdir / label.replace(" ", "_").replace("/", "_")
        results = []
        for seed in seeds:
            seed_config = cli.seed_config(config, seed, args.shared_pretraining)
            pretrained_dir = workdir / train.PRETRAINED_DIR
            if not args.shared_pretraining:
                pretrained_dir = pretrained_dir / f"pretrain_seed_{seed}"
            result = train.run(
                seed_config,
                directory,
                pretrained_dir=pretrained_dir,
                task=train.get_task(seed_config),
                progress=False,
            )
            result["scores"] = scores(result)
            results.append(result)
            all_runs.append({"method": label, "seed": seed, "test": result["scores"]})
        cells = {}
        for name in [*names, "seconds"]:
            values = np.array(
                [r["seconds"] if name == "seconds" else r["scores"][name] for r in results]
            )
            cells[name] = (
                float(values.mean()),
                float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            )
        rows.append(dict(setting=label, overrides=overrides, cells=cells))
        shown = "  ".join(f"{n} {m:.4g}±{s:.2g}" for n, (m, s) in cells.items())
        print(f"{label:<24} {shown}", flush=True)

    primary = next(m for m in task.metrics if m.name == task.primary_metric)
    reference = settings[0][0] if not args.no_mle else None
    paired = (
        report.paired_differences(all_runs, [r["setting"] for r in rows], [primary], reference)
        if reference is not None
        else None
    )
    extra = [f"Δ {primary.name} vs MLE [95% CI]", "better on"] if paired else []
    header = (
        "| setting | "
        + " | ".join([*(f"{n} ({args.split})" for n in names), "seconds", *extra])
        + " |"
    )
    lines = [header, "|---" * (len(names) + 2 + len(extra)) + "|"]
    for row in rows:
        cells = " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in row["cells"].values())
        if paired:
            stats = paired["rows"].get(row["setting"], {}).get(primary.name)
            difference, wins = report.format_difference(stats)
            cells += f" | {difference} | {wins}"
            row["paired"] = stats
        lines.append(f"| {row['setting']} | {cells} |")
    markdown = "\n".join(lines)
    print(markdown)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ablation.md").write_text(markdown + "\n")
    (workdir / "ablation.json").write_text(
        json.dumps(dict(config=args.config, split=args.split, seeds=seeds, rows=rows), indent=1)
    )
    print(f"wrote {workdir / 'ablation.md'} and {workdir / 'ablation.json'}")


if __name__ == "__main__":
    main()
