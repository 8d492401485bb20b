"""The benchmarks run (tiny sizes, no timing assertions)."""

import json
import math
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_benchmark(run_python):
    """``run_benchmark(script, *args)``: runs a benchmark with ``--smoke``; its output lines."""

    def run(script, *args):
        stdout = run_python([str(BENCHMARKS / script), "--smoke", *args])
        lines = stdout.strip().splitlines()
        assert len(lines) >= 3, stdout
        return lines

    return run


@pytest.mark.parametrize("script", ["devices.py", "chunked.py", "draws.py"])
def test_benchmark_smoke_run(run_benchmark, script):
    run_benchmark(script)


def test_timing_interleaves_and_pairs():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _timing
    finally:
        sys.path.remove(str(BENCHMARKS))
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = _timing.interleaved(fns, repeats=6, seed=0)
    assert {name: len(t) for name, t in times.items()} == {"a": 6, "b": 6, "c": 6}
    rounds = [calls[i : i + 3] for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # each runs once per repetition
    assert len({tuple(r) for r in rounds}) > 1  # in more than one order
    ratio = _timing.paired_ratio({"x": [2.0, 4.0, 9.0], "y": [1.0, 1.0, 3.0]}, "x", "y")
    assert ratio["median"] == 3.0 and ratio["values"] == [2.0, 4.0, 3.0]
    assert ratio["q1"] <= ratio["median"] <= ratio["q3"]


def test_speed_smoke_run_writes_paired_ratios(run_benchmark, tmp_path):
    out, png = tmp_path / "speed.json", tmp_path / "speed.png"
    run_benchmark("speed.py", "--lm", "tiny", "--out", str(out), "--plot", str(png))
    results = json.loads(out.read_text())
    assert png.stat().st_size > 0
    assert [c["workload"] for c in results["cells"]] == ["mlp d=1e+03", "lm tiny"]
    steps = {
        "mgs",
        "mgs_all_at_once",
        "mgs_antithetic",
        "limit",
        "sequential",
        "open_es",
        "guided_es",
        "with_mgs",
        "limit_adam",
    }
    # Step (a)'s irreducible parts, each timed alone.
    parts = {"part_draw", "part_losses", "part_sum", "part_grad", "part_update"}
    for cell in results["cells"]:
        assert set(cell["seconds"]) == steps | parts
        assert all(cell["seconds"][name] > 0 for name in parts)
        assert {name: len(t) for name, t in cell["samples"].items()} == dict.fromkeys(
            steps | parts, results["repeats"]
        )
        assert set(cell["ratios"]) == {
            "a/b",
            "a/c",
            "a/d_open_es",
            "a/d_guided_es",
            "a_anti/b",
            "a_anti/d_guided_es",
            "with_mgs/b",
            "a/a_all",
            "a/parts",
        }
        for ratio in cell["ratios"].values():
            assert 0 < ratio["q1"] <= ratio["median"] <= ratio["q3"]
        # (a) against the sum of its parts, per repetition.
        assert all(math.isfinite(v) and v > 0 for v in cell["ratios"]["a/parts"].values())
        assert set(cell["load"]) == {"start", "end"}
        # XLA's temporary bytes of every step that is one program (all but the Python loop).
        assert set(cell["temp_bytes"]) == steps - {"sequential"}
        assert all(b > 0 for b in cell["temp_bytes"].values())


@pytest.mark.parametrize("large_step", [False, True])
def test_memory_smoke_run(run_benchmark, tmp_path, large_step):
    out = tmp_path / "memory.json"
    run_benchmark("memory.py", "--out", str(out), *(["--large-step"] if large_step else []))
    rows = json.loads(out.read_text())["rows"]
    for row in rows:
        assert row["finished"] and row["temp_bytes"] > 0
        assert {"load_start", "load_end", "compile_seconds", "step_seconds"} <= set(row)
        assert (row["step_seconds"] is not None) == row["run"] == (row["peak_rss_bytes"] > 0)
    if large_step:
        assert [(r["n"], r["chunk_size"], r["run"]) for r in rows] == [
            (16, 8, True),
            (64, 8, False),
            (16, 16, False),
        ]


def test_mgs_diagnostics_smoke_run(run_python, tmp_path):
    stdout = run_python(
        [str(BENCHMARKS / "mgs_diagnostics.py"), "digits", "--steps", "3"]
        + ["--config.pretrain.steps=5", "--workdir", str(tmp_path)]
    )
    assert "steps where all candidate losses tie" in stdout
    assert "guided" in stdout


def test_ablation_smoke_run(run_python, tmp_path):
    short = ["--config.pretrain.steps=5", "--config.steps=2", "--config.eval_every=2"]
    run_python(
        [str(BENCHMARKS / "ablation.py"), "digits", "--seeds", "1"]
        + ["--workdir", str(tmp_path), "--setting", "n=2", "mgs.num_candidates=2", *short]
    )
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| MLE (reference)", "| n=2"]
    # Settings are scored on the validation split, on seeds that compare does not report.
    assert "error (valid)" in table[0] and "(test)" not in table[0]
    assert json.loads((tmp_path / "ablation.json").read_text())["seeds"] == [100]


def test_digits_lt_alignment_smoke_run(run_python, tmp_path):
    stdout = run_python(
        [str(BENCHMARKS / "digits_lt_alignment.py"), "--workdir", str(tmp_path)]
        + ["--config.pretrain.steps=5", "--config.task_config.batch_size=32"]
    )
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("tau") and len(lines) == 5
