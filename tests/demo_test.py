"""The ``python -m mlesearch`` demonstration runs and MGS beats MLE-only on the 0/1 error."""

from mlesearch.experiments import demo


def test_demo_mgs_beats_mle_only_on_test_error(capsys):
    results = demo.main(["--steps", "150", "--seed", "1"])
    out = capsys.readouterr().out
    assert "MLE only" in out and "MGS" in out
    assert results["mgs"] < results["mle"] - 0.02, results
