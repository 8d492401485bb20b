"""The ``mlesearch`` command: configs, overrides, errors, and the comparison's table and files."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from mlesearch.experiments import cli, report
from mlesearch.experiments.tasks import Metric

# The tiny digits setting of train_test.py, as command-line overrides.
TINY_OVERRIDES = [
    "--config.task_config.hidden_size=8",
    "--config.pretrain.steps=40",
    "--config.pretrain.eval_every=20",
    "--config.steps=30",
    "--config.eval_every=10",
    "--config.checkpoint_every=10",
    "--config.batch_size=64",
    "--config.learning_rate=0.01",
    "--config.mgs.num_candidates=4",
    "--config.es.num_candidates=4",
    "--config.pg.num_samples=4",
    "--config.mrt.num_samples=4",
]


pytestmark = pytest.mark.usefixtures("fast_compilation")


def test_overrides_take_the_type_of_the_field():
    config = cli.load_config("digits")
    cli.apply_overrides(
        config,
        [
            "--config.method=pg",
            "--config.mgs.num_candidates=8",
            "--config.mgs.sigma",  # The value may also be the next argument.
            "2",
            "--config.mgs.auto_temperature=false",
            "--config.learning_rate=3e-4",
            "--config.task_config.task_loss=f1",
        ],
    )
    assert config.method == "pg"
    assert config.mgs.num_candidates == 8 and isinstance(config.mgs.num_candidates, int)
    assert config.mgs.sigma == 2.0 and isinstance(config.mgs.sigma, float)
    assert config.mgs.auto_temperature is False
    assert config.learning_rate == 3e-4
    assert config.task_config.task_loss == "f1"


def test_config_file_and_config_name_load_the_same_config():
    path = Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    assert cli.load_config(str(path)).to_dict() == cli.load_config("digits").to_dict()
    assert "digits" in cli.available_configs() and "common" not in cli.available_configs()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "digits", "--config.stepz=3"], "Unknown field config.stepz"),
        (["run", "digits", "--config.mgs.nope=3"], "The fields of config.mgs are"),
        (["run", "digits", "--config.mgs=3"], "config.mgs is a group of fields"),
        (["run", "digits", "--config.steps=ten"], "config.steps is an int"),
        (["run", "digits", "--config.mgs.antithetic=maybe"], "is a bool"),
        (["run", "digits", "--config.method=sgd"], "Unknown method 'sgd'"),
        (["run", "digits", "--config.task=chess"], "Unknown task 'chess'"),
        (["run", "digits", "--verbose"], "Unrecognised argument '--verbose'"),
        (["run", "no_such_experiment"], "Unknown config 'no_such_experiment'"),
        (["run", "missing/config.py"], "No config file"),
        (["compare", "digits", "--methods", "mle,sgd"], "Unknown method"),
        (["compare", "digits", "--seeds", "0"], "--seeds must be at least 1"),
    ],
)
def test_mistakes_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bare_command_runs_the_default_text_completion_comparison(monkeypatch, tmp_path):
    calls = {}
    load_config = cli.load_config

    def fake_load_config(name):
        calls["config"] = name
        return load_config(name)  # its rows include every row of the main job

    def fake_compare(config, methods, seeds, workdir, **kwargs):
        calls.update(methods=methods, seeds=seeds, workdir=workdir)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_config", fake_load_config)
    monkeypatch.setattr(cli, "compare", fake_compare)
    assert cli.main([]) == 0
    assert calls == {
        "config": "text_completion",
        "methods": list(cli.MAIN_JOB_METHODS),
        "seeds": list(range(cli.MAIN_JOB_SEEDS)),
        "workdir": Path("mlesearch_runs") / "text_completion",
    }


def test_table_marks_the_best_mean_of_each_metric():
    metrics = (Metric("error", True, "error"), Metric("f1", False, "F1"))
    runs = [
        {"method": m, "test": {"error": e, "f1": f}, "seconds": 1.0, "task_loss_evaluations": n}
        for m, e, f, n in [
            ("mle", 0.2, 0.7, 0),
            ("mle", 0.4, 0.9, 0),
            ("mgs", 0.1, 0.6, 40),
            ("mgs", 0.2, 0.8, 40),
        ]
    ]
    summary = report.summarize(runs, ["mle", "mgs"], metrics)
    rows = {row["method"]: row["cells"] for row in summary["rows"]}
    assert rows["mle"]["error"]["mean"] == pytest.approx(0.3)
    assert rows["mgs"]["error"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert rows["mgs"]["error"]["best"] and not rows["mle"]["error"]["best"]
    assert rows["mle"]["f1"]["best"] and not rows["mgs"]["f1"]["best"]
    assert not any(cells["seconds"]["best"] for cells in rows.values())

    text = report.format_table(summary)
    assert "0.1500 ± 0.0707 *" in text and "0.8000 ± 0.1414 *" in text
    markdown = report.format_table(summary, markdown=True)
    assert "**0.1500 ± 0.0707**" in markdown and markdown.startswith("| method |")


def test_markdown_table_escapes_pipes_in_labels():
    metrics = (Metric("len_gap", True, "|len - ref|"),)
    runs = [{"method": "mle", "test": {"len_gap": 1.0}, "seconds": 1.0, "task_loss_evaluations": 0}]
    markdown = report.format_table(report.summarize(runs, ["mle"], metrics), markdown=True)
    header, rule, row = markdown.splitlines()
    # Unescaped pipes delimit cells: every line has the same number of cells.
    count = lambda line: len(re.findall(r"(?<!\\)\|", line))
    assert count(header) == count(rule) == count(row) == 5


def test_compare_writes_the_table_and_plots(tmp_path, capsys):
    workdir = tmp_path / "runs"
    argv = ["compare", "digits", "--methods", "mle,mgs", "--seeds", "2", "--workdir", str(workdir)]
    assert cli.main([*argv, "--no-progress", *TINY_OVERRIDES]) == 0
    out = capsys.readouterr().out
    assert "Wrote" in out and str(workdir / "results.json") in out

    results = json.loads((workdir / "results.json").read_text())
    assert results["methods"] == ["mle", "mgs"] and results["seeds"] == [0, 1]
    assert results["config"]["steps"] == 30
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [
        ("mle", 0),
        ("mle", 1),
        ("mgs", 0),
        ("mgs", 1),
    ]
    assert all(len(r["history"]) == 4 and r["finished"] for r in results["runs"])
    assert [row["method"] for row in results["summary"]["rows"]] == ["mle", "mgs"]
    columns = [c["name"] for c in results["summary"]["columns"]]
    assert columns == ["error", "f1", "nll", "seconds", "task_loss_evaluations"]
    assert results["table"] in out
    # The terminal's tables and prose fit 100 characters (paths aside); results.md has it all.
    assert all(len(line) <= 100 for line in out.splitlines() if str(tmp_path) not in line)
    assert "  mgs: MGS in the paper's placement" in out  # the rows are explained
    markdown = (workdir / "results.md").read_text()
    assert "- mle: MLE" in markdown
    assert "| method |" in markdown and "**" in markdown
    for name in ("valid_error_vs_step.png", "valid_error_vs_seconds.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each seed pretrained its own model, and both rows of a seed started from it.
    assert [r["pretrain_seed"] for r in results["runs"]] == [0, 1, 0, 1]
    assert sorted(results["pretrain"]) == ["0", "1"]
    for seed in (0, 1):
        seed_records = [r["pretrain"] for r in results["runs"] if r["seed"] == seed]
        assert seed_records[0] == seed_records[1] == results["pretrain"][str(seed)]
    assert len({json.dumps(r["pretrain"], sort_keys=True) for r in results["runs"]}) == 2
    assert (workdir / "pretrained" / "pretrain_seed_1").is_dir()

    # Run again: finished runs are read back from their checkpoints, with the same results.
    assert cli.main([*argv, "--no-progress", *TINY_OVERRIDES]) == 0
    again = json.loads((workdir / "results.json").read_text())
    assert [r["test"] for r in again["runs"]] == [r["test"] for r in results["runs"]]


def test_run_command_fine_tunes_one_method(tmp_path, capsys):
    argv = ["run", "digits", "--workdir", str(tmp_path), "--no-progress", *TINY_OVERRIDES]
    assert cli.main([*argv, "--config.method=mle", "--config.steps=5"]) == 0
    out = capsys.readouterr().out
    assert "mle seed 0 on digits: test 0/1 error" in out
    assert (tmp_path / "mle" / "seed_0" / "result.json").is_file()


def test_rows_merge_their_overrides_into_the_config():
    config = cli.load_config("digits_lt")
    balanced = cli.row_config(config, "mle_balanced")
    assert balanced.method == "mle" and balanced.surrogate == "balanced"
    assert "grid" not in balanced  # the grid says what was searched; it is not a field
    uniform = cli.row_config(config, "mgs_uniform")
    assert uniform.mgs.weighting == "uniform"
    assert uniform.mgs.num_candidates == config.mgs.num_candidates  # the rest is kept
    pg = cli.row_config(config, "pg")
    assert pg.method == "pg" and not pg.rows and not pg.compare_methods and not pg.tune
    assert cli.resolve_methods(config)[:3] == ["pretrained", "mle", "mle_logit_adjusted"]
    assert cli.resolve_methods(config, ["mgs_uniform", "mle"]) == ["mgs_uniform", "mle"]
    assert cli.resolve_methods(cli.load_config("digits")) == ["mle", "mgs", "pg", "mrt"]
    text_rows = cli.resolve_methods(cli.load_config("text_completion"))
    assert text_rows[:3] == ["pretrained", "mle", "mle_long"] and "grpo" in text_rows

    config.rows.broken = {"method": "mle", "learning_rat": 1.0}
    with pytest.raises(cli.ConfigError, match="config.rows.broken sets config.learning_rat"):
        cli.row_config(config, "broken")
    config.rows.nameless = {"learning_rate": 1.0}
    with pytest.raises(cli.ConfigError, match="config.rows.nameless must name a method"):
        cli.row_config(config, "nameless")
    with pytest.raises(cli.ConfigError, match="or a row of the config"):
        cli.resolve_methods(config, ["mle_quarter_lr"])


def _runs(values):
    return [
        {
            "method": method,
            "seed": seed,
            "base_method": base,
            "post_hoc": post_hoc,
            "test": {"f1": f1, "error": 1 - f1},
        }
        for method, base, post_hoc, scores in values
        for seed, f1 in enumerate(scores)
    ]


def test_paired_differences_match_a_paired_t_interval():
    from scipy import stats

    mle = [0.70, 0.72, 0.69, 0.71, 0.73]
    mgs = [0.74, 0.73, 0.72, 0.75, 0.75]
    runs = _runs([("mle", "mle", None, mle), ("mgs", "mgs", None, mgs)])
    metrics = (Metric("f1", False, "F1"), Metric("error", True, "error"))
    paired = report.paired_differences(runs, ["mle", "mgs"], metrics, "mle")
    f1 = paired["rows"]["mgs"]["f1"]
    interval = stats.ttest_rel(mgs, mle).confidence_interval(0.95)
    assert f1["mean"] == pytest.approx(np.mean(np.subtract(mgs, mle)))
    assert (f1["low"], f1["high"]) == pytest.approx((interval.low, interval.high))
    assert f1["wins"] == 5 and f1["num_seeds"] == 5
    # For a lower-is-better metric a win is a negative difference.
    assert paired["rows"]["mgs"]["error"]["wins"] == 5
    assert "mle" not in paired["rows"]

    one_seed = report.paired_differences(runs[:1] + runs[5:6], ["mle", "mgs"], metrics, "mle")
    assert one_seed["rows"]["mgs"]["f1"]["low"] is None


def test_reference_row_is_the_best_plain_mle_row():
    runs = _runs(
        [
            ("mle", "mle", None, [0.70, 0.71]),
            ("mle_double_lr", "mle", None, [0.72, 0.73]),
            ("mle_logit_adjusted", "mle", {"tau": 1.0}, [0.90, 0.91]),
            ("mgs", "mgs", None, [0.95, 0.95]),
        ]
    )
    methods = ["mle", "mle_double_lr", "mle_logit_adjusted", "mgs"]
    assert report.reference_row(runs, methods, Metric("f1", False)) == "mle_double_lr"
    assert report.reference_row(runs, methods, Metric("error", True)) == "mle_double_lr"
    assert report.reference_row(runs[-2:], ["mgs"], Metric("f1", False)) is None


LT_OVERRIDES = [
    "--config.task_config.hidden_size=8",
    "--config.task_config.batch_size=64",
    "--config.pretrain.batch_size=64",
    "--config.pretrain.steps=60",
    "--config.pretrain.eval_every=30",
    "--config.steps=10",
    "--config.eval_every=5",
    "--config.checkpoint_every=10",
    "--config.batch_size=64",
    "--config.mgs.num_candidates=4",
]


def test_compare_reports_rows_and_paired_differences(tmp_path, capsys):
    workdir = tmp_path / "lt"
    rows = "pretrained,mle,mle_balanced,mle_logit_adjusted,mgs_uniform"
    argv = ["compare", "digits_lt", "--methods", rows, "--seeds", "2", "--workdir", str(workdir)]
    assert cli.main([*argv, "--no-progress", "--shared-pretraining", *LT_OVERRIDES]) == 0
    out = capsys.readouterr().out
    results = json.loads((workdir / "results.json").read_text())
    assert results["methods"] == rows.split(",")
    for run in results["runs"]:
        for key in ("test", "test_selected", "test_last"):
            assert set(run[key]) == {"macro_f1", "balanced_accuracy", "nll", "task_loss"}
    by_row = {r["method"]: r for r in results["runs"]}
    assert by_row["mle_balanced"]["base_method"] == "mle"
    assert by_row["mle_balanced"]["surrogate"] == "balanced"
    assert by_row["mle_logit_adjusted"]["post_hoc"]["selected"]["tau"] >= 0
    assert (workdir / "mle_balanced" / "seed_1" / "result.json").is_file()
    # One pretrained model and split for every seed.
    assert {(r["pretrain_seed"], r["split_seed"]) for r in results["runs"]} == {(0, 0)}
    assert results["shared_pretraining"] and list(results["pretrain"]) == ["0", "1"]
    paired = results["paired"]
    # Only plain MLE rows are references: not the control (another loss) or the post-hoc row.
    assert paired["reference"] == "mle" and paired["metrics"][0] == "macro_f1"
    assert set(paired["rows"]) == set(rows.split(",")) - {paired["reference"]}
    assert results["paired_last"]["key"] == "test_last"
    assert f"Δ macro-F1 vs {paired['reference']} [95% CI]" in out
    assert results["table_last"] in out and "no checkpoint selection" in out
    # No MGS row, so no headline.
    assert results["headline"] is None


@pytest.mark.parametrize("inside", [False, True])
def test_a_work_directory_that_cannot_be_used_is_one_line_and_exit_code_2(
    inside, tmp_path, capsys, monkeypatch
):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    workdir = a_file / "runs" if inside else a_file
    monkeypatch.setattr(cli.train, "run", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "digits", "--workdir", str(workdir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"mlesearch: error: cannot use {workdir} as the work directory: "
        + ("Not a directory." if inside else "File exists.")
    ]


@pytest.mark.parametrize("command", ["run", "compare"])
def test_ctrl_c_says_how_to_resume(command, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.train, "run", interrupted)
    monkeypatch.setattr(cli, "compare", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "digits", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mlesearch: interrupted. Finished runs and checkpoints are in {tmp_path}; run the same "
        "command again to resume from them."
    )


def test_config_command_lists_every_field_as_an_override(capsys):
    assert cli.main(["config", "text_completion", "--config.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "prefix_offsets: the token offsets" in out  # the config's documentation
    lines = [line for line in out.splitlines() if line.startswith("--config.")]
    assert "--config.steps=7" in lines
    assert "--config.mgs.weighting=tilted" in lines
    assert "--config.task_config.prefix_offsets='(0, 8, 16)'" in lines
    assert "--config.post_hoc=''" in lines
    # Every listed line is an override that the command line accepts, giving the same config.
    config = cli.load_config("text_completion")
    arguments = [shlex.split(line)[0] for line in lines]
    rebuilt = cli.apply_overrides(cli.load_config("text_completion"), arguments)
    config.steps = 7
    assert rebuilt.to_dict() == config.to_dict()


def test_a_bad_row_setting_fails_before_pretraining(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli.train, "pretrain", lambda *a, **k: pytest.fail("pretrained"))
    argv = ["compare", "digits_lt", "--workdir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--config.rows.mgs_uniform.mgs.weighting=softmax"])
    assert exit_info.value.code == 2
    assert "row mgs_uniform: config.mgs: weighting must be one of" in capsys.readouterr().err


def test_each_seed_pretrains_its_own_model_on_its_own_split():
    config = cli.load_config("digits_lt")
    config.pretrain.seed = config.task_config.split_seed = 7
    own = cli.seed_config(config, 3)
    assert (own.seed, own.pretrain.seed, own.task_config.split_seed) == (3, 3, 3)
    shared = cli.seed_config(config, 3, shared_pretraining=True)
    assert (shared.seed, shared.pretrain.seed, shared.task_config.split_seed) == (3, 7, 7)
    assert config.seed == 0  # a copy
    # A task without a split seed gets none.
    assert "split_seed" not in cli.seed_config(cli.load_config("text_completion"), 2).task_config


def test_a_row_grid_expands_into_every_combination():
    config = cli.load_config("digits_lt")
    lr = config.learning_rate
    grid = cli.row_grid(config, "pg")
    assert grid == {
        "learning_rate": (lr / 2, lr, 2 * lr, 4 * lr),
        "pg.mle_weight": (0.0, 0.25, 0.5),
    }
    points = cli.grid_points(grid)
    assert len(points) == 12 and points[1] == {"learning_rate": lr / 2, "pg.mle_weight": 0.25}
    assert cli.point_name("pg", points[1]) == "pg@learning_rate=0.0025,pg.mle_weight=0.25"
    assert cli.grid_points({}) == [{}] and cli.row_grid(config, "mgs_uniform") == {}

    tuned = cli.plan_rows(config, ["pg", "mgs_uniform"], tune=True)
    assert [p.row for p in tuned] == ["pg"] * 12 + ["mgs_uniform"]
    assert tuned[1].config.learning_rate == lr / 2 and tuned[1].config.pg.mle_weight == 0.25
    assert tuned[-1].name == "mgs_uniform" and tuned[-1].point == {}
    shipped = cli.plan_rows(config, ["pg"], tune=False)
    assert [(p.name, p.point) for p in shipped] == [("pg", {})]
    assert shipped[0].config.to_dict() == cli.row_config(config, "pg").to_dict()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.rows.pg.grid.learning_rate=()", "must be a non-empty tuple"),
        ("--config.rows.pg.grid.pg.mle_weight=0.5", "mle_weight is a tuple, got '0.5'"),
        ("--config.grpo.num_samples=1", "group size and must be at least 2"),
        ("--config.grpo.advantage=ppo", "config.grpo.advantage must be one of"),
    ],
)
def test_bad_grids_and_groups_fail_before_pretraining(override, message, capsys, monkeypatch):
    monkeypatch.setattr(cli.train, "pretrain", lambda *a, **k: pytest.fail("pretrained"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "digits_lt", "--workdir", "/nonexistent/never", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3 and message in err[-1]


def test_a_grid_field_the_config_lacks_is_reported():
    config = cli.load_config("digits_lt")
    config.rows.pg.grid.learning_rat = (1.0,)
    with pytest.raises(cli.ConfigError, match="config has no field learning_rat"):
        cli.row_grid(config, "pg")
    config = cli.load_config("digits_lt")
    config.rows.pg.grid.mgs = (1.0,)
    with pytest.raises(cli.ConfigError, match="is a group of fields"):
        cli.row_grid(config, "pg")


def _history_run(name, seed, valid, test, post_hoc=None):
    return {
        "method": name,
        "seed": seed,
        "base_method": "mle",
        "post_hoc": post_hoc,
        "selected_step": 10,
        "history": [
            {"step": 0, "valid": {"f1": 0.0}},
            {"step": 10, "valid": {"f1": valid}},
            {"step": 20, "valid": {"f1": valid - 0.5}},
        ],
        "test": {"f1": test},
        "test_last": {"f1": test},
    }


def test_tuning_chooses_the_best_validation_point_not_the_best_test_point():
    config = cli.load_config("digits_lt")
    config.rows.mle.grid.learning_rate = (0.1, 0.2)
    plan = cli.plan_rows(config, ["mle"], tune=True)
    low, high = (p.name for p in plan)
    # The first point is better on validation, the second on test.
    runs = [
        _history_run(low, 0, 0.8, 0.5),
        _history_run(low, 1, 0.7, 0.5),
        _history_run(high, 0, 0.6, 0.9),
        _history_run(high, 1, 0.6, 0.9),
    ]
    record = cli.choose_points(runs, plan, Metric("f1", False))
    assert record["mle"]["chosen"] == {"learning_rate": 0.1}
    assert [p["valid"] for p in record["mle"]["points"]] == pytest.approx([0.75, 0.6])
    assert [r["method"] for r in runs] == ["mle", "mle", high, high]


def test_validation_score_reads_the_selected_evaluation_or_the_post_hoc_score():
    run = _history_run("mle", 0, 0.8, 0.5)
    assert report.validation_score(run, "f1") == 0.8
    assert report.validation_score(run, "f1", key="test_last") == pytest.approx(0.3)
    adjusted = _history_run("mle", 0, 0.8, 0.5, post_hoc={"selected": {"valid_f1": 0.95}})
    assert report.validation_score(adjusted, "f1") == 0.95


def test_headline_compares_the_focus_row_with_the_best_row_of_each_group():
    def rows(name, base, valids, tests):
        return [
            {**_history_run(name, seed, v, t), "base_method": base}
            for seed, (v, t) in enumerate(zip(valids, tests, strict=True))
        ]

    runs = [
        *rows("mle_a", "mle", [0.60, 0.61, 0.62], [0.60, 0.62, 0.61]),
        *rows("mle_b", "mle", [0.50, 0.50, 0.50], [0.99, 0.99, 0.99]),  # best on test only
        *rows("pg", "pg", [0.70, 0.70, 0.71], [0.80, 0.81, 0.82]),
        *rows("mgs", "mgs", [0.70, 0.72, 0.74], [0.70, 0.72, 0.74]),
    ]
    groups = {"mle_a": "mle", "mle_b": "mle", "pg": "rl", "mgs": "mgs"}
    methods = list(groups)
    result = report.headline(runs, methods, groups, "mgs", Metric("f1", False, "F1"))
    by_group = {e["group"]: e for e in result["rows"]}
    assert set(by_group) == {"mle", "rl", "any"}
    assert by_group["mle"]["row"] == "mle_a" and by_group["mle"]["verdict"] == "better"
    assert by_group["rl"]["row"] == "pg" and by_group["rl"]["verdict"] == "worse"
    assert by_group["any"]["row"] == "pg"  # pg's validation mean 0.703 beats mgs's rivals
    assert by_group["mle"]["difference"]["mean"] == pytest.approx(0.11)
    assert "mle_a" in result["table"] and result["markdown"].startswith("| compared with |")
    assert report.verdict(None, True) == "no clear difference"
