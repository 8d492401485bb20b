"""The benchmarks run (tiny sizes, no timing assertions)."""

import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["speed.py", "memory.py", "devices.py", "chunked.py"])
def test_benchmark_smoke_run(script):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) >= 3, result.stdout


def test_mgs_diagnostics_smoke_run(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "mgs_diagnostics.py"),
            "digits",
            "--steps",
            "3",
            "--config.pretrain.steps=5",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps where all candidate losses tie" in result.stdout
    assert "guided" in result.stdout


def test_ablation_smoke_run(tmp_path):
    short = ["--config.pretrain.steps=5", "--config.steps=2", "--config.eval_every=2"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ablation.py"), "digits", "--seeds", "1"]
        + ["--workdir", str(tmp_path), "--setting", "n=2", "mgs.num_candidates=2", *short],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| MLE (reference)", "| n=2"]


def test_digits_lt_alignment_smoke_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "digits_lt_alignment.py"), "--workdir", str(tmp_path)]
        + ["--config.pretrain.steps=5", "--config.task_config.batch_size=32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("tau") and len(lines) == 5
