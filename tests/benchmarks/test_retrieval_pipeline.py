"""benchmarks/retrieval.py and benchmarks/pipeline.py on a tiny generated dataset: real Feast stores,
real `funnelflow` steps in child processes. No timing assertions: rows, kills and the table."""
import json

import pytest

from benchmarks import pipeline, retrieval


@pytest.mark.e2e
def test_retrieval_counts_rows_and_kills(tmp_path, capsys):
    retrieval.main(["--rows", "3000", "--stores", "asof", "duckdb", "--work-dir", str(tmp_path)])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 3,000 |"))
    assert "killed" not in row and "dropped" not in row  # both return every impression
    assert (tmp_path / "data-3000" / "training_set" / "manifest.json").exists()
    # a run over the memory limit is reported as killed, not as a figure
    cells = retrieval.measure(3000, tmp_path / "data-3000", ["asof"], max_gb=0.01, max_seconds=60)
    assert cells["asof"].startswith("killed at") and cells["training-set step"].startswith("killed at")


def test_replot_reads_saved_results(tmp_path, capsys):
    steps = {s: [float(i + 1), 0.5] for i, s in enumerate(pipeline.FLOW_STEPS)}
    bigger = {k: [v[0] * 5, 1.0] for k, v in steps.items()}
    saved = {"rows": [1000, 10000], "flow": True, "results": {"1000": steps, "10000": bigger},
             "wall": {"1000": 100.0, "10000": 400.0}}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    pipeline.main(["--replot", "--work-dir", str(tmp_path), "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "| train | 8.0 | 40.0 |" in out and "x10.0 rows, x4.00 time" in out
    assert (tmp_path / "p.png").stat().st_size > 10_000
