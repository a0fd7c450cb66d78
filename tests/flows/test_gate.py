import math
from pathlib import Path

import pandas as pd
import pytest

from flows.gate import CustodyError, GateFailed, decide, require_blessed, to_markdown, write_blessing
from flows.params import Bound, ChangeBound, GateConfig, ParamsError, known_metrics, load_params

REPO = Path(__file__).resolve().parents[2]

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
    note = _check(b, "change", "click/auc")["note"]
    assert b["blessed"] and note == "skipped: the champion has no value for this metric"


HASHES = {"model_sha256": "a" * 64, "data_hash": "d" * 64, "params_sha256": "p" * 64}


def test_require_blessed_refuses_unblessed_and_missing(tmp_path):
    with pytest.raises(GateFailed, match="missing"):
        require_blessed(tmp_path / "blessing.json", HASHES)
    bad = decide({**GOOD, "click/auc": 0.5}, None, CFG, hashes=HASHES)
    write_blessing(bad, tmp_path / "blessing.json")
    with pytest.raises(GateFailed, match="NOT BLESSED"):
        require_blessed(tmp_path / "blessing.json", HASHES)
    write_blessing(decide(GOOD, None, CFG, hashes=HASHES), tmp_path / "blessing.json")
    assert require_blessed(tmp_path / "blessing.json", HASHES)["candidate"] == HASHES
    assert "| absolute | click/auc | >= 0.7 | 0.75 |" in to_markdown(decide(GOOD, None, CFG))


@pytest.mark.parametrize(("key", "what"), [("model_sha256", "model (model.pt)"),
                                           ("data_hash", "training set"), ("params_sha256", "params")])
def test_a_blessing_binds_model_data_and_params(tmp_path, key, what):
    """A blessing of one candidate does not bless another: each hash is compared, and the one line says
    which differs and how to judge what is there now."""
    write_blessing(decide(GOOD, None, CFG, hashes=HASHES), tmp_path / "blessing.json")
    with pytest.raises(CustodyError) as err:
        require_blessed(tmp_path / "blessing.json", {**HASHES, key: "b" * 64})
    msg = str(err.value)
    assert what in msg and f"{HASHES[key][:12]} but it is {'b' * 12} now" in msg and "`funnelflow gate`" in msg
    assert "\n" not in msg


def test_a_blessing_without_hashes_blesses_nothing(tmp_path):
    write_blessing(decide(GOOD, None, CFG), tmp_path / "blessing.json")  # e.g. written before custody existed
    with pytest.raises(CustodyError, match=r"\(none recorded\)"):
        require_blessed(tmp_path / "blessing.json", HASHES)


def _params_file(tmp_path, metric, kind="absolute"):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["gate"][kind][0]["metric"] = metric
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize(("kind", "metric", "expected"), [
    ("absolute", "click/aucc", "gate.absolute[0].metric: unknown metric 'click/aucc' (known for binary task click: "
                               "auc, logloss, oracle_auc, oracle_gap)"),
    ("change", "value/auc", "gate.change[0].metric: unknown metric 'value/auc' (known for regression task value: "
                            "gini, mae, oracle_gap, oracle_gini, rmse, rmse_given_conversion)"),
    ("absolute", "clik/auc", "gate.absolute[0].metric: 'clik/auc' names no task (tasks: click, conversion, value)"),
])
def test_a_bound_on_an_unknown_metric_fails_at_load(tmp_path, kind, metric, expected):
    """Once "skipped" at the gate (and the candidate blessed); now one line at load naming the key and the
    names models.metrics produces for that task."""
    with pytest.raises(ParamsError) as err:
        load_params(_params_file(tmp_path, metric, kind))
    assert expected in str(err.value) and len(str(err.value).splitlines()) == 1


def test_known_metrics_are_what_evaluation_produces(params, small_data):
    """The names come from models.metrics itself: every key of a real evaluation is known."""
    from models.metrics import evaluate_predictions

    df = small_data.impressions.head(500)
    preds = pd.DataFrame({"impression_id": df.impression_id, "p_click": 0.3, "p_conversion": 0.1,
                          "p_conversion_given_click": 0.3, "value_given_conversion": 5.0, "value_expected": 0.5})
    known = known_metrics(params.task_graph)
    for key in evaluate_predictions(df, preds, params.task_graph):
        task, _, name = key.partition("/")
        assert name in known[task], key
