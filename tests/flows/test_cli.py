"""The CLI: bad input exits non-zero with the file, column and rule; nothing is written."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import FunnelDataset, write_dataset

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, data_dir):
    return subprocess.run([sys.executable, "-m", "flows.cli", "--data-dir", str(data_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ingest_bad_input_exits_with_a_clear_message(tmp_path, small_data):
    imps = small_data.impressions.head(500).copy()
    row = imps.index[imps.click == 0][0]
    imps.loc[row, "conversion"] = 1
    write_dataset(FunnelDataset(imps, small_data.users, small_data.items), tmp_path / "src")
    res = _cli("ingest", str(tmp_path / "src"), data_dir=tmp_path / "data")
    assert res.returncode == 1
    assert "impressions.parquet" in res.stderr and "conversion" in res.stderr and "funnel rule" in res.stderr
    assert str(imps.loc[row, "impression_id"]) in res.stderr
    assert not (tmp_path / "data" / "raw").exists()


def test_generate_then_ingest(tmp_path):
    res = _cli("generate", "--rows", "3000", "--days", "5", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "oracle" / "oracle.parquet").exists()
    assert not any("oracle" in p.name for p in (tmp_path / "generated").iterdir())
    res = _cli("ingest", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "raw" / "impressions.parquet")) == 3000
