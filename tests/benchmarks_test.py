"""The benchmarks run (tiny sizes, no timing assertions)."""

import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["speed.py", "memory.py", "devices.py", "chunked.py"])
def test_benchmark_smoke_run(run_python, script):
    stdout = run_python([str(BENCHMARKS / script), "--smoke"])
    assert len(stdout.strip().splitlines()) >= 3, stdout


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


def test_digits_lt_alignment_smoke_run(run_python, tmp_path):
    stdout = run_python(
        [str(BENCHMARKS / "digits_lt_alignment.py"), "--workdir", str(tmp_path)]
        + ["--config.pretrain.steps=5", "--config.task_config.batch_size=32"]
    )
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("tau") and len(lines) == 5
