import math

import pytest

from flows.gate import GateFailed, decide, require_blessed, to_markdown, write_blessing
from flows.params import Bound, ChangeBound, GateConfig

CFG = GateConfig(
    absolute=[Bound(metric="click/auc", op=">=", value=0.70), Bound(metric="value/rmse", op="<=", value=10.0)],
    change=[ChangeBound(metric="click/auc", max_drop=0.002), ChangeBound(metric="value/rmse", max_increase_rel=0.05)],
)
GOOD = {"click/auc": 0.75, "value/rmse": 8.0}


def _check(blessing, kind, metric):
    return next(c for c in blessing["checks"] if c["kind"] == kind and c["metric"] == metric)


def test_first_model_checks_absolute_bounds_only():
    b = decide(GOOD, None, CFG)
    assert b["blessed"] and len(b["checks"]) == 2
    assert not decide({**GOOD, "click/auc": 0.69}, None, CFG)["blessed"]
    assert not decide({**GOOD, "value/rmse": 10.5}, None, CFG)["blessed"]


def test_change_bounds_against_champion():
    champ = {"click/auc": 0.752, "value/rmse": 8.0}
    ok = decide({"click/auc": 0.7501, "value/rmse": 8.39}, champ, CFG, "v0003")
    assert ok["blessed"] and ok["champion_version"] == "v0003"
    drop = decide({"click/auc": 0.7495, "value/rmse": 8.0}, champ, CFG)
    c = _check(drop, "change", "click/auc")
    assert not drop["blessed"] and not c["passed"]
    assert c["baseline"] == 0.752 and math.isclose(c["bound"], 0.75)
    rel = decide({"click/auc": 0.76, "value/rmse": 8.41}, champ, CFG)
    assert not _check(rel, "change", "value/rmse")["passed"] and not rel["blessed"]


def test_missing_or_nan_metric_fails_its_check():
    b = decide({"click/auc": float("nan"), "value/rmse": 8.0}, None, CFG)
    c = _check(b, "absolute", "click/auc")
    assert not b["blessed"] and not c["passed"] and "NaN" in c["note"]
    assert not decide({"value/rmse": 8.0}, None, CFG)["blessed"]


def test_champion_without_the_metric_skips_that_change_check():
    b = decide(GOOD, {"value/rmse": 8.0}, CFG)
    assert b["blessed"] and "skipped" in _check(b, "change", "click/auc")["note"]


def test_require_blessed_refuses_unblessed_and_missing(tmp_path):
    with pytest.raises(GateFailed, match="missing"):
        require_blessed(tmp_path / "blessing.json")
    bad = decide({**GOOD, "click/auc": 0.5}, None, CFG)
    write_blessing(bad, tmp_path / "blessing.json")
    with pytest.raises(GateFailed, match="NOT BLESSED"):
        require_blessed(tmp_path / "blessing.json")
    write_blessing(decide(GOOD, None, CFG), tmp_path / "blessing.json")
    assert require_blessed(tmp_path / "blessing.json")["blessed"]
    assert "| absolute | click/auc | >= 0.7 | 0.75 |" in to_markdown(decide(GOOD, None, CFG))
