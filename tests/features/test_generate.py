import numpy as np
import pandas as pd

from features.generate import generate


def _auc(y, s):
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_funnel_rules_hold(small_data):
    imp = small_data.impressions
    assert ((imp.conversion == 1) <= (imp.click == 1)).all()
    assert ((imp.value > 0) == (imp.conversion == 1)).all()
    assert (imp.value >= 0).all()


def test_rates_in_target_bands(small_data):
    imp = small_data.impressions
    assert 0.03 <= imp.click.mean() <= 0.08
    assert 0.05 <= imp.conversion[imp.click == 1].mean() <= 0.20


def test_oracle_auc_is_informative_but_not_perfect(small_data):
    imp, orc = small_data.impressions, small_data.oracle
    assert (orc.impression_id.to_numpy() == imp.impression_id.to_numpy()).all()
    auc = _auc(imp.click.to_numpy(), orc.p_click.to_numpy())
    assert 0.65 < auc < 0.97
    clicked = imp.click.to_numpy() == 1
    auc_cvr = _auc(imp.conversion.to_numpy()[clicked], orc.p_conversion_given_click.to_numpy()[clicked])
    assert 0.6 < auc_cvr < 0.97
    assert np.allclose(orc.p_conversion, orc.p_click * orc.p_conversion_given_click)


def test_oracle_is_never_inside_the_dataset(small_data):
    for df in (small_data.impressions, small_data.users, small_data.items):
        assert not any(c.startswith("p_") or c.endswith("_expected") for c in df.columns)


def test_contract_dtypes_and_microsecond_utc(small_data):
    imp = small_data.impressions
    assert str(imp.event_timestamp.dtype) == "datetime64[us, UTC]"
    assert imp.impression_id.is_unique
    assert imp[["click", "conversion"]].dtypes.eq(np.int8).all()
    assert imp.value.dtype == np.float64
    for df in (small_data.users, small_data.items):
        assert str(df.event_timestamp.dtype) == "datetime64[us, UTC]"


def test_deterministic_for_a_seed():
    a, b = generate(2_000, 5, seed=11), generate(2_000, 5, seed=11)
    pd.testing.assert_frame_equal(a.impressions, b.impressions)
    assert not generate(2_000, 5, seed=12).impressions.equals(a.impressions)


def test_activity_is_skewed_and_profiles_change_over_time(small_data):
    counts = small_data.impressions.user_id.value_counts()
    assert counts.iloc[: len(counts) // 100 + 1].sum() > 3 * len(small_data.impressions) / 100  # top 1% of users
    start = small_data.impressions.event_timestamp.min()
    for df, key in ((small_data.users, "user_id"), (small_data.items, "item_id")):
        assert (df.groupby(key).size() > 1).any()
        assert (df.event_timestamp > start).any()  # snapshots inside the impression period


def test_heavy_tailed_value(small_data):
    v = small_data.impressions.value[small_data.impressions.conversion == 1]
    assert v.max() > 5 * v.median()


def test_a_day_is_the_same_whatever_days_have_landed(tmp_path, params):
    """Simulated arrival: day d's files are byte-identical whether 2 or 4 days have landed."""
    from flows import steps
    from flows.params import Paths

    g = params.generate.model_copy(update={"rows": 4_000, "days": 5, "seed": 4})
    written = {}
    for land in (2, 4):
        paths = Paths(tmp_path / f"land{land}")
        out = steps.generate(params.model_copy(update={"generate": g.model_copy(update={"land_days": land})}), paths)
        assert out["partitions"] == land
        written[land] = {p.relative_to(paths.generated): p.read_bytes()
                         for p in sorted(paths.generated.glob("dt=*/*.parquet"))}
        oracle = pd.read_parquet(paths.oracle)
        landed = pd.concat([pd.read_parquet(p) for p in sorted(paths.generated.glob("dt=*/impressions.parquet"))])
        assert set(oracle.impression_id) == set(landed.impression_id)  # the oracle of the landed days only
    assert sorted({p.parts[0] for p in written[2]}) == ["dt=2026-09-01", "dt=2026-09-02"]
    assert {p: b for p, b in written[4].items() if p.parts[0] in ("dt=2026-09-01", "dt=2026-09-02")} == written[2]


def test_concept_drift_changes_behaviour_after_day_k_only():
    """Same impressions and features; from day K the oracle's click and conversion probabilities are
    re-drawn on the item side, so a model frozen before K (here: the no-drift oracle itself) loses AUC."""
    base, drift = generate(20_000, 10, seed=3), generate(20_000, 10, seed=3, drift_from_day=5)
    ts = base.impressions.event_timestamp
    after = (ts >= ts.min().floor("D") + pd.Timedelta(days=5)).to_numpy()
    pd.testing.assert_frame_equal(base.impressions[~after], drift.impressions[~after])
    pd.testing.assert_frame_equal(base.oracle[~after], drift.oracle[~after])
    cols = ["impression_id", "event_timestamp", "user_id", "item_id", "position", "device", "hour"]
    pd.testing.assert_frame_equal(base.impressions[cols], drift.impressions[cols])  # same features throughout
    for p in ("p_click", "p_conversion_given_click"):
        assert np.corrcoef(base.oracle[p][after], drift.oracle[p][after])[0, 1] < 0.6
    y = drift.impressions.click.to_numpy()[after]
    frozen, current = _auc(y, base.oracle.p_click.to_numpy()[after]), _auc(y, drift.oracle.p_click.to_numpy()[after])
    assert current - frozen > 0.1
    assert 0.03 <= y.mean() <= 0.08  # rates stay calibrated
